"""Starting a run from a trained model: the grown vocabulary, the grown model, and its lineage.

A fine-tuning run is a new run whose weights start from a parent's (a run, a checkpoint or a shipped
model). Its vocabulary is the parent's followed by the characters of the new corpus the parent
lacks, so every old id keeps its meaning; the embedding and the output layer grow by one row per new
character. Those rows start where they disturb the parent least (benchmarks/RESULTS.md measures the
choice): the new embedding rows are the mean of the old ones, so the network reads a new character
as "some character"; the new output rows have zero weights and the lowest bias the parent gives any
character, so each new character starts as likely as the parent's rarest one in every context, and
the old characters keep their relative odds.

The shape comes from the parent; options that would change it are refused, saying what differs.
Everything else is a new run: fresh optimiser, its own budget, schedule and run directory, and a
``parent`` record in config.json (what it started from and the SHA-256 of those weights) that
``charlstm info`` shows and a resume carries on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..base.errors import CharlstmError, CheckpointError
from ..data.corpus import Corpus, Vocab
from ..model.config import ModelConfig
from ..model.network import CharLSTM
from .checkpoint import LoadedModel, load, read_config, resolve_checkpoint
from .config import TrainConfig
from .layout import CONFIG_FILE, FORMAT_VERSION, WEIGHTS_FILE
from .presets import DEFAULT_TIME_BUDGET, PRESETS
from .shipped import shipped_model
from .sizing import RunChoices, given

# Fine-tuning defaults, from the sweep in benchmarks/RESULTS.md ("Fine-tuning"): on a short run the
# small preset's peak rate beat 1e-3, 2e-3 and 1.2e-2 on English and 2e-3 on CJK (whose thousands of
# new rows start from nothing); a parent's weights need a shorter warmup than a fresh run's 50 steps.
FINETUNE_LR = 6e-3
FINETUNE_WARMUP_STEPS = 20

# How new embedding and output rows start (benchmarks/finetune.py compares them):
# "quiet": mean embedding row, zero output weights, the parent's lowest output bias (the default);
# "mean": mean embedding row, mean output row and bias (a new character as likely as an average one);
# "random": the rows a fresh model would draw (what a naive resize does).
RowInit = Literal["quiet", "mean", "random"]
ROW_INITS: tuple[RowInit, ...] = ("quiet", "mean", "random")

# ModelConfig fields that make the shape; dropout is not one: a fine-tuning run may change it.
SHAPE_FIELDS = ("emb_size", "hidden_size", "num_layers", "cell")
_OPTION_NAMES = {"emb_size": "--emb", "hidden_size": "--hidden", "num_layers": "--layers", "cell": "--cell"}


@dataclass
class FineTunePlan:
    """A fine-tuning run's starting point, checked, before anything is written."""

    corpus: Corpus  # encoded with the grown vocabulary
    model_config: ModelConfig
    model_state: dict[str, torch.Tensor]
    parent: dict[str, Any]  # what config.json records as "parent"
    parent_train: dict[str, Any] = field(default_factory=dict)  # the parent's recorded training settings
    new_chars: list[str] = field(default_factory=list)


def weights_sha256(checkpoint_dir: Path) -> str:
    """SHA-256 of a checkpoint's weights file, as bytes on disk: what a parent record pins."""
    digest = hashlib.sha256()
    with open(checkpoint_dir / WEIGHTS_FILE, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_parent(reference: str | Path) -> tuple[Path, dict[str, Any]]:
    """The checkpoint directory ``--init-from`` names, and how config.json will name it.

    A path that exists wins over a shipped model's name; a run directory gives its best checkpoint.
    """
    path = Path(reference)
    if not path.exists() and shipped_model(path) is not None:
        return shipped_model(path), {"base": str(reference)}  # type: ignore[return-value]
    if not path.exists():
        raise CheckpointError(
            f"--init-from {reference}: no such run, checkpoint or shipped model; give a run directory such as "
            "checkpoints/<run>, a checkpoint directory, or 'base'"
        )
    try:
        checkpoint_dir = resolve_checkpoint(path, prefer="best")
    except CheckpointError as error:
        raise CheckpointError(f"--init-from {reference}: {error}") from None
    return checkpoint_dir, {"path": str(checkpoint_dir.resolve())}


def load_parent(reference: str | Path) -> tuple[LoadedModel, dict[str, Any]]:
    """The parent model, loaded and checked, and its lineage record (without what the child adds)."""
    checkpoint_dir, named = resolve_parent(reference)
    try:
        config = read_config(checkpoint_dir)
        if config["format_version"] != FORMAT_VERSION:
            raise CheckpointError(
                f"{checkpoint_dir / CONFIG_FILE} uses checkpoint format {config['format_version']}, and this charlstm "
                f"starts fine-tuning only from format {FORMAT_VERSION}"
            )
        loaded = load(checkpoint_dir)
    except CheckpointError as error:
        raise CheckpointError(f"cannot start from --init-from {reference}: {error}") from None
    metrics = config.get("metrics") if isinstance(config.get("metrics"), dict) else {}
    lineage = {
        **named,
        "weights_sha256": weights_sha256(checkpoint_dir),
        "step": metrics.get("step"),
        "best_val_loss": metrics.get("best_val_loss"),
        "vocab_size": len(loaded.vocab),
    }
    if isinstance(config.get("parent"), dict):
        lineage["parent"] = config["parent"]  # the chain, so info can show where the parent came from
    return loaded, lineage


def shape_differences(requested: dict[str, Any], parent: ModelConfig) -> list[str]:
    """What the user asked for that the parent's shape contradicts, as ``--hidden 512 (the parent has 224)``."""
    recorded = parent.to_dict()
    return [
        f"{_OPTION_NAMES.get(name, name)} {value} (the parent has {recorded[name]})"
        for name, value in requested.items() if name in SHAPE_FIELDS and recorded[name] != value
    ]


def grow_state(model: CharLSTM, vocab_size: int, init: RowInit = "quiet", seed: int = 0) -> dict[str, torch.Tensor]:
    """``model``'s weights with the embedding and output layer grown to ``vocab_size`` rows."""
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    old = model.config.vocab_size
    added = vocab_size - old
    if added <= 0:
        return state
    embedding, head_weight, head_bias = state["embedding.weight"], state["head.weight"], state["head.bias"]
    if init == "random":
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            fresh = CharLSTM(replace(model.config, vocab_size=added))  # the rows a fresh model of that size draws
        new_embedding, new_weight, new_bias = fresh.embedding.weight.detach(), fresh.head.weight.detach(), fresh.head.bias.detach()
    else:
        new_embedding = embedding.mean(dim=0, keepdim=True).expand(added, -1)
        if init == "quiet":
            new_weight = torch.zeros(added, head_weight.shape[1])
            new_bias = head_bias.min().expand(added)
        else:
            new_weight = head_weight.mean(dim=0, keepdim=True).expand(added, -1)
            new_bias = head_bias.mean().expand(added)
    state["embedding.weight"] = torch.cat([embedding, new_embedding.to(embedding.dtype)])
    state["head.weight"] = torch.cat([head_weight, new_weight.to(head_weight.dtype)])
    state["head.bias"] = torch.cat([head_bias, new_bias.to(head_bias.dtype)])
    return state


def grow_corpus(corpus: Corpus, vocab: Vocab) -> Corpus:
    """``corpus`` re-encoded with ``vocab`` (which holds all its characters), by one table lookup per id:
    the text, its checksum and how it was read stay the same."""
    table = np.array([vocab.index(char) for char in corpus.vocab.chars], dtype=np.int64)
    ids = table[np.asarray(corpus.ids, dtype=np.int64)].astype(vocab.dtype)
    return Corpus(corpus.source, vocab, ids, corpus.sha256, list(corpus.files), dict(corpus.loading))


def plan_finetune(
    reference: str | Path, corpus: Corpus, model_changes: dict[str, Any] | None = None, init: RowInit = "quiet",
) -> FineTunePlan:
    """Check and assemble a run that starts from ``reference`` and trains on ``corpus``.

    ``model_changes`` holds the ModelConfig fields the user gave; shape fields that disagree with the
    parent are refused, ``dropout`` replaces the parent's.
    """
    loaded, lineage = load_parent(reference)
    changes = dict(model_changes or {})
    refused = shape_differences(changes, loaded.model.config)
    if refused:
        raise CharlstmError(
            f"--init-from {reference} fixes the model's shape, and {'; '.join(refused)} differs; leave these options "
            "out (a fine-tuning run takes its parent's shape), or train a new model without --init-from"
        )
    vocab = loaded.vocab.grown(corpus.vocab)
    new_chars = vocab.chars[len(loaded.vocab):]
    model_config = replace(loaded.model.config, vocab_size=len(vocab),
                           dropout=given(changes.get("dropout"), loaded.model.config.dropout))
    lineage["new_chars"] = len(new_chars)
    return FineTunePlan(
        corpus=grow_corpus(corpus, vocab),
        model_config=model_config,
        model_state=grow_state(loaded.model, len(vocab), init),
        parent=lineage,
        parent_train=loaded.config.get("train", {}),
        new_chars=new_chars,
    )


def finetune_train_config(choices: RunChoices, plan: FineTunePlan) -> TrainConfig:
    """How a fine-tuning run trains: the budget, evaluation and device the user chose; the parent's
    batch shape unless given; the fine-tuning learning rate and warmup unless ``--lr`` is given."""
    recorded = plan.parent_train
    preset = PRESETS["small"]
    time_budget = choices.time_budget
    if choices.steps is None and choices.epochs is None and time_budget is None:
        time_budget = DEFAULT_TIME_BUDGET
    return TrainConfig(
        batch_size=given(choices.batch_size, recorded.get("batch_size", preset.batch_size)),
        seq_len=given(choices.seq_len, recorded.get("seq_len", preset.seq_len)),
        steps=choices.steps, epochs=choices.epochs, time_budget=time_budget,
        lr=given(choices.lr, FINETUNE_LR), warmup_steps=FINETUNE_WARMUP_STEPS,
        eval_every=choices.eval_every, val_frac=choices.val_frac, seed=choices.seed, device=choices.device,
        precision=choices.precision, on_nan=choices.on_nan,
    )
