"""The layout of a run directory: names every layer agrees on, in a module light enough for the
command line to name without loading torch."""

from __future__ import annotations

from pathlib import Path

# Bump when a reader of the previous layout could misread a new checkpoint.
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "training_state.pt"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"  # what a finished session of the run did: steps, losses, where the time went
DEFAULT_ROOT = Path("checkpoints")
TAGS = ("best", "last")
