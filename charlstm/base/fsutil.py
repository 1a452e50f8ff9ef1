"""Writing files so that a crash never leaves half of one, and where per-user files live.

Everything charlstm writes that a reader may open later (checkpoints, cache
entries, unpacked corpora, reports, transcripts) is written in full under a
hidden temporary name beside its destination, fsynced, and renamed over it. A
rename within one folder is atomic, so a reader sees the old file or the new one,
never a mix; the staging name starts with a dot and carries the process id, so it
stays out of listings and two processes never write the same one.

Files a command writes where the user said (``--html``, ``-o``, ``--out``) go through
:func:`check_output` first: such a path may name something the user has, so it is never written
through a device, FIFO, socket or folder, nor over an existing file that is not charlstm's own
output unless the user passes ``--force``. :class:`FileLock` keeps two processes out of one run.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Literal

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
        raise CharlstmError(f"cannot write {path}: the folder {folder} does not exist; create it or choose another path")
    staging = _staging(path)
    try:
        yield staging
        fsync_file(staging)
        os.replace(staging, path)
        fsync_dir(folder)
    except OSError as error:
        raise CharlstmError(f"cannot write {path}: {error.strerror or error}; choose another path or free some space") from None
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


def _kind_of(mode: int) -> str | None:
    """What a path is when it is not a plain file: the word the refusal uses."""
    for test, word in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return word
    return None if stat.S_ISREG(mode) else "not a regular file"


def carries_marker(marker: bytes, within: int = 1 << 16) -> Callable[[Path], bool]:
    """A test for ``check_output``'s ``ours``: the file's first ``within`` bytes hold ``marker``."""

    def test(path: Path) -> bool:
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):  # opening a FIFO to look inside would hang
                return False
            with open(path, "rb") as handle:
                return marker in handle.read(within)
        except OSError:
            return False

    return test


def check_output(path: Path, force: bool, ours: Callable[[Path], bool] | None = None) -> None:
    """Refuse, before anything is written, to put a command's output where it would destroy something.

    The rule for every file written on the user's behalf: never through a device, FIFO, socket or
    folder (a rename would swap ``/dev/null`` itself for a plain file), and never over an existing file
    unless the user said ``--force`` or ``ours`` recognises the file as this tool's own earlier output
    (which the user asked for once already, so writing it again loses nothing they made).
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as error:
        raise CharlstmError(f"cannot write {path}: {error.strerror or error}; choose another path") from None
    kind = _kind_of(mode)
    if kind is not None:
        raise CharlstmError(f"refusing to write {path}: it is {kind}, not a file; give the path of a file to write")
    if not force and not (ours is not None and ours(path)):
        raise CharlstmError(f"{path} already exists and is not charlstm's output; pass --force to replace it, or choose another path")


@contextmanager
def writing_output(path: Path, force: bool, ours: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """:func:`check_output`, then :func:`replacing`: the one way a command writes a file the user named."""
    check_output(path, force, ours)
    with replacing(path) as staging:
        yield staging


def write_output(path: Path, data: str | bytes, force: bool, ours: Callable[[Path], bool] | None = None) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through :func:`writing_output`."""
    with writing_output(path, force, ours) as staging:
        staging.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


class LockHeld(Exception):
    """Another live process holds the lock; ``holder`` is the pid it wrote, when readable."""

    def __init__(self, holder: int | None):
        super().__init__(holder)
        self.holder = holder


class FileLock:
    """An advisory ``flock`` on ``path`` for as long as this object holds it open.

    The kernel drops a flock when its holder exits, however it exits, so a lock file left behind
    by a killed process is simply taken over: staleness needs no pid checks. The holder writes its
    pid into the file only so a refusal can name it. Releasing removes the file while still locked;
    a process that meanwhile locked the removed file sees that the path no longer names what it
    holds, and tries again on the new one.
    """

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                same = os.path.exists(self.path) and os.path.samestat(os.fstat(fd), os.stat(self.path))
            except BlockingIOError:
                holder = os.read(fd, 32).decode("ascii", "replace").strip()
                os.close(fd)
                raise LockHeld(int(holder) if holder.isdigit() else None) from None
            except OSError:
                os.close(fd)
                raise
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.release()
