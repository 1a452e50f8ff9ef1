"""Models that ship inside the package, reachable by name (``-c base``, ``--init-from base``).

Light (no torch): the command line resolves names with it before loading anything. A shipped model
is an ordinary checkpoint directory (``model.safetensors`` + ``config.json``) kept as package data;
how each was trained is recorded in its config.json and in ``benchmarks/train_base.py``.
"""

from __future__ import annotations

from pathlib import Path

from .layout import CONFIG_FILE, WEIGHTS_FILE

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "shipped"
BASE_MODEL = "base"


def shipped_model(name: str | Path) -> Path | None:
    """The checkpoint directory of the shipped model called ``name``, or None if there is none such."""
    text = str(name)
    if not text or "/" in text or "\\" in text or text.startswith("."):
        return None
    found = SHIPPED_DIR / text
    return found if (found / WEIGHTS_FILE).is_file() and (found / CONFIG_FILE).is_file() else None


def shipped_names() -> list[str]:
    """Names of the models this installation ships."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(entry.name for entry in SHIPPED_DIR.iterdir() if shipped_model(entry.name) is not None)
