"""Known corpora: where to download them, how to check them, how to unpack them.

The catalogue (``corpora/catalogue.json``) holds no text, only each corpus's
URL, size, SHA-256 and licence, and where each checksum was published. A
download goes to ``NAME.part`` and resumes from its length with an HTTP Range
request; only a file whose size and SHA-256 match is renamed into place, and one
that does not match is deleted. An entry whose checksum is unknown is refused
unless the caller accepts an unverified download.

The only file ``fetch`` ever deletes or replaces is its own ``.part``: a file
already at a target that is not the entry's (a user's own copy with the same
name) is refused and kept. A catalogue names plain files inside ``--dir``, never
paths, and a download is bounded in time and in size by the entry.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import http.client
import json
import os
import shutil
import stat
import sys
import sysconfig
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Literal, Protocol

from ..base.errors import CorpusError
from ..base.fsutil import replacing
from ..base.version import __version__

CATALOGUE_ENV = "CHARLSTM_CATALOGUE"
SOURCE_CATALOGUE = Path(__file__).resolve().parents[2] / "corpora" / "catalogue.json"
INSTALLED_CATALOGUE = Path("share") / "charlstm" / "corpora" / "catalogue.json"
"""Where a wheel puts the catalogue (pyproject's data-files), under its install scheme's data root."""


def installed_catalogues() -> list[Path]:
    """Where an installed wheel's catalogue can be: the data root of this interpreter's default
    install scheme (a venv's prefix, /usr/local on Debian's Python) and of the user scheme (``--user``)."""
    roots = [Path(sys.prefix), Path(sysconfig.get_path("data"))]
    user_scheme = f"{os.name}_user"
    if user_scheme in sysconfig.get_scheme_names():
        roots.append(Path(sysconfig.get_path("data", user_scheme)))
    return list(dict.fromkeys(root / INSTALLED_CATALOGUE for root in roots))


def default_catalogue() -> Path:
    """``corpora/catalogue.json`` of a source checkout (or editable install), else the copy a wheel
    installed (a wheel holds no ``corpora/``), else the source path, for the error to name."""
    if SOURCE_CATALOGUE.is_file():
        return SOURCE_CATALOGUE
    return next((path for path in installed_catalogues() if path.is_file()), SOURCE_CATALOGUE)


_BLOCK = 1 << 16

# A server silent this long, or a download still running after this long, ends in an error
# (module constants, so tests can shorten them).
IDLE_TIMEOUT = 60.0
TOTAL_TIMEOUT = 6 * 3600.0

Unpack = Literal["none", "zip", "gzip"]


@dataclass(frozen=True)
class CatalogueEntry:
    """One downloadable corpus. ``sha256`` is None when no trustworthy published value is known."""

    name: str
    description: str
    url: str
    size: int
    sha256: str | None
    sha256_source: str
    licence: str
    unpack: Unpack
    file: str  # the name the download is saved under
    text_file: str  # the file to train on, after unpacking
    member: str | None = None  # the archive member that holds the text (zip)


_REQUIRED = ("name", "description", "url", "size", "sha256", "sha256_source", "licence", "unpack", "file", "text_file")


def load_catalogue(path: Path | None = None) -> list[CatalogueEntry]:
    """The entries of ``path``, or of ``$CHARLSTM_CATALOGUE``, or of the shipped catalogue (:func:`default_catalogue`)."""
    path = Path(path or os.environ.get(CATALOGUE_ENV) or default_catalogue())
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorpusError(f"corpus catalogue not found: {path}; pass --catalogue FILE") from None
    except (OSError, ValueError) as error:
        raise CorpusError(f"cannot read the corpus catalogue {path}: {error}") from None
    entries = []
    for index, item in enumerate(raw.get("corpora", []) if isinstance(raw, dict) else []):
        missing = [key for key in _REQUIRED if key not in item]
        if missing:
            raise CorpusError(f"{path}: corpus entry {index + 1} lacks {', '.join(missing)}; fix the catalogue")
        if item["unpack"] not in ("none", "zip", "gzip"):
            raise CorpusError(f"{path}: {item['name']} has unpack {item['unpack']!r}; use none, zip or gzip")
        _check_entry(path, item)
        entries.append(CatalogueEntry(**{key: item[key] for key in (*_REQUIRED, "member") if key in item}))
    if not entries:
        raise CorpusError(f"{path} lists no corpora; check the file (it needs a 'corpora' list)")
    return entries


def _check_entry(path: Path, item: dict) -> None:
    """Refuse an entry whose file names would leave ``--dir`` or whose URL or size cannot be honoured."""
    name = item["name"]
    for key in ("file", "text_file"):
        value = item[key]
        if (not isinstance(value, str) or value in ("", ".", "..") or any(c in value for c in "/\\\0")
                or value.startswith(".") or value.endswith(".part")):
            raise CorpusError(f"{path}: {name} has {key} {value!r}, which is not a plain file name; fix the catalogue")
    if not isinstance(item["size"], int) or isinstance(item["size"], bool) or item["size"] <= 0:
        raise CorpusError(f"{path}: {name} has size {item['size']!r}; it must be the download's byte count")
    if not isinstance(item["url"], str) or urllib.parse.urlsplit(item["url"]).scheme not in ("http", "https"):
        raise CorpusError(f"{path}: {name} has url {item['url']!r}; only http and https URLs are fetched")


def find_entry(entries: list[CatalogueEntry], name: str) -> CatalogueEntry:
    """The entry called ``name``; an unknown name is an error that suggests the closest one."""
    by_name = {entry.name: entry for entry in entries}
    if name in by_name:
        return by_name[name]
    close = difflib.get_close_matches(name, list(by_name), n=1, cutoff=0.4)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise CorpusError(f"unknown corpus {name!r}; {hint}see 'charlstm corpus list' for the known ones")


class DownloadProgress(Protocol):
    """What a download tells the outside world; the console layer draws it as a bar."""

    def start(self, name: str, total: int | None, done: int) -> None: ...
    def advance(self, size: int) -> None: ...
    def close(self) -> None: ...


class _NoProgress:
    def start(self, name: str, total: int | None, done: int) -> None:
        pass

    def advance(self, size: int) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class FetchResult:
    path: Path  # the text file to train on
    downloaded: bool  # False when a verified copy was already there
    verified: bool
    sha256: str


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _mismatch(entry: CatalogueEntry, path: Path) -> str | None:
    """Why ``path`` is not the entry's verified download, or None when it is (or cannot be checked)."""
    size = path.stat().st_size
    if entry.sha256 is None:
        return None
    actual = file_sha256(path)
    if actual != entry.sha256 or size != entry.size:
        return f"expected sha256 {entry.sha256} ({entry.size} bytes), got {actual} ({size} bytes)"
    return None


def _check_download(entry: CatalogueEntry, part: Path) -> None:
    """Delete this command's own download when it fails the check: a corrupt or changed source."""
    problem = _mismatch(entry, part)
    if problem is not None:
        part.unlink()
        raise CorpusError(
            f"checksum mismatch for {entry.name}: {problem}; the download was deleted; run the command again, "
            "and if it fails again the source has changed"
        )


def _refuse_foreign(entry: CatalogueEntry, path: Path, why: str) -> CorpusError:
    return CorpusError(
        f"{path} already exists and {why}, so it was left as it is; move it away, or use another --dir for {entry.name}"
    )


def _existing(entry: CatalogueEntry, path: Path) -> bool:
    """Whether ``path`` exists; a folder, device or FIFO there is refused, never opened or replaced."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(mode):
        raise _refuse_foreign(entry, path, "is not a regular file")
    return True


def _download(entry: CatalogueEntry, part: Path, progress: DownloadProgress) -> None:
    """Fetch ``entry.url`` into ``part``, continuing from the bytes already there.

    The socket timeout bounds each wait for the server, and the clock the whole download, so a
    server that drips a byte at a time cannot hold the command forever; bytes beyond the entry's
    size mean the server is not sending the catalogued file, so the download stops there.
    """
    _existing(entry, part)
    done = part.stat().st_size if part.exists() else 0
    if done > entry.size:
        part.unlink()
        done = 0
    headers = {"User-Agent": f"charlstm/{__version__}"}
    if done:
        headers["Range"] = f"bytes={done}-"
    deadline = time.monotonic() + TOTAL_TIMEOUT
    try:
        response = urllib.request.urlopen(urllib.request.Request(entry.url, headers=headers), timeout=IDLE_TIMEOUT)
    except urllib.error.HTTPError as error:
        if error.code == 416 and done == entry.size:
            return  # the partial file is already whole
        raise CorpusError(f"download of {entry.name} failed: HTTP {error.code} {error.reason} from {entry.url}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise CorpusError(f"cannot download {entry.name} from {entry.url}: {reason}; check the network and try again") from None
    with response:
        if response.status != 206:  # the server ignored the Range: start again from the beginning
            done = 0
        length = response.headers.get("Content-Length")
        total = done + int(length) if length is not None and length.isdigit() else None
        if total is not None and total > entry.size:
            raise _too_big(entry, part, f"the server announces {total} bytes")
        progress.start(entry.name, total, done)
        try:
            with open(part, "ab" if done else "wb") as handle:
                while block := response.read1(_BLOCK):  # read1: returns what arrived, so the clock is checked often
                    if done + len(block) > entry.size:
                        handle.close()
                        raise _too_big(entry, part, f"the server sent more than {entry.size} bytes")
                    handle.write(block)
                    done += len(block)
                    progress.advance(len(block))
                    if time.monotonic() > deadline:
                        raise CorpusError(
                            f"download of {entry.name} took longer than {TOTAL_TIMEOUT:g} s and was stopped after "
                            f"{done} bytes; run the same command again to resume it"
                        )
        except TimeoutError:
            raise CorpusError(
                f"download of {entry.name} stalled: the server sent nothing for {IDLE_TIMEOUT:g} s after {done} bytes; "
                "run the same command again to resume it"
            ) from None
        except (OSError, http.client.HTTPException) as error:
            raise CorpusError(
                f"download of {entry.name} was interrupted after {done} bytes ({type(error).__name__}); "
                "run the same command again to resume it"
            ) from None
        finally:
            progress.close()
    if total is not None and done < total:
        raise CorpusError(
            f"download of {entry.name} was interrupted after {done} of {total} bytes; "
            "run the same command again to resume it"
        )


def _too_big(entry: CatalogueEntry, part: Path, what: str) -> CorpusError:
    part.unlink(missing_ok=True)
    return CorpusError(
        f"download of {entry.name} stopped: {what}, but the catalogue says {entry.size}; the download was deleted; "
        "the source has changed or the catalogue is wrong"
    )


@contextmanager
def _unpacked(entry: CatalogueEntry, archive: Path) -> Iterator[BinaryIO]:
    """The text member of ``archive``, opened for reading."""
    if entry.unpack == "zip":
        with zipfile.ZipFile(archive) as bundle, bundle.open(entry.member or entry.text_file) as source:
            yield source
    else:
        with gzip.open(archive, "rb") as source:
            yield source


def _unpack(entry: CatalogueEntry, archive: Path, target: Path) -> None:
    """Write the text out of ``archive`` to ``target``, whole or not at all.

    A file already at ``target`` is kept when it holds exactly that text, and refused otherwise:
    it is the user's, whatever its name says.
    """
    try:
        if _existing(entry, target):
            digest, expected = hashlib.sha256(), file_sha256(target)
            with _unpacked(entry, archive) as source:
                for block in iter(lambda: source.read(_BLOCK), b""):
                    digest.update(block)
            if digest.hexdigest() != expected:
                raise _refuse_foreign(entry, target, f"is not the text of {archive.name}")
            return
        with replacing(target) as staging, _unpacked(entry, archive) as source, open(staging, "wb") as sink:
            shutil.copyfileobj(source, sink, _BLOCK)
    except (zipfile.BadZipFile, KeyError, EOFError, OSError, zlib.error) as error:
        raise CorpusError(f"cannot unpack {archive}: {error}; delete it and download it again") from None


def fetch(
    entry: CatalogueEntry,
    directory: Path,
    progress: DownloadProgress | None = None,
    allow_unverified: bool = False,
) -> FetchResult:
    """Download (or resume), verify and unpack ``entry`` into ``directory``; the path to train on."""
    if entry.sha256 is None and not allow_unverified:
        raise CorpusError(
            f"no published SHA-256 is known for {entry.name}, so its download cannot be verified; "
            "pass --unverified to download it anyway"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CorpusError(f"cannot create {directory} ({error.strerror or error}); choose another --dir") from None
    archive = directory / entry.file
    target = directory / entry.text_file
    downloaded = False
    if not _existing(entry, archive):
        part = archive.with_name(archive.name + ".part")
        _download(entry, part, progress or _NoProgress())
        _check_download(entry, part)
        try:
            os.link(part, archive)  # unlike a rename, never replaces a file that appeared meanwhile
        except FileExistsError:
            raise _refuse_foreign(entry, archive, "appeared during the download") from None
        except OSError:  # a file system without hard links
            if archive.exists():
                raise _refuse_foreign(entry, archive, "appeared during the download") from None
            os.replace(part, archive)
        part.unlink(missing_ok=True)
        downloaded = True
    else:
        problem = _mismatch(entry, archive)
        if problem is not None:
            raise _refuse_foreign(entry, archive, f"is not the catalogued {entry.name} ({problem})")
    if entry.unpack != "none":
        _unpack(entry, archive, target)
    return FetchResult(target, downloaded, entry.sha256 is not None, entry.sha256 or file_sha256(archive))
