"""The one evaluation that the trainer and `charlstm eval` share, so their numbers agree."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..base.runtime import autocast
from ..data.batches import StreamBatches
from ..model.network import CharLSTM


def eval_streams(num_ids: int, batch_size: int, seq_len: int) -> int:
    """As many streams as the training batch, fewer when the text is too short for them."""
    return max(1, min(batch_size, (num_ids - 1) // seq_len))


def evaluate(
    model: CharLSTM,
    ids: np.ndarray,
    batch_size: int,
    seq_len: int,
    device: torch.device,
    precision: str = "fp32",
) -> float:
    """Mean cross-entropy (nats/char) over the whole of ``ids``, read statefully."""
    total, count = evaluation_totals(model, ids, batch_size, seq_len, device, precision)
    return total / count


@dataclass
class EvalTotals:
    """Summed cross-entropy (nats) and characters scored, over all windows read and over the first
    ``prefix`` of them (the part every evaluation of a run reads, so any two can be compared)."""

    total: float
    count: int
    prefix_total: float
    prefix_count: int
    windows: int  # windows read
    of_windows: int  # windows in a whole pass

    @property
    def loss(self) -> float:
        return self.total / self.count

    @property
    def prefix_loss(self) -> float:
        return self.prefix_total / self.prefix_count


def evaluation_windows(num_ids: int, batch_size: int, seq_len: int) -> int:
    """Windows in one pass over ``num_ids`` characters read the way evaluation reads them."""
    if num_ids < 2:
        return 0
    stream_len = (num_ids - 1) // eval_streams(num_ids, batch_size, seq_len)
    return -(-stream_len // seq_len)


@torch.no_grad()
def read_validation(
    model: CharLSTM,
    ids: np.ndarray,
    batch_size: int,
    seq_len: int,
    device: torch.device,
    precision: str = "fp32",
    part: tuple[int, int] = (0, 1),
    windows: int | None = None,
    prefix: int = 0,
) -> EvalTotals:
    """Read ``ids`` statefully as B parallel streams and score every character.

    ``windows`` reads only the first that many windows: B chunks spread evenly over the whole text,
    the same characters every time, which is how a run evaluates a validation split too large to
    read whole within its budget. ``part`` = (index, parts) scores only that share of the streams,
    so the ranks of a data-parallel run can split one evaluation and add up their totals.
    """
    streams = eval_streams(len(ids), batch_size, seq_len)
    index, parts = part
    whole = StreamBatches(ids, streams, seq_len, what="evaluation text")
    batches = whole.rows(slice(index * streams // parts, (index + 1) * streams // parts))
    read = len(whole) if windows is None else min(windows, len(whole))
    totals = EvalTotals(0.0, 0, 0.0, 0, read, len(whole))
    if batches.batch_size == 0:
        return totals
    was_training = model.training
    model.eval()
    state = model.init_state(batches.batch_size, device)
    # Summed on the device in float64 and read once at the end: a read per window would make the host wait
    # for a GPU each time. The additions are the ones Python's float would make, in the same order.
    total = prefix_total = torch.zeros((), dtype=torch.float64, device=device)
    for window in range(read):
        x, y = batches.window(window, device)
        with autocast(device, precision):
            logits, state = model(x, state)
        total = total + F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").double()
        totals.count += y.numel()
        if window + 1 == prefix:
            prefix_total, totals.prefix_count = total, totals.count
    totals.total, totals.prefix_total = torch.stack((total, prefix_total)).tolist()
    if prefix == 0 or prefix > read:
        totals.prefix_total, totals.prefix_count = totals.total, totals.count
    model.train(was_training)
    return totals


def evaluation_totals(
    model: CharLSTM,
    ids: np.ndarray,
    batch_size: int,
    seq_len: int,
    device: torch.device,
    precision: str = "fp32",
    part: tuple[int, int] = (0, 1),
) -> tuple[float, int]:
    """Summed cross-entropy (nats) and the number of characters scored over the whole of ``ids``: the
    one evaluation that the trainer and ``charlstm eval`` share, so their numbers agree."""
    totals = read_validation(model, ids, batch_size, seq_len, device, precision, part)
    return totals.total, totals.count
