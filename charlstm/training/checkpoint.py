"""Run directories: weights, config and training state, written atomically.

Layout of ``checkpoints/<run>/``::

    last/   model.safetensors  config.json  training_state.pt   (newest step, resumable)
    best/   model.safetensors  config.json                      (lowest validation loss)
    metrics.jsonl                                                (a line per evaluation and every few steps)

A checkpoint directory is first written in full under a temporary name, each file
fsynced, and then swapped in with renames, so a crash at any moment leaves either
the old or the new checkpoint, never a mix. Weights are safetensors and the
training state is read with ``torch.load(weights_only=True)``: loading never runs
code from the file.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import warnings
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..base.errors import CheckpointError
from ..base.fsutil import FileLock, LockHeld, previous_dir, replacing_dir
from ..base.reading import FileRefused, read_bytes, read_utf8, why_not_regular
from ..base.version import __version__
from ..data.corpus import Vocab
from ..model.config import ModelConfig
from ..model.network import CharLSTM
from .layout import (
    CONFIG_FILE,
    DEFAULT_ROOT,
    FORMAT_VERSION,
    METRICS_FILE,
    STATE_FILE,
    TAGS,
    WEIGHTS_FILE,
)
from .shipped import shipped_model

# Longer names fail on common file systems (255 bytes a component) once a suffix such as ".old" is added.
MAX_RUN_NAME_BYTES = 200
LOCK_FILE = ".lock"


def check_run_name(name: str) -> str:
    """``name`` if it is one plain path component; a run name with ``/`` or ``..`` would put the run
    inside another run (``RA/last``, which a resume of RA later replaces) or outside ``--out``."""
    problem = None
    if name in ("", ".", ".."):
        problem = "is not a name"
    elif any(c in name for c in "/\\\0"):
        problem = "contains a path separator or NUL"
    elif name.startswith("."):
        problem = "starts with '.', which hides it and collides with charlstm's own staging names"
    elif len(name.encode("utf-8", "surrogatepass")) > MAX_RUN_NAME_BYTES:
        problem = f"is longer than {MAX_RUN_NAME_BYTES} bytes"
    if problem is not None:
        raise CheckpointError(f"run name {name!r} {problem}; give --name one plain folder name such as 'shakespeare-1'")
    return name


def safe_run_stem(stem: str) -> str:
    """A run-name prefix made from a corpus name: unprintable characters, undecodable bytes and separators
    become ``_``, leading dots go, and the length is capped, so a default name always passes
    :func:`check_run_name`."""
    cleaned = "".join(c if c.isprintable() and c not in "/\\" and not 0xD800 <= ord(c) <= 0xDFFF else "_" for c in stem)
    cleaned = cleaned.lstrip(".")
    while len(cleaned.encode("utf-8", "surrogatepass")) > MAX_RUN_NAME_BYTES - 32:  # room for the time stamp that follows
        cleaned = cleaned[:-1]
    return cleaned or "corpus"


def config_json(config: dict[str, Any]) -> str:
    """``config`` as the JSON text of config.json; cannot fail on a file name that is not valid UTF-8.

    Such a name reaches Python as lone surrogates (``os.fsdecode``), which UTF-8 cannot encode; written
    as ``\\udcXX`` escapes they are valid JSON and read back to the very same name.
    """
    text = json.dumps(config, indent=2, ensure_ascii=False)
    return re.sub(r"[\ud800-\udfff]", lambda match: f"\\u{ord(match.group()):04x}", text)


# metrics.jsonl gains a line every few steps: a long run's is megabytes, never gigabytes.
METRICS_LIMIT = 512 * 1024 * 1024


def write_checkpoint(
    run_dir: Path,
    tag: str,
    model: CharLSTM,
    config: dict[str, Any],
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``run_dir/tag`` in full, then swap it in; returns the checkpoint directory."""
    final = run_dir / tag
    with replacing_dir(final) as staging:
        weights = {name: tensor.detach().float().cpu().contiguous() for name, tensor in model.state_dict().items()}
        save_file(weights, str(staging / WEIGHTS_FILE), metadata={"format": "pt", "charlstm": __version__})
        (staging / CONFIG_FILE).write_text(config_json(config), encoding="utf-8")
        if training_state is not None:
            _save_state(training_state, staging / STATE_FILE)
    return final


def _save_state(state: dict[str, Any], path: Path) -> None:
    """torch.save, whose failed write is a RuntimeError from ``inline_container.cc``, as the OSError it is:
    the run writer then tells the user what is safe on disk instead of a C++ message."""
    try:
        torch.save(state, path)
    except RuntimeError as error:
        if "write" not in str(error).lower():
            raise
        try:
            space = os.statvfs(path.parent)
            full = space.f_bavail * space.f_frsize < 1024 * 1024
        except OSError:
            full = False
        code = errno.ENOSPC if full else errno.EIO
        raise OSError(code, os.strerror(code), str(path)) from None


def prepare_run_dir(run_dir: Path, new_run: bool) -> FileLock:
    """Make the run directory, prove it writable and lock it, before any training time is spent.

    A new run never writes into a directory that already holds a trained run:
    that run's checkpoints would be replaced. The returned lock keeps a second
    ``train --name`` or ``--resume`` of the same run out until it is released (or
    this process ends).
    """
    probe = run_dir / f".write-test-{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"charlstm")
        probe.unlink()
    except OSError as error:
        raise CheckpointError(f"cannot write to {run_dir} ({error.strerror or error}); choose a writable --out") from None
    lock = lock_run_dir(run_dir)  # first: a run another process trains is refused as that, not as "already trained"
    if new_run and any(_existing_tag_dir(run_dir, tag) is not None for tag in TAGS):
        lock.release()
        raise CheckpointError(
            f"{run_dir} already holds a trained run; continue it with --resume {run_dir}, or choose another --name"
        )
    return lock


def lock_run_dir(run_dir: Path) -> FileLock:
    """Hold ``run_dir``'s lock file, or refuse naming the process that trains the run now."""
    lock = FileLock(run_dir / LOCK_FILE)
    try:
        lock.acquire()
    except LockHeld as held:
        holder = f"process {held.holder}" if held.holder is not None else "another process"
        raise CheckpointError(
            f"{run_dir} is being trained by {holder}; wait for it to finish (or stop it), or choose another --name"
        ) from None
    except OSError as error:
        raise CheckpointError(f"cannot lock {run_dir / LOCK_FILE} ({error.strerror or error}); choose a writable --out") from None
    return lock


def saved_steps(run_dir: Path) -> dict[str, int]:
    """The step each checkpoint of a run holds, for messages that say what is safe on disk."""
    steps = {}
    for tag in TAGS:
        found = _existing_tag_dir(run_dir, tag)
        if found is None:
            continue
        try:
            steps[tag] = int(read_config(found)["metrics"]["step"])
        except (CheckpointError, KeyError, TypeError, ValueError):
            continue
    return steps


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / METRICS_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _metrics_record(line: str) -> dict[str, Any] | None:
    """One line of metrics.jsonl as a record with a whole-number step and finite numbers, or None:
    a line cut short by a crash, or edited by hand, costs that line, never the run's curves."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int) or isinstance(record["step"], bool):
        return None
    return {
        key: value for key, value in record.items()
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isfinite(value)
    }


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS_FILE
    if not os.path.lexists(path):
        return []
    try:
        data = read_bytes(path, METRICS_LIMIT)
    except FileRefused as refused:
        raise CheckpointError(f"{refused}; move it aside and the run's checkpoints still load") from None
    lines = data.decode("utf-8", errors="replace").splitlines()
    return [record for line in lines if (record := _metrics_record(line)) is not None]


def read_evaluations(run_dir: Path) -> list[dict[str, Any]]:
    """The metrics lines written at evaluations (those with a ``val_loss``), in order."""
    return [record for record in read_metrics(run_dir) if record.get("val_loss") is not None]


def _existing_tag_dir(run_dir: Path, tag: str) -> Path | None:
    """The tag's directory, or the one a crash mid-swap left as ``tag.old``."""
    for candidate in (run_dir / tag, previous_dir(run_dir / tag)):
        if (candidate / WEIGHTS_FILE).is_file() and (candidate / CONFIG_FILE).is_file():
            return candidate
    return None


def resolve_checkpoint(path: str | Path | None, prefer: str = "best", root: Path = DEFAULT_ROOT) -> Path:
    """Find the checkpoint directory a user means.

    ``path`` may be a checkpoint directory (holding ``model.safetensors``), a run
    directory (then ``prefer`` picks best or last), the name of a shipped model
    (``base``) where no such path exists, or None for the newest run under ``root``.
    """
    if path is None:
        path = latest_run(root)
    path = Path(path)
    if not path.exists():
        shipped = shipped_model(path)
        if shipped is not None:
            return shipped
        raise CheckpointError(f"checkpoint not found: {path}")
    if (path / WEIGHTS_FILE).exists() or (path / CONFIG_FILE).exists():
        return path
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint; give a run directory such as checkpoints/<run>")
    order = [prefer] + [t for t in TAGS if t != prefer]
    for tag in order:
        found = _existing_tag_dir(path, tag)
        if found is not None:
            return found
    raise CheckpointError(f"{path} holds no checkpoint (no best/ or last/ with {WEIGHTS_FILE}); train a model first")


def resolve_resumable(path: str | Path | None, root: Path = DEFAULT_ROOT) -> Path:
    """The ``last`` checkpoint of the run a user wants to resume (the newest run under ``root`` if None).

    Only ``last`` holds the training state, so a path to ``best`` is refused with
    a pointer to its run.
    """
    if path is None:
        try:
            path = latest_run(root)
        except CheckpointError:
            raise CheckpointError(f"no run to resume under {root}/; give its directory: --resume {root}/<run>") from None
    run_dir = Path(path)
    if not run_dir.exists():
        raise CheckpointError(f"no run to resume at {run_dir}; give a run directory such as {DEFAULT_ROOT}/<run>")
    if (run_dir / WEIGHTS_FILE).exists() or (run_dir / CONFIG_FILE).exists():
        if run_dir.name.split(".")[0] != "last":
            raise CheckpointError(
                f"{run_dir} holds no training state (only last/ does); resume the run: --resume {run_dir.parent}"
            )
        return run_dir
    found = _existing_tag_dir(run_dir, "last") if run_dir.is_dir() else None
    if found is None:
        raise CheckpointError(f"{run_dir} holds no last/ checkpoint to resume from; give a run directory such as checkpoints/<run>")
    return found


def latest_run(root: Path = DEFAULT_ROOT) -> Path:
    """The run under ``root`` whose checkpoint was written most recently."""
    runs = []
    if root.is_dir():
        for run in root.iterdir():
            stamps = [
                (found / CONFIG_FILE).stat().st_mtime
                for tag in TAGS
                if (found := _existing_tag_dir(run, tag)) is not None
            ]
            if stamps:
                runs.append((max(stamps), run))
    if not runs:
        raise CheckpointError(f"no trained runs under {root}/; run 'charlstm train' first or pass -c CHECKPOINT")
    return max(runs)[1]


@dataclass
class LoadedModel:
    """A model ready to use, with everything its checkpoint said about it."""

    model: CharLSTM
    vocab: Vocab
    config: dict[str, Any]
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    @property
    def name(self) -> str:
        return self.run_dir.name


def read_config(checkpoint_dir: Path) -> dict[str, Any]:
    path = checkpoint_dir / CONFIG_FILE
    if not os.path.lexists(path):
        raise CheckpointError(f"{checkpoint_dir} has no {CONFIG_FILE}; it is not a complete checkpoint")
    try:
        config = json.loads(read_utf8(path))
    except FileRefused as refused:
        raise CheckpointError(f"{refused}; the checkpoint is damaged: train again or restore it") from None
    except ValueError as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); the checkpoint is damaged") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a checkpoint config (expected a JSON object)")
    version = config.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{path} lacks a format_version; it is not a charlstm checkpoint")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses checkpoint format {version}, newer than this charlstm ({__version__}) reads "
            f"(format {FORMAT_VERSION}); upgrade charlstm"
        )
    for key in ("model", "vocab"):
        if key not in config:
            raise CheckpointError(f"{path} lacks the {key!r} field; the checkpoint is damaged")
    problem = _section_problem(config)
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}; the checkpoint is damaged: train again or restore it")
    return config


# Settings read outside the model section, and the JSON types every reader of a config expects.
_SECTION_TYPES: dict[str, type | tuple[type, ...]] = {"model": dict, "train": dict, "corpus": dict, "metrics": dict,
                                                      "vocab": list, "precision": str}
_TRAIN_TYPES: dict[str, type | tuple[type, ...]] = {"batch_size": int, "seq_len": int, "val_frac": (int, float)}


def _section_problem(config: dict[str, Any]) -> str | None:
    """What in a config has the wrong JSON type, named, so no reader fails on it somewhere inside."""
    def wrong(value: Any, expected: type | tuple[type, ...]) -> bool:
        return not isinstance(value, expected) or isinstance(value, bool)

    for key, expected in _SECTION_TYPES.items():
        if key in config and wrong(config[key], expected):
            return f"{key!r} is {type(config[key]).__name__}, not {getattr(expected, '__name__', 'a number')}"
    if not all(isinstance(char, str) for char in config["vocab"]):
        return "'vocab' holds something other than characters"
    for key, expected in _TRAIN_TYPES.items():
        value = config.get("train", {}).get(key)
        if value is not None and wrong(value, expected):
            return f"train.{key} is {value!r}, not a number"
    for key, value in config.get("metrics", {}).items():
        if value is not None and wrong(value, (int, float)) and not isinstance(value, str):
            return f"metrics.{key} is {type(value).__name__}, not a number"
    return None


def _check_types(settings: Any) -> None:
    """Name a setting of the wrong JSON type, rather than let a comparison fail somewhere inside."""
    if not isinstance(settings, dict):
        raise TypeError(f"model settings must be an object, not {type(settings).__name__}")
    for spec in fields(ModelConfig):
        value = settings.get(spec.name)
        expected = type(spec.default) if spec.default is not MISSING else int
        allowed = (int, float) if expected is float else (expected,)
        if spec.name in settings and (not isinstance(value, allowed) or isinstance(value, bool)):
            raise TypeError(f"{spec.name} is {value!r} (expected {expected.__name__})")


def load(path: str | Path | None = None, device: str | torch.device = "cpu", prefer: str = "best") -> LoadedModel:
    """Load a model for inference from a run or checkpoint directory (newest run if None)."""
    checkpoint_dir = resolve_checkpoint(path, prefer)
    config = read_config(checkpoint_dir)
    try:
        vocab = Vocab(config["vocab"])
        _check_types(config["model"])
        model_config = ModelConfig.from_dict(config["model"])
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{checkpoint_dir / CONFIG_FILE} has invalid settings: {error}") from None
    if model_config.vocab_size != len(vocab):
        raise CheckpointError(
            f"{checkpoint_dir / CONFIG_FILE}: vocab_size {model_config.vocab_size} does not match "
            f"the {len(vocab)} characters stored; the checkpoint is damaged"
        )
    weights_path = checkpoint_dir / WEIGHTS_FILE
    _check_shapes(weights_path, model_config)
    try:
        weights = load_file(str(weights_path), device="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"{checkpoint_dir} has no {WEIGHTS_FILE}") from None
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{weights_path} cannot be read ({error}); the file is damaged") from None
    broken = [name for name, tensor in weights.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:
        raise CheckpointError(
            f"{weights_path} holds NaN or infinite weights ({', '.join(broken[:3])}); "
            "use the run's other checkpoint (--which) or train again"
        )
    model = CharLSTM(model_config)
    expected = model.state_dict()
    model.load_state_dict({name: weights[name].to(expected[name].dtype) for name in expected})
    model.to(device).eval()
    return LoadedModel(model=model, vocab=vocab, config=config, path=checkpoint_dir)


def _header_shapes(weights_path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from the safetensors header alone: nothing of the weights is read."""
    why = why_not_regular(weights_path)
    if why is not None:
        raise CheckpointError(f"{weights_path} {why}; the checkpoint is damaged")
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{weights_path} cannot be read ({error}); the file is damaged") from None


def _check_shapes(weights_path: Path, model_config: ModelConfig) -> None:
    """Refuse a config that disagrees with its weights before a model of its size is built.

    A hand-edited config (hidden_size 10**9, num_layers 10**6) would otherwise allocate
    without bound; the shapes in the header are what the file can really hold.
    """
    stored = _header_shapes(weights_path)
    if model_config.num_layers > len(stored):
        raise CheckpointError(
            f"{weights_path.parent / CONFIG_FILE} says num_layers {model_config.num_layers}, but {weights_path.name} "
            f"holds only {len(stored)} tensors; the config does not belong to these weights"
        )
    try:
        with torch.device("meta"):
            expected = {name: tuple(tensor.shape) for name, tensor in CharLSTM(model_config).state_dict().items()}
    except (RuntimeError, ValueError, OverflowError) as error:  # sizes past what torch can even describe
        raise CheckpointError(
            f"{weights_path.parent / CONFIG_FILE} describes a model that does not match {weights_path.name} "
            f"({str(error).splitlines()[0][:120]}); the config does not belong to these weights"
        ) from None
    problems = [f"{name} {stored[name]} != {shape}" for name, shape in expected.items() if name in stored and stored[name] != shape]
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if problems or missing or unexpected:
        detail = "; ".join(problems + [f"missing {m}" for m in missing] + [f"unexpected {u}" for u in unexpected])
        raise CheckpointError(f"{weights_path} does not match its config ({detail[:200]})")


def load_training_state(checkpoint_dir: Path) -> dict[str, Any]:
    """The optimizer, RNG and data-cursor state saved with ``last``; never unpickles code."""
    path = checkpoint_dir / STATE_FILE
    if not path.exists():
        raise CheckpointError(f"{checkpoint_dir} has no {STATE_FILE}; resume from the run's last/ checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol warnings would add lines to a one-line error
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for damaged or hostile files
        refusal = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
        if refusal:  # the safe unpickler met something other than tensors and plain values
            raise CheckpointError(
                f"{path} was refused: it is not a plain training state ({refusal.group(1).strip()[:120]}); "
                "nothing in it was run; the file is damaged or not charlstm's"
            ) from None
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} cannot be read ({first_line[:160]}); the file is damaged") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a training state")
    return state
