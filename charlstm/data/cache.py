"""The encoded-corpus cache: ids and vocabulary saved once, memory-mapped after.

Encoding 100 MB of text takes seconds; loading its saved ids with
``np.load(mmap_mode="r")`` takes milliseconds and costs no memory until pages are
read. An entry's key is a hash of the files' contents (their SHA-256) and of every
option that changes the ids, so an edited file or a different option finds no entry
and the corpus is encoded afresh. Each file of an entry is replaced atomically
(:mod:`charlstm.base.fsutil`), and the metadata file is written last: an entry that has its
metadata is complete.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..base.errors import CharlstmError
from ..base.fsutil import atomic_write_text, replacing, user_dir
from ..base.reading import FileRefused, read_utf8

CACHE_ENV = "CHARLSTM_CACHE_DIR"
# Bump when the layout of an entry or the meaning of the ids changes.
CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$CHARLSTM_CACHE_DIR``, else ``$XDG_CACHE_HOME/charlstm/corpora``, else ``~/.cache/charlstm/corpora``."""
    return user_dir("cache", "corpora", CACHE_ENV)


def cache_key(description: dict[str, Any]) -> str:
    """A stable name for everything that determines the encoded ids."""
    canonical = json.dumps({"format": CACHE_FORMAT, **description}, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:32]


class CorpusCache:
    """A directory of ``<key>.npy`` (ids) and ``<key>.json`` (vocabulary and provenance) pairs."""

    def __init__(self, directory: Path | None = None):
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    def unusable(self) -> str | None:
        """Why this cache cannot be used at all (its place is a file, say), or None.

        The cache only saves time, so callers warn once and carry on without it
        rather than fail or retry it for every file.
        """
        for place in (self.directory, *self.directory.parents):
            if place.is_dir():
                return None
            if place.exists():
                return (f"the corpus cache {self.directory} cannot be a folder: {place} is a file; "
                        f"point {CACHE_ENV} at a folder (going on without the cache)")
        return None

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.directory / f"{key}.npy", self.directory / f"{key}.json"

    def load(self, key: str) -> tuple[np.ndarray, dict[str, Any]] | None:
        """The memory-mapped ids and metadata of ``key``, or None when there is no usable entry."""
        ids_path, meta_path = self._paths(key)
        try:
            meta = json.loads(read_utf8(meta_path))
            ids = np.load(ids_path, mmap_mode="r")
        except (OSError, ValueError, FileRefused):
            return None
        if not isinstance(meta, dict):
            return None
        if len(ids) != meta.get("chars"):
            return None
        return ids, meta

    def save(self, key: str, ids: np.ndarray, meta: dict[str, Any]) -> bool:
        """Store an entry; False (and nothing left behind) when the directory cannot be written.

        A cache that cannot be written only costs the next run its speed, so this
        never fails the run that is encoding the corpus.
        """
        ids_path, meta_path = self._paths(key)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with replacing(ids_path) as staging, open(staging, "wb") as handle:
                np.save(handle, np.ascontiguousarray(ids))
            atomic_write_text(meta_path, json.dumps({**meta, "chars": len(ids)}, ensure_ascii=False))
        except (OSError, CharlstmError):
            return False
        return True
