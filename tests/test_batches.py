import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charlstm.base.errors import CorpusError
from charlstm.data.batches import StreamBatches


@settings(max_examples=100, deadline=None)
@given(length=st.integers(20, 2000), batch=st.integers(1, 9), seq=st.integers(1, 50))
def test_second_batch_continues_first_batch(length, batch, seq):
    ids = np.arange(length, dtype=np.int64) % 251
    if (length - 1) // batch < 1:
        return
    batches = StreamBatches(ids.astype(np.uint8), batch, seq)
    positions = np.arange(length)
    tracker = StreamBatches(positions, batch, seq)  # same cut, ids are their own positions
    for k in range(len(tracker) - 1):
        x_now, y_now = tracker.window(k)
        x_next, _ = tracker.window(k + 1)
        # Row r of window k+1 starts right after row r of window k ends.
        assert np.array_equal(x_next[:, 0].numpy(), x_now[:, -1].numpy() + 1)
        # Targets are the inputs shifted by one character.
        assert np.array_equal(y_now.numpy(), x_now.numpy() + 1)
    # Every stream is read whole, in order, without gaps.
    rows = np.concatenate([tracker.window(k)[0].numpy() for k in range(len(tracker))], axis=1)
    assert np.array_equal(rows, positions[: batch * tracker.stream_len].reshape(batch, -1))
    assert batches.window(0)[0].dtype.is_floating_point is False


def test_too_short_text_says_what_is_needed():
    with pytest.raises(CorpusError, match="needs at least 641"):
        StreamBatches.check_trainable(100, 10, 64)
