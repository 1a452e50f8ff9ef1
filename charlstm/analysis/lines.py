"""Which lines of a file a model finds strange: every line scored, ranked, and optionally judged
against a threshold taken from normal lines or against known labels.

A model trained on normal log lines, CSV rows or names knows what a normal line looks like
character by character, so the cost of a line under it (nats an ideal coder would spend on it)
ranks lines by how odd they are without parsing their format (Tuor et al. 2018 reached a
line-level AUC of 0.98 on authentication logs this way).

Each line is scored with its line break, so a line cut short costs what an early ending costs.
By default every line starts from the same state (the lead-in sampling starts from, as if the
line began a text), so its score does not depend on the lines around it, and many lines are read
at once as the rows of one batch. ``carry=True`` reads the file as one stream instead, each line
in the context of the ones before it. A character the model never saw is never fed to it; it is
charged what the least likely character the model knows would have cost at that point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..base.errors import CharlstmError
from ..data.corpus import read_text
from ..training.checkpoint import LoadedModel
from .scoring import known_ids, lead_in_state, read_rows

RankBy = Literal["mean", "total", "peak"]
RANK_BY: tuple[RankBy, ...] = ("mean", "total", "peak")

# Lines read at once: at most this many rows, and about this many characters per batch (rows are
# padded to the longest line of their batch; lines are batched in order of length, so little is).
BATCH_ROWS = 512
BATCH_CHARS = 1 << 16


@dataclass
class LineScore:
    """One line and what each of its characters cost, in nats; the last entry is its line break."""

    number: int  # 1-based, as editors count
    text: str
    nats: np.ndarray
    unknown: int  # characters outside the vocabulary (charged, never fed)

    @property
    def total_nats(self) -> float:
        return float(self.nats.sum())

    @property
    def mean_nats(self) -> float:
        return self.total_nats / len(self.nats)

    @property
    def peak_index(self) -> int:
        """Index of the most surprising character (``len(text)``: the line break)."""
        return int(np.argmax(self.nats))

    @property
    def peak_nats(self) -> float:
        return float(self.nats[self.peak_index])

    @property
    def peak_char(self) -> str:
        index = self.peak_index
        return self.text[index] if index < len(self.text) else "\n"

    def key(self, by: RankBy) -> float:
        """The score lines are ranked by: mean or total nats, or the costliest character."""
        return {"mean": self.mean_nats, "total": self.total_nats, "peak": self.peak_nats}[by]

    def to_dict(self, flagged: bool | None = None) -> dict[str, Any]:
        record: dict[str, Any] = {
            "line": self.number,
            "text": self.text,
            "total_nats": self.total_nats,
            "mean_nats": self.mean_nats,
            "chars": len(self.nats),
            "peak_nats": self.peak_nats,
            "peak_char": self.peak_char,
            "peak_column": self.peak_index + 1,
            "unknown_chars": self.unknown,
        }
        if flagged is not None:
            record["flagged"] = flagged
        return record


@dataclass
class LineScores:
    """Every line of a text, scored, with how long that took."""

    lines: list[LineScore]
    chars: int
    seconds: float
    carry: bool

    @property
    def chars_per_sec(self) -> float:
        return self.chars / self.seconds if self.seconds > 0 else 0.0

    def keys(self, by: RankBy) -> np.ndarray:
        return np.array([line.key(by) for line in self.lines], dtype=float)

    def ranked(self, by: RankBy) -> list[LineScore]:
        """Most surprising first; equal scores keep file order."""
        order = np.argsort(-self.keys(by), kind="stable")
        return [self.lines[i] for i in order]


def _char_codes(loaded: LoadedModel, text: str) -> tuple[np.ndarray, np.ndarray]:
    """Ids of ``text``'s characters (-1 where the model never saw one) and where its lines end."""
    if "\n" not in loaded.vocab:
        raise CharlstmError("the model never saw a line break, so it has no idea where a line ends; "
                            "--lines needs a model trained on text with lines")
    ids, known, _ = known_ids(loaded.vocab, text)
    codes = np.full(len(text), -1, dtype=np.int64)
    codes[known] = ids
    ends = np.flatnonzero(codes == loaded.vocab.encode("\n")[0])
    return codes, ends


def _costs(codes: np.ndarray, target_nats: np.ndarray, least_nats: np.ndarray) -> np.ndarray:
    """Each character's cost: a known one its own −log p, an unknown one the −log p of the least
    likely character at the step where it stands (after the known characters before it)."""
    known = codes >= 0
    before = np.cumsum(known) - known
    own = target_nats[np.minimum(before, max(len(target_nats) - 1, 0))] if len(target_nats) else np.zeros(len(codes))
    return np.where(known, own, least_nats[before])


def _read(loaded: LoadedModel, rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of known ids, each read from the lead-in state: nats of each target and of the least
    likely character after each step, padded rows cut back to their own lengths by the caller."""
    state, lead = lead_in_state(loaded, len(rows))
    width = 1 + max(len(row) for row in rows)
    batch = np.zeros((len(rows), width), dtype=np.int64)
    batch[:, 0] = lead
    for index, row in enumerate(rows):
        batch[index, 1 : 1 + len(row)] = row
    targets, least = read_rows(loaded.model, torch.from_numpy(batch), state)
    return -targets.cpu().numpy(), -least.cpu().numpy()


def score_lines(loaded: LoadedModel, text: str, carry: bool = False) -> LineScores:
    """Score every line of ``text`` (a final line without a line break is scored with one)."""
    if not text:
        raise CharlstmError("there are no lines to score")
    start = time.perf_counter()
    if not text.endswith("\n"):
        text += "\n"
    codes, ends = _char_codes(loaded, text)
    starts = np.concatenate([[0], ends[:-1] + 1])
    if carry:
        targets, least = _read(loaded, [codes[codes >= 0]])
        costs = _costs(codes, targets[0], least[0])
        per_line = [costs[s : e + 1] for s, e in zip(starts, ends)]
    else:
        per_line = [np.empty(0)] * len(ends)
        known_lengths = np.array([np.count_nonzero(codes[s : e + 1] >= 0) for s, e in zip(starts, ends)])
        order = np.argsort(known_lengths, kind="stable")
        position = 0
        while position < len(order):
            longest = max(1, int(known_lengths[order[min(len(order), position + BATCH_ROWS) - 1]]))
            count = max(1, min(BATCH_ROWS, BATCH_CHARS // longest, len(order) - position))
            chosen = order[position : position + count]
            segments = [codes[starts[i] : ends[i] + 1] for i in chosen]
            targets, least = _read(loaded, [segment[segment >= 0] for segment in segments])
            for row, (line, segment) in enumerate(zip(chosen, segments)):
                known = int(known_lengths[line])
                per_line[line] = _costs(segment, targets[row, :known], least[row, : known + 1])
            position += count
    lines = [LineScore(number + 1, text[s:e], nats, int(np.count_nonzero(codes[s:e] < 0)))
             for number, (s, e, nats) in enumerate(zip(starts, ends, per_line))]
    return LineScores(lines, len(text), time.perf_counter() - start, carry)


def score_line_file(loaded: LoadedModel, path: str | Path, carry: bool = False) -> LineScores:
    return score_lines(loaded, read_text(path), carry)


def threshold_at(reference: LineScores, by: RankBy, percentile: float) -> float:
    """The score below which ``percentile`` % of the reference (normal) lines fall."""
    return float(np.percentile(reference.keys(by), percentile))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The chance that a random positive line outscores a random negative one (ties count half):
    the Mann–Whitney statistic, with tied scores given their average rank."""
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        raise CharlstmError("the labels need at least one 1 and one 0 to measure an AUC")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    begin = 0
    while begin < len(scores):
        end = begin
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[begin]:
            end += 1
        ranks[order[begin : end + 1]] = (begin + end) / 2 + 1
        begin = end + 1
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def precision_at(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of true anomalies among the ``k`` highest-scoring lines."""
    k = max(1, min(k, len(scores)))
    top = np.argsort(-scores, kind="stable")[:k]
    return float(labels[top].mean())


def read_labels(path: str | Path, count: int) -> np.ndarray:
    """One 0 or 1 per line, as many as the scored file has lines."""
    values = read_text(path).split()
    wrong = next((value for value in values if value not in ("0", "1")), None)
    if wrong is not None:
        raise CharlstmError(f"{path}: labels must be 0 or 1, one per line; found {wrong[:20]!r}")
    if len(values) != count:
        raise CharlstmError(f"{path} has {len(values)} labels for {count} lines; give one 0/1 per line scored")
    return np.array([int(value) for value in values])


@dataclass
class LineJudgement:
    """What the threshold and the labels say about a scored file."""

    by: RankBy
    threshold: float | None = None
    percentile: float | None = None
    flagged: np.ndarray | None = None  # per line, when a threshold was set
    auc: float | None = None
    precision: dict[int, float] | None = None  # k -> precision among the top k
    positives: int | None = None

    @property
    def flagged_count(self) -> int:
        return int(self.flagged.sum()) if self.flagged is not None else 0

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"rank_by": self.by}
        if self.threshold is not None:
            record.update(threshold=self.threshold, percentile=self.percentile, flagged=self.flagged_count)
        if self.auc is not None:
            record.update(auc=self.auc, positives=self.positives,
                          precision_at={str(k): value for k, value in (self.precision or {}).items()})
        return record


def judge_lines(scores: LineScores, by: RankBy, reference: LineScores | None = None, percentile: float = 99.5,
                labels: np.ndarray | None = None, top: int = 10) -> LineJudgement:
    """Flag the lines above the reference's percentile, and measure the ranking against labels:
    ROC AUC, and precision among the top ``top`` lines and among as many as there are anomalies."""
    judgement = LineJudgement(by)
    keys = scores.keys(by)
    if reference is not None:
        judgement.threshold = threshold_at(reference, by, percentile)
        judgement.percentile = percentile
        judgement.flagged = keys > judgement.threshold
    if labels is not None:
        judgement.auc = roc_auc(keys, labels)
        judgement.positives = int(labels.sum())
        judgement.precision = {k: precision_at(keys, labels, k) for k in sorted({top, judgement.positives})}
    return judgement
