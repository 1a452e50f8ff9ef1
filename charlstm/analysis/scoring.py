"""What a trained model makes of a text: its loss over a whole file, its surprise at each character,
and what a run directory says about how it was trained.

Nothing here draws or prints; ``views.py`` turns these results into pictures. Characters the
model never saw are never fed to it: they are left out, counted, and reported.
"""

from __future__ import annotations

import math
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..base.errors import CharlstmError, CorpusError
from ..base.runtime import LN2
from ..data.corpus import Vocab, validation_cut
from ..generation.generator import Generator
from ..model.network import CharLSTM, State
from ..training.checkpoint import (
    CONFIG_FILE,
    LoadedModel,
    read_config,
    read_metrics,
    resolve_checkpoint,
)
from ..training.evaluation import eval_streams, evaluation_totals

Split = Literal["all", "train", "val"]

# Long texts are read in pieces of this many steps, carrying the state, so the logits of a
# megabyte of text never sit in memory at once.
CHUNK = 4096


def split_text(text: str, val_frac: float, part: Split) -> str:
    """The part of ``text`` that a run with ``val_frac`` trained or validated on (the same cut as
    :meth:`Corpus.split`, through :func:`validation_cut`)."""
    if part == "all":
        return text
    cut = validation_cut(len(text), val_frac)
    return text[:cut] if part == "train" else text[cut:]


@dataclass
class EvalResult:
    """A model's loss on one text. ``loss`` is mean cross-entropy in nats per scored character."""

    loss: float
    scored_chars: int
    text_chars: int
    unknown: dict[str, int]
    seconds: float
    streams: int
    seq_len: int
    precision: str
    checkpoint: str

    @property
    def bpc(self) -> float:
        return self.loss / LN2

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def unknown_count(self) -> int:
        return sum(self.unknown.values())

    @property
    def chars_per_sec(self) -> float:
        return self.scored_chars / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "loss": self.loss,
            "bpc": self.bpc,
            "perplexity": self.perplexity,
            "scored_chars": self.scored_chars,
            "text_chars": self.text_chars,
            "unknown_chars": self.unknown_count,
            "unknown": self.unknown,
            "streams": self.streams,
            "seq_len": self.seq_len,
            "precision": self.precision,
            "seconds": self.seconds,
            "chars_per_sec": self.chars_per_sec,
        }


def known_ids(vocab: Vocab, text: str) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Ids of the characters the model knows, a mask of which characters of ``text`` those are,
    and how often each unknown character occurs."""
    unknown = vocab.unknown_counts(text)
    ids = vocab.encode(text, unknown="skip")
    known = np.fromiter((c not in unknown for c in text), dtype=bool, count=len(text)) if unknown else np.ones(len(text), bool)
    return ids, known, unknown


def evaluate_text(
    loaded: LoadedModel,
    text: str,
    streams: int | None = None,
    seq_len: int | None = None,
    precision: str | None = None,
) -> EvalResult:
    """Loss of ``loaded``'s model on ``text``, read as the trainer reads its validation split.

    By default the text is cut into as many parallel streams as the run's training batch, each
    read statefully window by window: the trainer's own evaluation, so ``eval`` on the validation
    split gives the number the run recorded. ``streams=1`` reads the text as one unbroken stream.
    ``precision`` defaults to the one the run evaluated with (bf16 autocast or fp32).
    """
    train = loaded.config.get("train", {})
    streams = streams or int(train.get("batch_size", 1))
    seq_len = seq_len or int(train.get("seq_len", 128))
    ids, _, unknown = known_ids(loaded.vocab, text)
    if len(ids) < 2:
        raise CorpusError(
            f"the text has {len(ids)} character(s) the model knows; evaluation needs at least 2"
            + (f" ({sum(unknown.values())} were outside its vocabulary)" if unknown else "")
        )
    device = loaded.model.head.weight.device
    start = time.perf_counter()
    precision = precision or str(loaded.config.get("precision", "fp32"))
    total, count = evaluation_totals(loaded.model, ids, streams, seq_len, device, precision)
    seconds = time.perf_counter() - start
    return EvalResult(
        loss=total / count,
        scored_chars=count,
        text_chars=len(text),
        unknown=unknown,
        seconds=seconds,
        streams=eval_streams(len(ids), streams, seq_len),
        seq_len=seq_len,
        precision=precision,
        checkpoint=str(loaded.path),
    )


@dataclass(frozen=True)
class Span:
    """A run of non-space characters (a word, roughly) and the bits the model spent on it."""

    start: int
    end: int
    text: str
    bits: float
    peak_bits: float
    line: int
    column: int


@dataclass
class Surprisal:
    """Per-character surprisal, −log2 p(char | everything before it), in bits.

    ``bits`` is NaN at characters outside the vocabulary: the model was never asked about them.
    """

    text: str
    bits: np.ndarray
    unknown: dict[str, int] = field(default_factory=dict)

    @property
    def scored(self) -> np.ndarray:
        return self.bits[~np.isnan(self.bits)]

    @property
    def mean_bits(self) -> float:
        scored = self.scored
        return float(scored.mean()) if len(scored) else float("nan")

    @property
    def total_bits(self) -> float:
        return float(self.scored.sum())

    def spans(self, count: int = 5) -> list[Span]:
        """The ``count`` words that cost the most bits, in order of cost.

        A word's cost is the sum over its characters: the bits an ideal coder would spend on it
        under this model, which is what makes a typo or an odd name stand out.
        """
        found: list[Span] = []
        line, line_start = 1, 0
        start: int | None = None
        for index, char in enumerate(self.text + " "):
            if char.isspace():
                if start is not None:
                    bits = self.bits[start:index]
                    scored = bits[~np.isnan(bits)]
                    if len(scored):
                        found.append(Span(start, index, self.text[start:index], float(scored.sum()),
                                          float(scored.max()), line, start - line_start + 1))
                    start = None
                if char == "\n":
                    line, line_start = line + 1, index + 1
            elif start is None:
                start = index
        return sorted(found, key=lambda span: -span.bits)[:count]


@torch.no_grad()
def read_rows(model: CharLSTM, rows: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Read rows of ids (B, T) in chunks that carry the state, from ``state`` (zeros if None).

    Returns log p(rows[:, t+1] | rows[:, :t+1]) for every t (B, T-1), in nats, and the
    log-probability of the least likely character after each step (B, T): what a character the
    model never saw is charged when a line is ranked (it cannot be likelier than the least likely
    one the model knows). Rows are independent, so a row padded at its end scores its own
    characters exactly as it would alone.
    """
    rows = rows.to(model.head.weight.device)
    targets, least, was_training = [], [], model.training
    model.eval()
    for begin in range(0, rows.shape[1], CHUNK):
        window = rows[:, begin : begin + CHUNK + 1]
        logits, state = model(window[:, :CHUNK], state)
        log_probs = F.log_softmax(logits.float(), dim=-1)
        least.append(log_probs.amin(dim=-1))
        if window.shape[1] > 1:
            targets.append(log_probs[:, : window.shape[1] - 1].gather(2, window[:, 1:].unsqueeze(2)).squeeze(2))
    model.train(was_training)
    batch = rows.shape[0]
    return (torch.cat(targets, dim=1) if targets else torch.zeros(batch, 0),
            torch.cat(least, dim=1) if least else torch.zeros(batch, 0))


def next_char_log_probs(model: CharLSTM, ids: np.ndarray) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for every t, in nats: one stream, read in chunks that carry the state."""
    if len(ids) < 2:
        return torch.zeros(0)
    return read_rows(model, torch.from_numpy(ids.astype(np.int64)).unsqueeze(0))[0][0]


def lead_in_state(loaded: LoadedModel, batch: int = 1) -> tuple[State, int]:
    """The state after all but the last character of the lead-in that sampling starts from, for
    ``batch`` rows, and that last character's id: a row that starts with it scores its next
    character as the first one of a fresh text."""
    lead_in = loaded.vocab.encode(Generator(loaded.model, loaded.vocab).lead_in)
    model = loaded.model
    state = model.init_state(1)
    if len(lead_in) > 1:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            _, state = model(torch.from_numpy(lead_in[:-1].astype(np.int64)).unsqueeze(0).to(model.head.weight.device), state)
        model.train(was_training)
    return tuple(s.expand(-1, batch, -1).contiguous() for s in state), int(lead_in[-1])


def surprisal(loaded: LoadedModel, text: str) -> Surprisal:
    """How surprised the model is by each character of ``text``.

    The model first reads its lead-in (two newlines when it knows one), as it does before
    sampling, so the first character of ``text`` is scored too.
    """
    if not text:
        raise CharlstmError("there is no text to score; give some text or -f FILE")
    ids, known, unknown = known_ids(loaded.vocab, text)
    if len(ids) == 0:
        raise CharlstmError("none of the text's characters is in the model's vocabulary; nothing to score")
    lead_in = loaded.vocab.encode(Generator(loaded.model, loaded.vocab).lead_in)
    log_probs = next_char_log_probs(loaded.model, np.concatenate([lead_in, ids]))[len(lead_in) - 1 :]
    bits = np.full(len(text), np.nan)
    bits[known] = (-log_probs / LN2).cpu().numpy()
    return Surprisal(text=text, bits=bits, unknown=unknown)


@dataclass
class VocabProfile:
    """What kinds of characters a vocabulary holds, so a user can tell a clean corpus from a messy one."""

    size: int
    letters: int
    digits: int
    punctuation: int
    symbols: int
    whitespace: int
    control: int
    other: int
    non_ascii: int


def profile_vocab(chars: list[str]) -> VocabProfile:
    counts = dict(letters=0, digits=0, punctuation=0, symbols=0, whitespace=0, control=0, other=0)
    for char in chars:
        category = unicodedata.category(char)
        if char.isspace():
            counts["whitespace"] += 1
        elif category.startswith("L"):
            counts["letters"] += 1
        elif category.startswith("N"):
            counts["digits"] += 1
        elif category.startswith("P"):
            counts["punctuation"] += 1
        elif category.startswith("S"):
            counts["symbols"] += 1
        elif category.startswith("C"):
            counts["control"] += 1
        else:
            counts["other"] += 1
    return VocabProfile(size=len(chars), non_ascii=sum(ord(c) > 127 for c in chars), **counts)


@dataclass
class RunSummary:
    """A run as its checkpoint and metrics.jsonl describe it; read without loading any weights."""

    checkpoint: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    vocab: list[str]
    profile: VocabProfile

    @property
    def metrics(self) -> dict[str, Any]:
        return self.config.get("metrics", {})

    @property
    def evaluations(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("val_loss") is not None]


def summarize_run(path: str | Path | None, prefer: str = "best") -> RunSummary:
    """What ``charlstm info`` shows: the checkpoint's config and the run's metrics."""
    checkpoint = resolve_checkpoint(path, prefer)
    config = read_config(checkpoint)
    vocab = config["vocab"]
    if not isinstance(vocab, list):
        raise CharlstmError(f"{checkpoint / CONFIG_FILE} has no character list; the checkpoint is damaged")
    return RunSummary(checkpoint, config, read_metrics(checkpoint.parent), vocab, profile_vocab(vocab))
