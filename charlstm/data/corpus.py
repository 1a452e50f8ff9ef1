"""Reading text and turning it into compact arrays of character ids.

Everything here is vectorised and works in chunks: no Python code runs per
character, and no temporary is much larger than a chunk, so a 100 MB corpus is
counted and encoded in about a second with little memory beyond its ids. Text
whose characters all fit in one byte (ASCII, Latin-1) takes a faster path still:
``bytes.translate`` with a 256-entry table.
"""

from __future__ import annotations

import codecs
import hashlib
import sysconfig
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np

from ..base.errors import CorpusError, UnknownCharactersError
from ..base.reading import FileRefused, memory_available, read_bytes

UnknownPolicy = Literal["error", "skip", "replace"]

# Python's own source is on every machine that runs charlstm, so it makes a
# default corpus that needs no download and is big enough to learn from.
DEFAULT_CORPUS_DESCRIPTION = "the Python standard library's top-level modules (Lib/*.py)"

# Real text rarely has more than a few thousand distinct characters (a corpus of
# Tang poems has about 5,400). The output layer and its logits grow with the
# vocabulary, so a file decoded with the wrong encoding can ask for gigabytes.
VOCAB_WARN_SIZE = 10_000
VOCAB_MAX_SIZE = 30_000
# Control characters other than layout ones are a sign of binary data read as text.
MAX_CONTROL_CHARS = 8
_LAYOUT_CONTROLS = frozenset("\t\n\r\x0b\x0c")


# Rare characters folded by --min-char-count become this one symbol: the Unicode
# replacement character, which already means "some character that was lost".
UNKNOWN_CHAR = "\ufffd"

# Characters per chunk: large enough that numpy runs at full speed, small enough
# that the int32 temporaries of a chunk stay in the CPU cache.
_CHUNK = 1 << 20

_BYTE_TEXT_ENCODINGS = ("utf8", "utf8sig", "ascii", "usascii", "latin1", "iso88591", "l1", "cp1252", "windows1252")
_UTF8 = ("utf8", "utf8sig")
# Every code point below U+0300 (where combining marks begin) is unchanged by NFC,
# and in UTF-8 all of them are written with lead bytes below 0xCC.
_FIRST_UTF8_BYTE_NFC_CAN_CHANGE = 0xCC


def _codepoints(text: str) -> np.ndarray:
    # surrogatepass keeps lone surrogates (possible in command-line strings) encodable.
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def _codec_key(encoding: str) -> str:
    return encoding.lower().replace("-", "").replace("_", "")


@dataclass(frozen=True)
class TextOptions:
    """How bytes on disk become the text a model learns.

    ``nfc`` composes characters (e + combining acute becomes é) so one letter is
    one id however the file spelled it; ``lowercase`` folds case, which shrinks
    the vocabulary at the cost of never generating capitals.
    """

    encoding: str = "utf-8"
    errors: Literal["strict", "replace", "ignore"] = "strict"
    keep_crlf: bool = False
    lowercase: bool = False
    nfc: bool = True

    def __post_init__(self) -> None:
        """Refuse a codec that is unknown or not bytes-to-text (rot13, base64) before any file is read."""
        try:
            found = codecs.lookup(self.encoding)
        except LookupError:
            raise CorpusError(f"unknown text encoding {self.encoding!r}; try --encoding utf-8") from None
        if not getattr(found, "_is_text_encoding", True):
            raise CorpusError(f"{self.encoding!r} is not a text encoding; try --encoding utf-8 or latin-1")


def _crlf_to_lf(data: bytes) -> bytes:
    """CRLF becomes LF in bytes of an ASCII-compatible encoding; a lone CR stays."""
    carriage_returns = data.count(b"\r")
    if carriage_returns == 0:
        return data
    if carriage_returns == data.count(b"\r\n"):  # every CR starts a CRLF: delete them all, at memcpy speed
        return data.translate(None, b"\r")
    raw = np.frombuffer(data, dtype=np.uint8)
    drop = np.zeros(len(raw), dtype=bool)
    drop[:-1] = (raw[:-1] == 13) & (raw[1:] == 10)
    return raw[~drop].tobytes()


def prepare_text(data: bytes, source: str, options: TextOptions = TextOptions()) -> str | bytes:
    """The text to train on, from a file's bytes: checked, decoded and normalised.

    ASCII text is returned as ``bytes`` and never becomes a ``str``: the vocabulary
    and the encoder read bytes directly, which is the fast path for large corpora.
    """
    codec = _codec_key(options.encoding)
    nul = data.find(b"\x00")
    if nul >= 0 and codec in _BYTE_TEXT_ENCODINGS:
        raise CorpusError(f"{source} looks like a binary file (NUL byte at offset {nul}); give a text file")
    byte_text = codec in _BYTE_TEXT_ENCODINGS
    if byte_text:
        if codec in _UTF8 and data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        if not options.keep_crlf:
            data = _crlf_to_lf(data)
        if data.isascii():
            return data.lower() if options.lowercase else data
    try:
        text = data.decode(options.encoding, options.errors)
    except UnicodeDecodeError as error:
        raise CorpusError(
            f"{source} is not valid {options.encoding} (byte 0x{data[error.start]:02x} at offset {error.start}); "
            "pass --encoding with the file's real encoding, or --errors replace"
        ) from None
    except LookupError:
        raise CorpusError(f"unknown text encoding {options.encoding!r}; try --encoding utf-8") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not options.keep_crlf and not byte_text:
        text = text.replace("\r\n", "\n")
    already_nfc = codec in _UTF8 and (not data or np.frombuffer(data, np.uint8).max() < _FIRST_UTF8_BYTE_NFC_CAN_CHANGE)
    if options.nfc and not already_nfc:
        text = unicodedata.normalize("NFC", text)
    if options.lowercase:
        text = text.lower()
    return text


def as_str(text: str | bytes) -> str:
    """Text from :func:`prepare_text` as a ``str`` (its bytes are always ASCII)."""
    return text.decode("ascii") if isinstance(text, bytes) else text


def decode_bytes(data: bytes, source: str, options: TextOptions = TextOptions()) -> str:
    """Decode a corpus, refusing binary data and naming the first bad byte."""
    return as_str(prepare_text(data, source, options))


def read_text(path: str | Path, options: TextOptions = TextOptions()) -> str:
    """Read one text file; every way it can be unusable ends in a CorpusError."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"{path} does not exist; give the path of a text file")  # a corpus, a text to score, labels…
    if path.is_dir():
        raise CorpusError(f"{path} is a directory; give a text file")
    try:
        data = read_bytes(path, memory_available() // 8)
    except FileRefused as refused:
        raise CorpusError(f"{refused}; give a text file of a size this machine can hold") from None
    if not data:
        raise CorpusError(f"{path} is empty; give a file with some text in it")
    text = decode_bytes(data, str(path), options)
    if not text.strip():
        raise CorpusError(f"{path} holds only whitespace; give a file with some text in it")
    return text


def default_corpus_files() -> list[Path]:
    """The files of the built-in default corpus, in a fixed order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))
    if not files:
        raise CorpusError(f"no Python sources found under {stdlib}; give a corpus file to train on")
    return files


def read_default_corpus() -> str:
    return "\n".join(read_text(path, TextOptions(errors="replace")) for path in default_corpus_files())


def _chunks(text: str | bytes) -> Iterator[tuple[np.ndarray, bytes | None]]:
    """Code points of consecutive pieces of ``text``, with the piece's bytes where every point fits in one.

    A piece whose characters are all below 256 (ASCII or Latin-1) comes as uint8
    plus those bytes, which :meth:`Vocab.encode` can translate in one C call; any
    other piece comes as uint32 from UTF-32.
    """
    for start in range(0, len(text), _CHUNK):
        piece = text[start : start + _CHUNK]
        if isinstance(piece, bytes):
            yield np.frombuffer(piece, dtype=np.uint8), piece
            continue
        try:
            narrow = piece.encode("latin-1")
        except UnicodeEncodeError:
            yield np.frombuffer(piece.encode("utf-32-le", "surrogatepass"), dtype="<u4"), None
        else:
            yield np.frombuffer(narrow, dtype=np.uint8), narrow


def char_counts(text: str | bytes) -> np.ndarray:
    """How often each code point occurs: ``counts[c]`` for code point ``c`` (bytes count as ASCII)."""
    counts = np.zeros(256, dtype=np.int64)
    for points, _ in _chunks(text):
        found = np.bincount(points, minlength=256) if points.dtype == np.uint8 else np.bincount(points)
        if len(found) > len(counts):
            found[: len(counts)] += counts
            counts = found
        else:
            counts[: len(found)] += found
    return counts


def _chars_of(points: np.ndarray) -> list[str]:
    return list(points.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass"))


class Vocab:
    """The characters a model knows, and the id of each.

    Ids are positions in the list, so the vocabulary is fully described by its
    characters and survives a round trip through JSON. A corpus's own vocabulary
    is sorted; a fine-tuned model's is its parent's followed by the characters it
    added (:meth:`grown`), so that old ids keep their meaning. When it holds
    :data:`UNKNOWN_CHAR`, that character stands for every character it lacks.
    """

    def __init__(self, chars: Sequence[str]):
        if not chars:
            raise CorpusError("a vocabulary needs at least one character")
        if any(len(c) != 1 for c in chars):
            raise CorpusError("every vocabulary entry must be a single character")
        codepoints = _codepoints("".join(chars))
        if len(np.unique(codepoints)) != len(codepoints):
            raise CorpusError("vocabulary characters must be distinct")
        self.chars: list[str] = list(chars)
        self._codepoints = codepoints
        # id of every code point up to the largest known one, -1 for the rest; the
        # extra last entry answers for all code points beyond the table.
        self._ids = np.full(max(256, int(codepoints.max()) + 1) + 1, -1, dtype=np.int32)
        self._ids[codepoints] = np.arange(len(codepoints), dtype=np.int32)
        narrow = codepoints[codepoints < 256]
        self._narrow_known = narrow.astype(np.uint8).tobytes()
        self._narrow_table = np.maximum(self._ids[:256], 0).astype(np.uint8).tobytes() if len(self) <= 256 else None

    @classmethod
    def from_text(cls, text: str | bytes) -> "Vocab":
        if not text:
            raise CorpusError("cannot build a vocabulary from empty text")
        return cls.from_counts(char_counts(text))

    @classmethod
    def from_counts(cls, counts: np.ndarray, min_count: int = 1) -> "Vocab":
        """The characters seen at least ``min_count`` times, plus :data:`UNKNOWN_CHAR` if any were rarer."""
        present = counts > 0
        kept = present & (counts >= min_count)
        if present.any() and not kept.any():
            raise CorpusError(
                f"--min-char-count {min_count} is more than any character's count (the most common appears "
                f"{int(counts.max())} times), which leaves only the unknown symbol; give a smaller --min-char-count"
            )
        chars = _chars_of(np.flatnonzero(kept))
        if (present & ~kept).any() and UNKNOWN_CHAR not in chars:
            chars = sorted([*chars, UNKNOWN_CHAR])
        return cls(chars)

    def grown(self, other: "Vocab") -> "Vocab":
        """This vocabulary followed by the characters of ``other`` it lacks, in ``other``'s order."""
        known = set(self.chars)
        return Vocab([*self.chars, *(char for char in other.chars if char not in known)])

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, char: str) -> bool:
        return char in self.chars

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"Vocab({len(self)} characters)"

    @property
    def dtype(self) -> np.dtype:
        """The narrowest unsigned integer type that holds every id."""
        if len(self) <= 256:
            return np.dtype(np.uint8)
        if len(self) <= 65536:
            return np.dtype(np.uint16)
        return np.dtype(np.uint32)

    @property
    def unknown_id(self) -> int | None:
        """The id of :data:`UNKNOWN_CHAR` when the vocabulary uses it for rare characters."""
        return self.chars.index(UNKNOWN_CHAR) if UNKNOWN_CHAR in self.chars else None

    def _lookup(self, points: np.ndarray) -> np.ndarray:
        """Ids of ``points`` as int32, -1 where a code point is not in the vocabulary."""
        if points.dtype == np.uint8:
            return self._ids[:256][points]
        return self._ids[np.minimum(points, len(self._ids) - 1)]

    def unknown_chars(self, text: str | bytes) -> list[str]:
        """Characters of ``text`` outside the vocabulary, each once, in sorted order."""
        return list(self.unknown_counts(text))

    def unknown_counts(self, text: str | bytes) -> dict[str, int]:
        """How often each character outside the vocabulary occurs in ``text``, for reports."""
        missing = [points[self._lookup(points) < 0] for points, _ in _chunks(text)]
        if not missing:
            return {}
        points, counts = np.unique(np.concatenate(missing).astype(np.uint32), return_counts=True)
        return dict(zip(_chars_of(points), counts.tolist()))

    def encode(self, text: str | bytes, unknown: UnknownPolicy = "error", replacement: str | None = None) -> np.ndarray:
        """Map text (``bytes`` are read as ASCII) to ids; unknown characters raise, are dropped, or become ``replacement``.

        ``replacement`` defaults to :data:`UNKNOWN_CHAR` when the vocabulary has it,
        else a space (or the first character), a choice that disturbs the model least.
        """
        out = np.empty(len(text), dtype=self.dtype)
        filled = 0
        for points, narrow in _chunks(text):
            if narrow is not None and self._narrow_table is not None and not narrow.translate(None, self._narrow_known):
                ids: np.ndarray = np.frombuffer(narrow.translate(self._narrow_table), dtype=np.uint8)
            else:
                ids = self._lookup(points)
                known = ids >= 0
                if not known.all():
                    if unknown == "error":
                        raise UnknownCharactersError(self.unknown_chars(text))
                    if unknown == "skip":
                        ids = ids[known]
                    else:
                        ids[~known] = self.index(replacement if replacement is not None else self.default_replacement)
            out[filled : filled + len(ids)] = ids
            filled += len(ids)
        return out if filled == len(out) else out[:filled].copy()

    @property
    def default_replacement(self) -> str:
        if UNKNOWN_CHAR in self:
            return UNKNOWN_CHAR
        return " " if " " in self else self.chars[0]

    def index(self, char: str) -> int:
        if char not in self:
            raise UnknownCharactersError([char])
        return self.chars.index(char)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        points = self._codepoints[np.asarray(ids, dtype=np.int64)]
        return points.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data).hexdigest()


@dataclass(frozen=True)
class CorpusFile:
    """One file a corpus was read from, as it was on disk."""

    path: str
    sha256: str
    bytes: int


def check_vocabulary(vocab: Vocab, source: str, force: bool = False) -> list[str]:
    """Refuse a vocabulary that betrays binary data or a wrong encoding; warnings for a merely large one.

    ``force`` turns each refusal into a warning, for the rare corpus that really is like that.
    """
    controls = [c for c in vocab.chars if unicodedata.category(c) == "Cc" and c not in _LAYOUT_CONTROLS]
    problems = []
    if len(vocab) > VOCAB_MAX_SIZE:
        problems.append(
            f"{source} has {len(vocab):,} distinct characters (the limit is {VOCAB_MAX_SIZE:,}); "
            "the model's output layer would be huge"
        )
    if len(controls) > MAX_CONTROL_CHARS:
        problems.append(f"{source} has {len(controls)} distinct control characters; it looks like binary data")
    if problems and not force:
        raise CorpusError(
            "; ".join(problems) + "; check that it is text and that --encoding is right, or pass --force to train on it anyway"
        )
    warnings = problems
    if not problems and len(vocab) > VOCAB_WARN_SIZE:
        warnings.append(f"{source} has {len(vocab):,} distinct characters; the model will be large and slow")
    return warnings


def validation_cut(length: int, val_frac: float) -> int:
    """Where validation begins in a text of ``length`` characters: the tail is held out, in one
    piece, so that training and any later scoring of a run's split agree to the character."""
    return length - int(round(length * val_frac))


@dataclass
class Corpus:
    """A text as ids, with the vocabulary that maps between the two.

    ``ids`` may be a read-only memory map of the encoded-corpus cache; nothing
    downstream copies it whole (splits and batch streams are views).
    """

    source: str
    vocab: Vocab
    ids: np.ndarray
    sha256: str
    files: list[CorpusFile] = field(default_factory=list)
    # How sources.load_corpus read it (files, text options, separator, rare-character folding),
    # recorded in checkpoints so that a resumed run reads its corpus again the same way.
    loading: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_text(
        cls,
        text: str | bytes,
        source: str = "<text>",
        vocab: Vocab | None = None,
        min_char_count: int = 1,
        sha256: str | None = None,
        files: Sequence[CorpusFile] = (),
    ) -> "Corpus":
        """Encode ``text`` with ``vocab``, or with its own vocabulary (rarer characters than ``min_char_count`` folded)."""
        folds_rare_chars = vocab is None
        if vocab is None:
            if not text:
                raise CorpusError("cannot build a vocabulary from empty text")
            vocab = Vocab.from_counts(char_counts(text), min_char_count)
        ids = vocab.encode(text, unknown="replace" if folds_rare_chars else "error")
        return cls(source=source, vocab=vocab, ids=ids, sha256=sha256 or sha256_hex(text), files=list(files))

    def __len__(self) -> int:
        return len(self.ids)

    def describe(self) -> dict[str, Any]:
        """What a checkpoint records about the text it was trained on."""
        return {
            "source": self.source,
            "chars": len(self),
            "sha256": self.sha256,
            "files": [asdict(f) for f in self.files],
            **({"loading": self.loading} if self.loading else {}),
        }

    def split(self, val_frac: float) -> tuple[np.ndarray, np.ndarray]:
        """Training ids first, validation ids last: one contiguous cut, as nanoGPT does."""
        if not 0.0 <= val_frac < 1.0:
            raise CorpusError(f"--val-frac must be in [0, 1), not {val_frac}")
        cut = validation_cut(len(self.ids), val_frac)
        return self.ids[:cut], self.ids[cut:]
