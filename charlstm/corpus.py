"""Reading text and turning it into compact arrays of character ids.

Everything here is vectorised with numpy: a corpus of many megabytes is encoded in
a fraction of a second because no Python code runs per character.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from .errors import CorpusError, UnknownCharactersError

UnknownPolicy = Literal["error", "skip", "replace"]

# Python's own source is on every machine that runs charlstm, so it makes a
# default corpus that needs no download and is big enough to learn from.
DEFAULT_CORPUS_DESCRIPTION = "the Python standard library's top-level modules (Lib/*.py)"


def _codepoints(text: str) -> np.ndarray:
    # surrogatepass keeps lone surrogates (possible in command-line strings) encodable.
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


@dataclass(frozen=True)
class TextOptions:
    """How bytes on disk become text."""

    encoding: str = "utf-8"
    errors: Literal["strict", "replace", "ignore"] = "strict"
    keep_crlf: bool = False


def decode_bytes(data: bytes, source: str, options: TextOptions = TextOptions()) -> str:
    """Decode a corpus, refusing binary data and naming the first bad byte."""
    nul = data.find(b"\x00")
    if nul >= 0 and options.encoding.lower().replace("-", "") in ("utf8", "utf8sig", "latin1", "ascii"):
        raise CorpusError(f"{source} looks like a binary file (NUL byte at offset {nul}); give a text file")
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
    if not options.keep_crlf:
        text = text.replace("\r\n", "\n")
    return text


def read_text(path: str | Path, options: TextOptions = TextOptions()) -> str:
    """Read one text file; every way it can be unusable ends in a CorpusError."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"corpus file not found: {path}")
    if path.is_dir():
        raise CorpusError(f"{path} is a directory; give a text file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CorpusError(f"cannot read {path}: {error.strerror}") from None
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


class Vocab:
    """The sorted set of characters a model knows, and the id of each.

    Ids are positions in the sorted list, so the vocabulary is fully described by
    its characters and survives a round trip through JSON.
    """

    def __init__(self, chars: Sequence[str]):
        if not chars:
            raise CorpusError("a vocabulary needs at least one character")
        if any(len(c) != 1 for c in chars):
            raise CorpusError("every vocabulary entry must be a single character")
        codepoints = _codepoints("".join(chars))
        if np.any(np.diff(codepoints.astype(np.int64)) <= 0):
            raise CorpusError("vocabulary characters must be sorted and distinct")
        self.chars: list[str] = list(chars)
        self._codepoints = codepoints

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        if not text:
            raise CorpusError("cannot build a vocabulary from empty text")
        unique = np.unique(_codepoints(text))
        return cls(list(unique.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")))

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

    def _lookup(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        points = _codepoints(text)
        positions = np.searchsorted(self._codepoints, points)
        clipped = np.minimum(positions, len(self._codepoints) - 1)
        known = self._codepoints[clipped] == points
        return points, clipped, known

    def unknown_chars(self, text: str) -> list[str]:
        """Characters of ``text`` outside the vocabulary, each once, in sorted order."""
        points, _, known = self._lookup(text)
        missing = np.unique(points[~known])
        return list(missing.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass"))

    def unknown_counts(self, text: str) -> dict[str, int]:
        """How often each character outside the vocabulary occurs in ``text``, for reports."""
        points, _, known = self._lookup(text)
        missing, counts = np.unique(points[~known], return_counts=True)
        chars = missing.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")
        return dict(zip(chars, counts.tolist()))

    def encode(self, text: str, unknown: UnknownPolicy = "error", replacement: str | None = None) -> np.ndarray:
        """Map text to ids; unknown characters raise, are dropped, or become ``replacement``.

        ``replacement`` defaults to a space (or the first character when the
        vocabulary has no space), a choice that disturbs the model least.
        """
        _, ids, known = self._lookup(text)
        if not known.all():
            if unknown == "error":
                raise UnknownCharactersError(self.unknown_chars(text))
            if unknown == "skip":
                ids = ids[known]
            else:
                ids = ids.copy()
                ids[~known] = self.index(replacement if replacement is not None else self.default_replacement)
        return ids.astype(self.dtype)

    @property
    def default_replacement(self) -> str:
        return " " if " " in self else self.chars[0]

    def index(self, char: str) -> int:
        if char not in self:
            raise UnknownCharactersError([char])
        return self.chars.index(char)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        points = self._codepoints[np.asarray(ids, dtype=np.int64)]
        return points.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")


@dataclass
class Corpus:
    """A text as ids, with the vocabulary that maps between the two."""

    source: str
    vocab: Vocab
    ids: np.ndarray
    sha256: str

    @classmethod
    def from_text(cls, text: str, source: str = "<text>", vocab: Vocab | None = None) -> "Corpus":
        vocab = vocab or Vocab.from_text(text)
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        return cls(source=source, vocab=vocab, ids=vocab.encode(text), sha256=digest)

    @classmethod
    def from_file(cls, path: str | Path | None, options: TextOptions = TextOptions()) -> "Corpus":
        """Read a corpus file, or the built-in default corpus when ``path`` is None."""
        if path is None:
            return cls.from_text(read_default_corpus(), source=DEFAULT_CORPUS_DESCRIPTION)
        return cls.from_text(read_text(path, options), source=str(path))

    def __len__(self) -> int:
        return len(self.ids)

    def split(self, val_frac: float) -> tuple[np.ndarray, np.ndarray]:
        """Training ids first, validation ids last: one contiguous cut, as nanoGPT does."""
        if not 0.0 <= val_frac < 1.0:
            raise CorpusError(f"--val-frac must be in [0, 1), not {val_frac}")
        cut = len(self.ids) - int(round(len(self.ids) * val_frac))
        return self.ids[:cut], self.ids[cut:]
