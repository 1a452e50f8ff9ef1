"""Truncated-BPTT batching: B contiguous streams read in (B, T) windows, in order.

Row r of window k+1 continues row r of window k, which is what lets the trainer
carry the LSTM's hidden state from one batch to the next.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..base.errors import CorpusError


class StreamBatches:
    """Cuts an id array into ``batch_size`` streams and serves windows of ``seq_len``.

    The last window of a pass may be shorter than ``seq_len`` so that every
    character but at most ``batch_size`` of the tail is read.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, what: str = "training text"):
        if batch_size < 1 or seq_len < 1:
            raise CorpusError("batch size and sequence length must be at least 1")
        stream_len = (len(ids) - 1) // batch_size
        if stream_len < 1:
            needed = batch_size + 1
            raise CorpusError(
                f"the {what} has {len(ids)} characters, too few for {batch_size} streams "
                f"(needs at least {needed}); use a smaller --batch-size or a longer text"
            )
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.stream_len = stream_len
        used = batch_size * stream_len
        self.inputs = ids[:used].reshape(batch_size, stream_len)
        self.targets = ids[1 : used + 1].reshape(batch_size, stream_len)

    @staticmethod
    def check_trainable(num_ids: int, batch_size: int, seq_len: int) -> None:
        """Refuse a training text that cannot fill even one full window per stream."""
        needed = batch_size * seq_len + 1
        if num_ids < needed:
            raise CorpusError(
                f"the training text has {num_ids} characters, too few for batches of "
                f"{batch_size} x {seq_len} (needs at least {needed}); use a smaller --batch-size "
                "or --seq-len, or a longer text"
            )

    def rows(self, selected: slice) -> "StreamBatches":
        """The same cut restricted to some of its streams (a data-parallel rank's share): windows keep
        their positions, so each row continues exactly as it does in the whole batch."""
        share = copy.copy(self)
        share.inputs = self.inputs[selected]
        share.targets = self.targets[selected]
        share.batch_size = len(share.inputs)
        return share

    def __len__(self) -> int:
        """Windows in one pass over the streams."""
        return -(-self.stream_len // self.seq_len)

    @property
    def chars_per_pass(self) -> int:
        return self.batch_size * self.stream_len

    def window(self, index: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of window ``index`` as int64 tensors of shape (B, <=T)."""
        start = index * self.seq_len
        stop = min(start + self.seq_len, self.stream_len)
        x = torch.from_numpy(self.inputs[:, start:stop].astype(np.int64))
        y = torch.from_numpy(self.targets[:, start:stop].astype(np.int64))
        if torch.device(device).type == "cuda":
            # One copy from pinned memory that does not block: the host goes on queueing the step meanwhile.
            both = torch.stack((x, y)).pin_memory().to(device, non_blocking=True)
            return both[0], both[1]
        return x.to(device), y.to(device)
