"""Writing files so that a crash never leaves half of one, and where per-user files live.

Everything charlstm writes that a reader may open later (checkpoints, cache
entries, unpacked corpora, reports, transcripts) is written in full under a
hidden temporary name beside its destination, fsynced, and renamed over it. A
rename within one folder is atomic, so a reader sees the old file or the new one,
never a mix; the staging name starts with a dot and carries the process id, so it
stays out of listings and two processes never write the same one.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal

from .errors import CharlstmError

UserDirKind = Literal["cache", "state", "data"]

# The XDG Base Directory variables and their defaults under the home folder.
_XDG = {
    "cache": ("XDG_CACHE_HOME", (".cache",)),
    "state": ("XDG_STATE_HOME", (".local", "state")),
    "data": ("XDG_DATA_HOME", (".local", "share")),
}


def user_dir(kind: UserDirKind, name: str, env_override: str | None = None) -> Path:
    """Where charlstm keeps ``name`` for this user: ``$env_override`` when set, else under the XDG
    folder for ``kind`` (``$XDG_CACHE_HOME``, ``$XDG_STATE_HOME``, ``$XDG_DATA_HOME``, or their
    defaults under the home folder), in ``charlstm/``.

    The override names the place itself, not a folder above it, so a user who sets it gets
    exactly the path they wrote.
    """
    if env_override:
        override = os.environ.get(env_override)
        if override:
            return Path(override)
    variable, default = _XDG[kind]
    base = os.environ.get(variable) or str(Path.home().joinpath(*default))
    return Path(base) / "charlstm" / name


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself has happened
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Push a file's contents to disk before it is renamed into place, so the rename never
    outruns the data and leaves an empty file under the final name."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _staging(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a path beside ``path`` to write; it replaces ``path`` only once complete, and is
    removed if the writing fails, so an existing file is never left half-overwritten.

    An operating-system error becomes a one-line :class:`CharlstmError` naming ``path``.
    """
    folder = path.parent
    if not folder.is_dir():
        raise CharlstmError(f"cannot write {path}: the folder {folder} does not exist")
    staging = _staging(path)
    try:
        yield staging
        fsync_file(staging)
        os.replace(staging, path)
        fsync_dir(folder)
    except OSError as error:
        raise CharlstmError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        staging.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) through :func:`replacing`."""
    with replacing(path) as staging:
        staging.write_text(text, encoding="utf-8")


def previous_dir(path: Path) -> Path:
    """Where :func:`replacing_dir` keeps the old folder during its swap: after a crash at that
    moment, the only complete copy."""
    return path.with_name(f"{path.name}.old")


@contextmanager
def replacing_dir(path: Path) -> Iterator[Path]:
    """Yield a new folder beside ``path`` to fill; once complete it replaces ``path``.

    Two renames cannot be one atomic step, so the old folder is first moved to
    :func:`previous_dir` and removed only after the new one is in place: a crash at any
    moment leaves a complete folder under one of the two names. Errors are left as
    they are, for the caller to say what was being saved.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging(path)
    previous = previous_dir(path)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        for child in staging.iterdir():
            fsync_file(child)
        fsync_dir(staging)
        if path.exists():
            shutil.rmtree(previous, ignore_errors=True)
            path.rename(previous)
        staging.rename(path)
        fsync_dir(path.parent)
        shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if not path.exists() and previous.exists():
            previous.rename(path)
        raise
