"""Known corpora: where to download them, how to check them, how to unpack them.

The catalogue (``corpora/catalogue.json``) holds no text, only each corpus's
URL, size, SHA-256 and licence, and where each checksum was published. A
download goes to ``NAME.part`` and resumes from its length with an HTTP Range
request; only a file whose size and SHA-256 match is renamed into place, and one
that does not match is deleted. An entry whose checksum is unknown is refused
unless the caller accepts an unverified download.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import http.client
import json
import os
import shutil
import sys
import sysconfig
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

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
        entries.append(CatalogueEntry(**{key: item[key] for key in (*_REQUIRED, "member") if key in item}))
    if not entries:
        raise CorpusError(f"{path} lists no corpora; check the file (it needs a 'corpora' list)")
    return entries


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


def _check(entry: CatalogueEntry, path: Path) -> str:
    """The file's SHA-256 after checking size and checksum; a file that fails is deleted."""
    size = path.stat().st_size
    actual = file_sha256(path)
    if entry.sha256 is not None and (actual != entry.sha256 or size != entry.size):
        path.unlink()
        raise CorpusError(
            f"checksum mismatch for {entry.name}: expected sha256 {entry.sha256} ({entry.size} bytes), got "
            f"{actual} ({size} bytes); the file was deleted; run the command again, and if it fails again "
            "the source has changed"
        )
    return actual


def _download(entry: CatalogueEntry, part: Path, progress: DownloadProgress) -> None:
    """Fetch ``entry.url`` into ``part``, continuing from the bytes already there."""
    done = part.stat().st_size if part.exists() else 0
    if done > entry.size:
        part.unlink()
        done = 0
    headers = {"User-Agent": f"charlstm/{__version__}"}
    if done:
        headers["Range"] = f"bytes={done}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(entry.url, headers=headers), timeout=60)
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
        total = done + int(length) if length is not None else None
        progress.start(entry.name, total, done)
        try:
            with open(part, "ab" if done else "wb") as handle:
                for block in iter(lambda: response.read(_BLOCK), b""):
                    handle.write(block)
                    done += len(block)
                    progress.advance(len(block))
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


def _unpack(entry: CatalogueEntry, archive: Path, target: Path) -> None:
    """Write the text out of ``archive`` to ``target``, whole or not at all."""
    with replacing(target) as staging:
        try:
            if entry.unpack == "zip":
                with zipfile.ZipFile(archive) as bundle, bundle.open(entry.member or target.name) as source, open(staging, "wb") as sink:
                    shutil.copyfileobj(source, sink, _BLOCK)
            else:
                with gzip.open(archive, "rb") as source, open(staging, "wb") as sink:
                    shutil.copyfileobj(source, sink, _BLOCK)
        except (zipfile.BadZipFile, KeyError, OSError, EOFError) as error:
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
    directory.mkdir(parents=True, exist_ok=True)
    archive = directory / entry.file
    target = directory / entry.text_file
    downloaded = False
    if not archive.exists():
        part = archive.with_name(archive.name + ".part")
        _download(entry, part, progress or _NoProgress())
        actual = _check(entry, part)
        os.replace(part, archive)
        downloaded = True
    else:
        actual = _check(entry, archive)
    if entry.unpack != "none" and (downloaded or not target.exists()):
        _unpack(entry, archive, target)
    return FetchResult(target, downloaded, entry.sha256 is not None, actual)

