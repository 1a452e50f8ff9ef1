"""Reading files the user names without trusting them to be small, regular or finite.

A path may name a FIFO with no writer (opening it blocks), a device that never
ends (``/dev/zero``), a sparse file of gigabytes, or a folder. Every file charlstm
reads goes through :func:`read_bytes`: it opens without blocking, looks at what it
opened before reading a byte, and knows the size before it reads.
"""

from __future__ import annotations

import errno
import os
import resource
import stat
from pathlib import Path

from .errors import CharlstmError

# Config, metrics, catalogue and cache metadata are small; more than this is not one of ours.
JSON_LIMIT = 64 * 1024 * 1024


class FileRefused(CharlstmError):
    """A file that is not read, and why, in words a caller can put into its own one-line message."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path} {reason}")


def kind_of(mode: int) -> str | None:
    """What a non-regular file is, for a message; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def why_not_regular(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file (without opening it), or None when it can."""
    try:
        kind = kind_of(path.stat().st_mode)
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    return None if kind is None else f"is {kind}, not a regular file"


def format_size(size: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{int(size)} bytes"


def read_bytes(path: Path, limit: int | None = None, head: int | None = None) -> bytes:
    """The bytes of a regular file, refused before reading when it is not one or is over ``limit``.

    ``head`` reads only the first bytes: enough to sniff a file without reading it whole.
    """
    path = Path(path)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        if error.errno == errno.ENOENT:
            raise FileRefused(path, "does not exist") from None
        raise FileRefused(path, f"cannot be read ({error.strerror or error})") from None
    info = os.fstat(descriptor)
    kind = kind_of(info.st_mode)
    if kind is not None or (limit is not None and info.st_size > limit):
        os.close(descriptor)
        if kind is not None:
            raise FileRefused(path, f"is {kind}, not a regular file")
        raise FileRefused(path, f"is {format_size(info.st_size)}, more than the {format_size(limit or 0)} allowed")
    with os.fdopen(descriptor, "rb", buffering=0) as handle:
        wanted = info.st_size if head is None else min(head, info.st_size)
        try:
            data = handle.read(wanted)
        except OSError as error:
            raise FileRefused(path, f"cannot be read ({error.strerror or error})") from None
    return data or b""


def read_utf8(path: Path, limit: int | None = None) -> str:
    """A small text file of ours (JSON, JSON lines), refused unless regular, bounded and UTF-8."""
    data = read_bytes(path, JSON_LIMIT if limit is None else limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise FileRefused(path, f"is not valid UTF-8 (byte 0x{data[error.start]:02x} at offset {error.start})") from None


def memory_available() -> int:
    """Bytes this process may use: the machine's memory, or less under an address-space limit."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        physical = 1 << 62
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return physical if soft == resource.RLIM_INFINITY else min(physical, soft)
