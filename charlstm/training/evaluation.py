"""The one evaluation that the trainer and `charlstm eval` share, so their numbers agree."""

from __future__ import annotations

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


@torch.no_grad()
def evaluation_totals(
    model: CharLSTM,
    ids: np.ndarray,
    batch_size: int,
    seq_len: int,
    device: torch.device,
    precision: str = "fp32",
    part: tuple[int, int] = (0, 1),
) -> tuple[float, int]:
    """Summed cross-entropy (nats) and the number of characters scored: the one evaluation that
    the trainer and ``charlstm eval`` share, so their numbers agree.

    ``part`` = (index, parts) scores only that share of the streams, so the ranks of a
    data-parallel run can split one evaluation and add up their totals.
    """
    streams = eval_streams(len(ids), batch_size, seq_len)
    index, parts = part
    batches = StreamBatches(ids, streams, seq_len, what="evaluation text").rows(
        slice(index * streams // parts, (index + 1) * streams // parts)
    )
    if batches.batch_size == 0:
        return 0.0, 0
    was_training = model.training
    model.eval()
    state = model.init_state(batches.batch_size, device)
    total, count = 0.0, 0
    for index in range(len(batches)):
        x, y = batches.window(index, device)
        with autocast(device, precision):
            logits, state = model(x, state)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    return total, count
