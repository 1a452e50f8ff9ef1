"""Why an LSTM: train RNN, GRU and LSTM cells of equal size on delayed recall and compare.

The demo measures two things per cell and distance: how often the model recalls
the key (accuracy at the marked positions, against chance), and how much gradient
from the recall position reaches back to the key (the vanishing gradient, measured).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.corpus import Corpus, Vocab, read_text
from ..data.synth import RECALL_KEYS, delayed_recall, load_positions
from ..model.config import ModelConfig
from ..model.network import CharLSTM
from ..training.config import TrainConfig
from ..training.trainer import Trainer


@dataclass
class PositionScore:
    """Loss (nats) and top-1 accuracy of a model on the marked positions of a text."""

    loss: float
    accuracy: float
    count: int


@torch.no_grad()
def score_positions(
    model: CharLSTM, vocab: Vocab, text: str, positions: Sequence[int], seq_len: int = 512
) -> PositionScore:
    """Read ``text`` as one stream and score the prediction of each character at ``positions``.

    Position p is predicted from everything before it, so its score comes from
    the logits after reading character p-1; position 0 has no prediction and is skipped.
    """
    ids = torch.from_numpy(vocab.encode(text).astype(np.int64))
    wanted = torch.tensor(sorted(p for p in positions if 0 < p < len(ids)), dtype=torch.long)
    if len(wanted) == 0:
        return PositionScore(float("nan"), float("nan"), 0)
    device = model.head.weight.device
    model.eval()
    state = model.init_state(1, device)
    losses: list[torch.Tensor] = []
    hits: list[torch.Tensor] = []
    inputs = ids[:-1]
    for start in range(0, len(inputs), seq_len):
        chunk = inputs[start : start + seq_len]
        logits, state = model(chunk.unsqueeze(0).to(device), state)
        lo, hi = torch.searchsorted(wanted, torch.tensor([start + 1, start + 1 + len(chunk)]))
        if hi > lo:
            targets = wanted[lo:hi]
            rows = logits[0, targets - 1 - start].float()
            truth = ids[targets].to(device)
            losses.append(F.cross_entropy(rows, truth, reduction="none"))
            hits.append(rows.argmax(dim=-1) == truth)
    loss = torch.cat(losses)
    return PositionScore(float(loss.mean()), float(torch.cat(hits).float().mean()), len(loss))


def recall_gradient_norm(model: CharLSTM, vocab: Vocab, distance: int, samples: int = 16, seed: int = 0) -> float:
    """Mean norm of d(loss at the recall) / d(input embedding at the key), ``distance`` steps back."""
    corpus = delayed_recall(size=(distance + 5) * samples, distance=distance, seed=seed)
    record_len = distance + 5
    model.eval()
    norms = []
    for index in range(samples):
        record = corpus.text[index * record_len : (index + 1) * record_len]
        ids = torch.from_numpy(vocab.encode(record).astype(np.int64)).unsqueeze(0).to(model.head.weight.device)
        embedded = model.embedding(ids).detach().requires_grad_(True)
        output, _ = model.rnn(embedded)
        logits = model.head(output)
        recall = record_len - 2  # position of the recalled key; predicted from the step before it
        loss = F.cross_entropy(logits[0, recall - 1 : recall], ids[0, recall : recall + 1])
        (grad,) = torch.autograd.grad(loss, embedded)
        norms.append(float(grad[0, 1].norm()))  # the key sits right after the marker
    return float(np.mean(norms))


def matched_hidden_size(cell: str, target_params: int, vocab_size: int, emb_size: int) -> int:
    """The one-layer hidden size whose parameter count comes closest to ``target_params``."""

    def count(hidden: int) -> int:
        return CharLSTM(ModelConfig(vocab_size, emb_size, hidden, 1, 0.0, cell)).num_parameters()  # type: ignore[arg-type]

    return min(range(4, 1025), key=lambda hidden: abs(count(hidden) - target_params))


@dataclass(frozen=True)
class DemoConfig:
    distances: tuple[int, ...] = (20, 50, 100, 200)
    cells: tuple[str, ...] = ("rnn", "gru", "lstm")
    seconds_per_run: float | None = 10.0
    steps_per_run: int | None = None
    lr: float = 1e-2
    reference_hidden: int = 64
    emb_size: int = 16
    corpus_chars: int = 200_000
    seed: int = 0


@dataclass
class DemoRow:
    cell: str
    distance: int
    hidden: int
    parameters: int
    accuracy: float
    key_loss: float
    chance_accuracy: float
    gradient_norm: float
    seconds: float


def train_recall_model(cell: str, hidden: int, distance: int, config: DemoConfig, work_dir: Path) -> Trainer:
    """Train one small model on delayed recall; windows hold whole records so gradients can span them."""
    corpus = delayed_recall(config.corpus_chars, distance, config.seed)
    data = Corpus.from_text(corpus.text, source=f"recall-{distance}")
    model_config = ModelConfig(len(data.vocab), config.emb_size, hidden, 1, 0.0, cell)  # type: ignore[arg-type]
    train_config = TrainConfig(
        batch_size=32,
        seq_len=2 * (distance + 5),
        time_budget=config.seconds_per_run,
        steps=config.steps_per_run,
        lr=config.lr,
        warmup_steps=20,
        evals_per_run=1,
        preview_chars=0,
        precision="fp32",
        device="cpu",
        seed=config.seed,
    )
    trainer = Trainer(data, model_config, train_config, work_dir / f"{cell}-{distance}")
    trainer.train()
    return trainer


def run_long_range_demo(config: DemoConfig, progress: Callable[[DemoRow], None] | None = None) -> list[DemoRow]:
    """Train every cell at every distance and measure recall accuracy and gradient reach."""
    vocab_size = len(Vocab.from_text(delayed_recall(200, 2).text))
    reference = CharLSTM(ModelConfig(vocab_size, config.emb_size, config.reference_hidden, 1)).num_parameters()
    rows: list[DemoRow] = []
    with tempfile.TemporaryDirectory(prefix="charlstm-demo-") as scratch:
        for distance in config.distances:
            test = delayed_recall(20_000, distance, seed=config.seed + 1)
            for cell in config.cells:
                hidden = matched_hidden_size(cell, reference, vocab_size, config.emb_size)
                started = time.perf_counter()
                trainer = train_recall_model(cell, hidden, distance, config, Path(scratch))
                score = score_positions(trainer.model, trainer.corpus.vocab, test.text, test.positions)
                row = DemoRow(
                    cell=cell,
                    distance=distance,
                    hidden=hidden,
                    parameters=trainer.model.num_parameters(),
                    accuracy=score.accuracy,
                    key_loss=score.loss,
                    chance_accuracy=1.0 / len(RECALL_KEYS),
                    gradient_norm=recall_gradient_norm(trainer.model, trainer.corpus.vocab, distance),
                    seconds=time.perf_counter() - started,
                )
                rows.append(row)
                if progress is not None:
                    progress(row)
    return rows


def position_report(model: CharLSTM, vocab: Vocab, file: Path) -> dict[str, Any]:
    """``charlstm eval --positions``: the marked positions of a synthetic corpus scored, beside the
    corpus's ideal loss (perfect memory) and its chance loss (no memory)."""
    marked, meta = load_positions(file)
    scored = score_positions(model, vocab, read_text(file), marked)
    return {"file": str(file), "kind": meta.get("kind"), "positions": scored.count, "loss": scored.loss,
            "accuracy": scored.accuracy, "ideal_loss": meta.get("ideal_loss"), "chance_loss": meta.get("chance_loss")}
