"""Turning what the user named — files, folders, glob patterns — into one encoded corpus.

Folders and patterns expand to their files in sorted order; files named outright
keep the order they were given. The files' texts are joined with a document
separator. What a folder or pattern brings that is not text (binary or empty
files) is skipped and reported, never silently dropped; a file that does not
decode fails the load or is skipped, as the caller chooses. The encoded result is
cached by content (see :mod:`charlstm.cache`).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from ..base.errors import CorpusError
from ..base.reading import FileRefused, memory_available, read_bytes, why_not_regular
from .cache import CorpusCache, cache_key
from .corpus import (
    DEFAULT_CORPUS_DESCRIPTION,
    Corpus,
    CorpusFile,
    TextOptions,
    Vocab,
    as_str,
    default_corpus_files,
    prepare_text,
    sha256_hex,
)

UndecodablePolicy = Literal["fail", "skip"]
_GLOB_CHARS = frozenset("*?[")
# A NUL in the first 8 KiB marks a binary file, the test git and grep use.
_BINARY_SNIFF_BYTES = 8192


@dataclass(frozen=True)
class SkippedFile:
    """A file a folder or pattern brought in that is not part of the corpus, and why."""

    path: Path
    reason: str


@dataclass
class LoadedCorpus:
    corpus: Corpus
    skipped: list[SkippedFile]
    from_cache: bool


@dataclass(frozen=True)
class _Candidate:
    path: Path
    named: bool  # named outright by the user, rather than found in a folder or by a pattern
    skip: str | None = None  # why a folder or pattern's entry cannot be read, found while walking


# A pattern or folder walk never descends into these: they hold no corpus and some never end.
_PSEUDO_FILESYSTEMS = (Path("/proc"), Path("/sys"), Path("/dev"))
# How many entries a folder or pattern may visit before the walk gives up with a message.
WALK_LIMIT = 200_000


def _pseudo(path: Path) -> Path | None:
    resolved = path.resolve()
    return next((root for root in _PSEUDO_FILESYSTEMS if resolved == root or root in resolved.parents), None)


def _matches(parts: Sequence[str], pattern: Sequence[str]) -> bool:
    """Glob matching of path components, ``**`` spanning folders; hidden names match only a pattern saying so."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return _matches(parts, pattern[1:]) or (bool(parts) and not parts[0].startswith(".") and _matches(parts[1:], pattern))
    if not parts or (parts[0].startswith(".") and not pattern[0].startswith(".")):
        return False
    return fnmatch.fnmatchcase(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])


def _walk(root: Path, pattern: Sequence[str], shown: str) -> list[_Candidate]:
    """The files under ``root`` whose relative path matches ``pattern``, in sorted order, and the entries
    that could not be read; bounded so that no pattern walks a whole disk or a pseudo-filesystem."""
    pseudo = _pseudo(root)
    if pseudo is not None:
        raise CorpusError(f"{shown} searches {pseudo}, which holds no corpus files; name a folder of text files")
    found: list[_Candidate] = []
    visited = 0
    depth = None if "**" in pattern else len(pattern)

    def unreadable(error: OSError) -> None:
        found.append(_Candidate(Path(error.filename or root), False, f"cannot be read ({error.strerror or error})"))

    for folder, folders, files in os.walk(root, onerror=unreadable):
        here = Path(folder)
        relative = here.relative_to(root).parts
        visited += len(folders) + len(files)
        if visited > WALK_LIMIT:
            raise CorpusError(
                f"{shown} reaches more than {WALK_LIMIT} files and folders; narrow it to the folder that holds the corpus"
            )
        folders[:] = sorted(
            name for name in folders
            if (depth is None or len(relative) + 1 < depth) and not name.startswith(".") and _pseudo(here / name) is None
        )
        for name in sorted(files):
            if _matches(relative + (name,), pattern):
                found.append(_Candidate(here / name, False, why_not_regular(here / name)))
    return sorted(found, key=lambda candidate: candidate.path)


def _expand_pattern(text: str) -> list[_Candidate]:
    parts = Path(text).parts
    fixed = next(i for i, part in enumerate(parts) if any(c in _GLOB_CHARS for c in part))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    if not root.is_dir():
        return []
    return _walk(root, parts[fixed:], f"the pattern {text}")


def resolve_sources(sources: Sequence[str | Path]) -> list[_Candidate]:
    """The files that ``sources`` name, each once, in corpus order; entries of folders and patterns
    that cannot be read come with the reason to skip them."""
    if not sources:
        raise CorpusError("no corpus given; name a text file, a folder or a pattern such as 'poems/*.txt'")
    candidates: list[_Candidate] = []
    for source in sources:
        text, path = str(source), Path(source)
        if any(c in _GLOB_CHARS for c in text) and not path.exists():
            matches = _expand_pattern(text)
            if not any(match.skip is None for match in matches):
                raise CorpusError(f"no files match {text}; check the pattern (quote it so the shell passes it on)")
            candidates += matches
        elif path.is_dir():
            files = _walk(path, ("**", "*"), f"the folder {path}")
            if not files:
                raise CorpusError(f"the folder {path} holds no files; give a folder with text files in it")
            candidates += files
        elif path.exists():
            candidates.append(_Candidate(path, named=True))
        else:
            raise CorpusError(f"corpus file not found: {path}")
    seen: set[Path] = set()
    unique = []
    for candidate in candidates:
        key = candidate.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(candidate)
    return unique


def corpus_budget() -> int:
    """The most corpus bytes to read: preparing and encoding a text takes several times its size."""
    return memory_available() // 8


def read_candidate(candidate: _Candidate, budget: int) -> bytes | SkippedFile:
    """A candidate's bytes, or why a folder's or pattern's file is skipped; a file named outright that
    cannot be read (a FIFO, a device, more than ``budget`` bytes) is refused."""
    try:
        if candidate.skip is not None:
            raise FileRefused(candidate.path, candidate.skip)
        if not candidate.named and b"\x00" in read_bytes(candidate.path, budget, head=_BINARY_SNIFF_BYTES):
            return SkippedFile(candidate.path, "not a text file (binary)")
        return read_bytes(candidate.path, budget)
    except FileRefused as refused:
        if not candidate.named:
            return SkippedFile(candidate.path, refused.reason)
        remedy = ("; give a smaller file or split it" if "allowed" in refused.reason else "; give a text file")
        raise CorpusError(f"{refused}{remedy}") from None


def why_not_text(data: bytes) -> str | None:
    if not data:
        return "empty"
    if b"\x00" in data[:_BINARY_SNIFF_BYTES]:
        return "not a text file (binary)"
    if data.isspace():
        return "holds only whitespace"
    return None


def _join(pieces: list[str | bytes], separator: str) -> str | bytes:
    """One text from many, staying in bytes (the fast path) while every piece and the separator are ASCII."""
    if len(pieces) == 1:
        return pieces[0]
    if separator.isascii() and all(isinstance(p, bytes) for p in pieces):
        return separator.encode("ascii").join(pieces)  # type: ignore[arg-type]
    return separator.join(as_str(p) for p in pieces)


def _describe(description: str, files: list[CorpusFile]) -> str:
    """How a run names its corpus: a single file by its path, several by their count and origin."""
    return description if len(files) == 1 or description == DEFAULT_CORPUS_DESCRIPTION else f"{len(files)} files from {description}"


def load_corpus(
    sources: Sequence[str | Path] | None,
    options: TextOptions = TextOptions(),
    separator: str = "\n",
    undecodable: UndecodablePolicy = "fail",
    min_char_count: int = 1,
    cache: CorpusCache | None = None,
) -> LoadedCorpus:
    """Read, join and encode the files ``sources`` name (None: the built-in default corpus).

    With a ``cache``, a corpus already encoded with the same contents and options
    is memory-mapped from it instead of being encoded again.
    """
    if min_char_count < 1:
        raise CorpusError(f"--min-char-count must be at least 1, not {min_char_count}")
    if sources is None:
        candidates = [_Candidate(path, named=False) for path in default_corpus_files()]
        options = TextOptions(errors="replace", lowercase=options.lowercase, nfc=options.nfc)
        description = DEFAULT_CORPUS_DESCRIPTION
    else:
        candidates = resolve_sources(sources)
        single = len(candidates) == 1 and candidates[0].named
        description = str(candidates[0].path) if single else ", ".join(map(str, sources))

    skipped: list[SkippedFile] = []
    files: list[CorpusFile] = []
    contents: list[bytes | None] = []
    named: list[bool] = []
    budget = corpus_budget()
    for candidate in candidates:
        data = read_candidate(candidate, budget)
        if isinstance(data, SkippedFile):
            skipped.append(data)
            continue
        budget -= len(data)
        reason = why_not_text(data)
        if reason is not None and not candidate.named:
            skipped.append(SkippedFile(candidate.path, reason))
            continue
        if reason in ("empty", "holds only whitespace"):  # a named binary file is refused by prepare_text
            what = "is empty" if reason == "empty" else reason
            raise CorpusError(f"{candidate.path} {what}; give a file with some text in it")
        files.append(CorpusFile(str(candidate.path), sha256_hex(data), len(data)))
        contents.append(data)
        named.append(candidate.named)

    key = cache_key(
        {
            "files": [f.sha256 for f in files],
            "text": asdict(options),
            "separator": separator,
            "undecodable": undecodable,
            "min_char_count": min_char_count,
        }
    )
    if cache is not None:
        hit = cache.load(key)
        if hit is not None:
            ids, meta = hit
            kept = [f for i, f in enumerate(files) if i not in set(meta["undecodable"])]
            skipped += [SkippedFile(Path(files[i].path), meta["undecodable_reason"][str(i)]) for i in meta["undecodable"]]
            corpus = Corpus(_describe(description, kept), Vocab(meta["vocab"]), ids, meta["sha256"], kept)
            corpus.loading = _how_read(sources, kept, options, separator, min_char_count)
            return LoadedCorpus(corpus, skipped, from_cache=True)

    pieces: list[str | bytes] = []
    kept_files: list[CorpusFile] = []
    undecodable_reasons: dict[str, str] = {}
    for index, file in enumerate(files):
        data, contents[index] = contents[index], None  # let each file's bytes go once prepared
        assert data is not None
        try:
            pieces.append(prepare_text(data, file.path, options))
        except CorpusError as problem:
            if named[index] or undecodable == "fail":
                hint = "" if named[index] else "; or pass --undecodable skip to leave such files out"
                raise CorpusError(f"{problem}{hint}") from None
            undecodable_reasons[str(index)] = f"not valid {options.encoding}"
            skipped.append(SkippedFile(Path(file.path), undecodable_reasons[str(index)]))
            continue
        kept_files.append(file)
        del data
    if not pieces:
        raise CorpusError(
            f"no text files in {', '.join(map(str, sources or []))} ({len(skipped)} skipped); give files of text"
        )

    text = _join(pieces, separator)
    del pieces
    digest = kept_files[0].sha256 if len(kept_files) == 1 else sha256_hex(
        "".join(f"{f.sha256}\n" for f in kept_files) + repr(separator)
    )
    corpus = Corpus.from_text(text, _describe(description, kept_files), min_char_count=min_char_count, sha256=digest, files=kept_files)
    del text
    if cache is not None:
        cache.save(
            key,
            corpus.ids,
            {
                "vocab": corpus.vocab.chars,
                "sha256": corpus.sha256,
                "undecodable": [int(i) for i in undecodable_reasons],
                "undecodable_reason": undecodable_reasons,
            },
        )
    corpus.loading = _how_read(sources, kept_files, options, separator, min_char_count)
    return LoadedCorpus(corpus, skipped, from_cache=False)


def read_corpus(path: str | Path | None, options: TextOptions = TextOptions()) -> Corpus:
    """One file as a corpus, or the built-in default corpus when ``path`` is None: the short
    way in for library use, without the cache or the report of skipped files."""
    return load_corpus([path] if path is not None else None, options, cache=None).corpus


def _how_read(
    sources: Sequence[str | Path] | None, kept: list[CorpusFile], options: TextOptions, separator: str, min_char_count: int
) -> dict[str, Any]:
    """What a resumed run needs to read the same corpus again, from any working directory."""
    files = None if sources is None else [str(Path(f.path).resolve()) for f in kept]
    return {"files": files, "options": asdict(options), "separator": separator, "min_char_count": min_char_count}

