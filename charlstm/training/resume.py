"""Continuing a run exactly where it stopped.

A resumed run is rebuilt from its ``last`` checkpoint: the weights, the recorded
model and training settings, and the training state (optimiser, RNG, data
cursor, hidden state, counters, best loss so far). Options given again may
extend the budget or change what leaves that state meaningful (learning rate,
evaluation interval, device, precision, NaN policy); anything that would not
(model shape, batch shape, validation split, seed, a corpus with characters the
model lacks) is refused with a message that says exactly what differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..base.errors import CharlstmError, CheckpointError, CorpusError, name_chars
from ..base.runtime import ThreadGovernor
from ..data.cache import CorpusCache
from ..data.corpus import Corpus, TextOptions, Vocab
from ..data.sources import load_corpus
from ..model.config import ModelConfig
from .checkpoint import (
    CONFIG_FILE,
    DEFAULT_ROOT,
    load,
    load_training_state,
    resolve_resumable,
)
from .config import TrainConfig
from .distributed import DistributedContext
from .reporting import TrainReporter
from .trainer import Preview, Trainer

BUDGET_SETTINGS = ("steps", "epochs", "time_budget")
ADJUSTABLE_SETTINGS = ("lr", "eval_every", "device", "precision", "on_nan")
# Changing these would make the saved data cursor, hidden state or split meaningless.
FIXED_SETTINGS = ("batch_size", "seq_len", "val_frac", "seed")


@dataclass
class ResumePlan:
    """Everything needed to rebuild a run's Trainer, checked, before any training starts."""

    checkpoint_dir: Path
    corpus: Corpus
    model_config: ModelConfig
    train_config: TrainConfig
    model_state: dict[str, torch.Tensor]
    training_state: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    parent: dict[str, Any] | None = None  # a fine-tuning run's lineage, carried into every checkpoint it writes

    @property
    def run_dir(self) -> Path:
        return self.checkpoint_dir.parent

    def trainer(
        self, reporter: TrainReporter | None = None, distributed: DistributedContext | None = None,
        preview: Preview | None = None, threads: ThreadGovernor | None = None,
    ) -> Trainer:
        """The run's Trainer, positioned at its last step; refuses a run whose budget is spent.

        With ``distributed`` (from torchrun) it is one rank of a data-parallel continuation, on any
        number of ranks that divides the batch: every rank reads the same ``last`` checkpoint and takes
        its own rows of the saved whole-batch hidden state.
        """
        trainer = Trainer(
            self.corpus,
            self.model_config,
            self.train_config,
            self.run_dir,
            reporter,
            resume_state=self.training_state,
            model_state=self.model_state,
            distributed=distributed,
            preview=preview,
            threads=threads,
            parent=self.parent,
        )
        if trainer.progress() >= 1.0:
            budget = ", ".join(
                f"{name} {value:g}" for name in BUDGET_SETTINGS if (value := getattr(self.train_config, name)) is not None
            )
            raise CharlstmError(
                f"{self.run_dir} has used its whole budget ({budget}) at step {trainer.step}; "
                "give a larger --steps, --epochs or --time (totals for the run) to train it further"
            )
        return trainer


def _differences(requested: dict[str, Any], recorded: dict[str, Any]) -> list[str]:
    return [f"{name} {value} (the run has {recorded.get(name)})" for name, value in requested.items() if recorded.get(name) != value]


def plan_resume(
    run: str | Path | None = None,
    root: Path = DEFAULT_ROOT,
    corpus_sources: Sequence[str | Path] | None = None,
    text_options: TextOptions | None = None,
    separator: str | None = None,
    model_changes: dict[str, Any] | None = None,
    train_changes: dict[str, Any] | None = None,
) -> ResumePlan:
    """Check and assemble the continuation of ``run`` (the newest run under ``root`` when None).

    ``corpus_sources`` (files, folders, patterns) replace the run's own corpus;
    ``text_options`` and ``separator`` how it is read. ``model_changes`` and
    ``train_changes`` hold only the settings the user gave again (ModelConfig
    and TrainConfig field names). Budget settings, when any is
    given, replace the run's whole budget and count from the run's start.
    """
    checkpoint_dir = resolve_resumable(run, root)
    run_dir = checkpoint_dir.parent
    loaded = load(checkpoint_dir)
    training_state = load_training_state(checkpoint_dir)
    recorded_train = loaded.config.get("train")
    try:
        if not isinstance(recorded_train, dict):
            raise TypeError("no 'train' object")
        TrainConfig.from_dict(recorded_train)
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"{checkpoint_dir / CONFIG_FILE} lacks valid training settings ({error}); the run cannot be resumed"
        ) from None
    train_changes = dict(train_changes or {})
    unknown = set(train_changes) - {*BUDGET_SETTINGS, *ADJUSTABLE_SETTINGS, *FIXED_SETTINGS}
    if unknown:
        raise ValueError(f"settings a resumed run cannot take: {', '.join(sorted(unknown))}")
    refused = _differences(model_changes or {}, loaded.model.config.to_dict()) + _differences(
        {name: value for name, value in train_changes.items() if name in FIXED_SETTINGS}, recorded_train
    )
    if refused:
        raise CharlstmError(
            f"cannot resume {run_dir} with different settings: {'; '.join(refused)}; "
            "leave these options out to continue it, or start a new run"
        )
    settings = dict(recorded_train)
    if any(name in train_changes for name in BUDGET_SETTINGS):
        settings.update({name: train_changes.get(name) for name in BUDGET_SETTINGS})
    settings.update({name: value for name, value in train_changes.items() if name in ADJUSTABLE_SETTINGS})
    corpus, warnings = _resume_corpus(loaded.config, loaded.vocab, run_dir, corpus_sources, text_options, separator)
    if warnings:
        training_state = {**training_state, "window": 0}
    return ResumePlan(
        checkpoint_dir=checkpoint_dir,
        corpus=corpus,
        model_config=loaded.model.config,
        train_config=TrainConfig.from_dict(settings),
        model_state=loaded.model.state_dict(),
        training_state=training_state,
        warnings=warnings,
        parent=loaded.config["parent"] if isinstance(loaded.config.get("parent"), dict) else None,
    )


def _resume_corpus(
    config: dict[str, Any],
    vocab: Vocab,
    run_dir: Path,
    sources: Sequence[str | Path] | None,
    text_options: TextOptions | None,
    separator: str | None,
) -> tuple[Corpus, list[str]]:
    """The run's own corpus, read as it was (and checked unchanged by its sha256), or the one given if the model can read it."""
    recorded = config.get("corpus") if isinstance(config.get("corpus"), dict) else {}
    loading = recorded.get("loading") if isinstance(recorded.get("loading"), dict) else None
    named = sources is not None
    if sources is None:
        if loading is None:
            raise CorpusError(f"{run_dir} does not record how its corpus was read; give it: charlstm train CORPUS --resume {run_dir}")
        sources = loading.get("files")  # None: the built-in default corpus
        gone = [path for path in sources or [] if not Path(path).is_file()]
        if gone:
            raise CorpusError(
                f"the corpus {run_dir} was trained on ({gone[0]}) is not there any more; give its path: "
                f"charlstm train CORPUS --resume {run_dir}"
            )
    loading = loading or {}
    try:
        options = text_options or TextOptions(**loading.get("options", {}))
    except TypeError:
        options = TextOptions()
    corpus = load_corpus(
        list(sources) if sources else None,
        options,
        separator=separator if separator is not None else str(loading.get("separator", "\n")),
        min_char_count=int(loading.get("min_char_count", 1)),
        cache=CorpusCache(),
    ).corpus
    if corpus.vocab != vocab:
        new_chars = sorted(set(corpus.vocab.chars) - set(vocab.chars))
        if new_chars:
            raise CorpusError(
                f"{corpus.source} has {len(new_chars)} character(s) the run's vocabulary lacks: {name_chars(new_chars)}; "
                "a trained model cannot learn new characters: resume on the run's own corpus, or start a new run"
            )
        loading_record = corpus.loading
        corpus = Corpus.from_text(corpus.vocab.decode(corpus.ids), corpus.source, vocab=vocab, sha256=corpus.sha256, files=corpus.files)
        corpus.loading = loading_record
    if corpus.sha256 == recorded.get("sha256"):
        return corpus, []
    if not named:
        raise CorpusError(
            f"{corpus.source} has changed since {run_dir} was trained on it (sha256 {str(recorded.get('sha256'))[:12]} "
            f"then, {corpus.sha256[:12]} now); to continue on the changed text anyway, name it: "
            f"charlstm train {corpus.source} --resume {run_dir}"
        )
    return corpus, [
        f"{corpus.source} is not the text {run_dir} was trained on; reading starts at its beginning, "
        "so the result will differ from an uninterrupted run"
    ]
