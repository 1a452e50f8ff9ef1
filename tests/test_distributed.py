"""Data-parallel training: two gloo ranks on this CPU take the very steps one process takes."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import socket
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import TINY_MODEL, CliOutcome, main_outcome, tiny_train_config

from charlstm import CharLSTM, Corpus, ModelConfig, Trainer, cli, load, read_corpus
from charlstm.base.errors import CharlstmError
from charlstm.data.batches import StreamBatches
from charlstm.interface import terminal as console
from charlstm.training.checkpoint import (
    load_training_state,
    read_evaluations,
    read_metrics,
)
from charlstm.training.distributed import DistributedContext
from charlstm.training.evaluation import evaluation_totals

WORLD_SIZE = 2
STEPS = 8
# The same run through the CLI: two ranks under torchrun's variables, or one plain process.
CLI_ARGS = ["--steps", str(STEPS), "--layers", "2", "--hidden", "48", "--emb", "16", "--dropout", "0",
            "--batch-size", "8", "--seq-len", "32", "--lr", "0.01", "--precision", "fp32", "--device", "cpu"]


def test_a_plain_process_is_not_distributed():
    assert DistributedContext.from_env({}) is None
    assert DistributedContext.from_env({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}) is None


def test_torchrun_variables_place_the_rank():
    context = DistributedContext.from_env({"WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "1"})
    assert (context.rank, context.world_size, context.local_rank, context.is_main) == (5, 8, 1, False)


def test_ranks_share_the_batch_in_equal_disjoint_rows():
    shares = [DistributedContext(rank, 4, rank).rows(12) for rank in range(4)]
    assert [list(range(12))[share] for share in shares] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]


def test_a_batch_that_does_not_split_evenly_is_refused():
    with pytest.raises(CharlstmError, match="--batch-size 10 does not split evenly over 4 processes.*8 or 12"):
        DistributedContext(0, 4, 0).rows(10)


def test_the_rows_of_each_rank_are_the_whole_batch_windows_cut_apart():
    ids = np.arange(1000, dtype=np.int64)
    whole = StreamBatches(ids, 8, 16)
    shares = [whole.rows(DistributedContext(rank, 2, rank).rows(8)) for rank in range(2)]
    assert all(len(share) == len(whole) for share in shares)
    for index in (0, 1, len(whole) - 1):
        x, y = whole.window(index)
        assert torch.equal(torch.cat([share.window(index)[0] for share in shares]), x)
        assert torch.equal(torch.cat([share.window(index)[1] for share in shares]), y)


@pytest.mark.parametrize("parts", [2, 3, 5, 12])
def test_shares_of_an_evaluation_add_up_to_the_whole(tiny_text, parts):
    corpus = Corpus.from_text(tiny_text)
    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(vocab_size=len(corpus.vocab), **TINY_MODEL))
    ids = corpus.ids[:3000]
    whole = evaluation_totals(model, ids, 5, 32, torch.device("cpu"))
    shares = [evaluation_totals(model, ids, 5, 32, torch.device("cpu"), part=(index, parts)) for index in range(parts)]
    assert sum(count for _, count in shares) == whole[1]
    assert sum(total for total, _ in shares) == pytest.approx(whole[0], rel=1e-6)


class StopRequestedAt(Trainer):
    """A trainer that receives a stop request at one step, as a signal to this one process would deliver it."""

    stop_at: int | None = None

    def _train_step(self) -> float:
        loss = super()._train_step()
        if self.step == self.stop_at:
            self.request_stop()
        return loss


class CtrlCAt(console.ConsoleTrainReporter):
    """Rank 0's display, which delivers one Ctrl-C twice at ``step`` as a terminal and torchrun together do."""

    step_to_stop = 3

    def step(self, stats) -> None:
        super().step(stats)
        if stats.step == self.step_to_stop:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)


class NonFiniteOnRankOneAt(Trainer):
    """A trainer whose rank 1 alone meets a non-finite loss at one step, as a bad stretch of its rows would give."""

    bad_step = 5

    def _train_step(self) -> float | None:
        with ExitStack() as stack:
            if self.distributed.rank == 1 and self.step + 1 == self.bad_step:
                hook = self.model.register_forward_hook(lambda module, args, output: (output[0] * float("nan"), output[1]))
                stack.callback(hook.remove)
            return super()._train_step()


def _record(out: Path, name: str, rank: int, **facts) -> None:
    (out / "outcomes").mkdir(exist_ok=True)
    (out / "outcomes" / f"{name}-{rank}.json").write_text(json.dumps(facts))


def _outcomes(out: Path, name: str) -> list[dict]:
    return [json.loads((out / "outcomes" / f"{name}-{rank}.json").read_text()) for rank in range(WORLD_SIZE)]


def _rank_main(rank: int, ports: list[int], corpus_file: Path, out: Path) -> None:
    """One rank, through runs that each start a process group of their own (as separate torchrun launches do):
    a run that rank 1 alone is asked to stop midway; the whole run through the CLI; the same run stopped by
    Ctrl-C and resumed on two ranks; runs whose rank 1 alone meets a non-finite loss; and last (so that a
    rank left waiting fails the fixture's deadline) a new run that rank 0 refuses."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(ports[0]), TORCHELASTIC_RUN_ID="test")
    torch.set_num_threads(1)
    corpus = read_corpus(corpus_file)
    config = ModelConfig(vocab_size=len(corpus.vocab), **TINY_MODEL)
    stopped = StopRequestedAt(corpus, config, tiny_train_config(steps=STEPS), out / "stopped",
                              distributed=DistributedContext.from_env())
    stopped.stop_at = STEPS // 2 if rank == 1 else None
    result = stopped.train()
    assert result.stopped_early and result.steps == STEPS // 2, "every rank stops at the step one rank was asked to"
    cli.main(["train", str(corpus_file), *CLI_ARGS, "--out", str(out), "--name", "cli"])

    os.environ["MASTER_PORT"] = str(ports[1])
    if rank == 0:
        console.ConsoleTrainReporter = CtrlCAt
    outcome = main_outcome("train", str(corpus_file), *CLI_ARGS, "--out", str(out), "--name", "interrupted")
    _record(out, "interrupted", rank, **asdict(outcome))
    if rank == 0:
        shutil.copytree(out / "interrupted", out / "interrupted-copy")  # to resume on one process later

    os.environ["MASTER_PORT"] = str(ports[2])
    outcome = main_outcome("train", "--resume", str(out / "interrupted"))
    _record(out, "resumed", rank, **asdict(outcome))

    os.environ["MASTER_PORT"] = str(ports[3])
    context = DistributedContext.from_env()
    skipping = NonFiniteOnRankOneAt(corpus, config, tiny_train_config(steps=STEPS, on_nan="skip"), out / "skipping",
                                    distributed=context)
    result = skipping.train()
    weights = b"".join(tensor.numpy().tobytes() for tensor in skipping.model.state_dict().values())
    _record(out, "skipping", rank, skipped=result.skipped_batches, steps=result.steps,
            weights=hashlib.sha256(weights).hexdigest())
    try:
        NonFiniteOnRankOneAt(corpus, config, tiny_train_config(steps=STEPS, eval_every=3), out / "diverging", distributed=context).train()
        _record(out, "diverging", rank, error=None)
    except CharlstmError as error:
        _record(out, "diverging", rank, error=str(error))
    context.close()

    os.environ["MASTER_PORT"] = str(ports[4])
    outcome = main_outcome("train", str(corpus_file), *CLI_ARGS, "--out", str(out), "--name", "cli")
    _record(out, "refused", rank, **asdict(outcome))


def _free_ports(count: int) -> list[int]:
    """Ports free now and below the kernel's ephemeral range: the stages use them one after another, and a port
    the kernel hands out meanwhile (to gloo's own connections, or another program's) would be taken by then."""
    range_file = Path("/proc/sys/net/ipv4/ip_local_port_range")
    ephemeral_low = int(range_file.read_text().split()[0]) if range_file.exists() else 32768
    low, high = (10_000, ephemeral_low) if ephemeral_low > 11_000 else (ephemeral_low, 65_536)
    rng = random.Random(os.getpid() ^ time.time_ns())
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(low, high)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory: pytest.TempPathFactory, tiny_corpus_file: Path) -> Path:
    """Runs trained by two gloo processes on this CPU, as torchrun would start them."""
    out = tmp_path_factory.mktemp("ddp")
    context = mp.start_processes(_rank_main, args=(_free_ports(5), tiny_corpus_file, out), nprocs=WORLD_SIZE,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + 120  # a rank stuck in a collective must fail the test, not hang the suite
    while not context.join(timeout=max(0.1, deadline - time.monotonic())):  # returns as each rank ends
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("two-rank training did not finish within 120s")
    return out


def _single_process_cli_run(tmp_path: Path, corpus_file: Path) -> Path:
    cli.main(["train", str(corpus_file), *CLI_ARGS, "--out", str(tmp_path), "--name", "single"])
    return tmp_path / "single"


def _assert_same_weights(run_a: Path, run_b: Path) -> None:
    weights_a = load(run_a, prefer="last").model.state_dict()
    weights_b = load(run_b, prefer="last").model.state_dict()
    for name, tensor in weights_a.items():
        # fp32 sums of the two halves' gradients differ from the whole's in the last bits only
        torch.testing.assert_close(tensor, weights_b[name], rtol=1e-4, atol=1e-5, msg=name)


def test_two_ranks_take_the_steps_of_one_process_with_the_whole_batch(two_rank_runs, tiny_corpus_file, tmp_path):
    single = _single_process_cli_run(tmp_path, tiny_corpus_file)
    _assert_same_weights(two_rank_runs / "cli", single)
    ranked, alone = read_evaluations(two_rank_runs / "cli"), read_evaluations(single)
    assert [r["step"] for r in ranked] == [r["step"] for r in alone]
    assert [r["val_loss"] for r in ranked] == pytest.approx([r["val_loss"] for r in alone], rel=1e-5)


def test_only_rank_zero_writes_the_metrics(two_rank_runs):
    steps = [record["step"] for record in read_metrics(two_rank_runs / "cli")]
    assert steps and len(steps) == len(set(steps))


def test_a_checkpoint_of_two_ranks_resumes_on_one_as_if_never_stopped(two_rank_runs, tiny_corpus_file, tmp_path):
    stopped = two_rank_runs / "stopped"
    saved = load_training_state(stopped / "last")
    assert saved["step"] == STEPS // 2
    assert [tuple(h.shape) for h in saved["hidden"]] == [(2, 8, 48)] * 2, "the whole batch's hidden state is saved"
    corpus = read_corpus(tiny_corpus_file)
    config = ModelConfig(vocab_size=len(corpus.vocab), **TINY_MODEL)
    weights = load(stopped, prefer="last").model.state_dict()
    Trainer(corpus, config, tiny_train_config(steps=STEPS), stopped, resume_state=saved, model_state=weights).train()
    uninterrupted = tmp_path / "uninterrupted"
    Trainer(corpus, config, tiny_train_config(steps=STEPS), uninterrupted).train()
    _assert_same_weights(stopped, uninterrupted)
    assert json.loads((stopped / "last" / "config.json").read_text())["metrics"]["step"] == STEPS


def test_one_ctrl_c_delivered_twice_under_torchrun_stops_every_rank_once_and_saves(two_rank_runs):
    """A terminal's Ctrl-C reaches each worker directly and again through torchrun: that is one stop, not two."""
    rank_zero, rank_one = _outcomes(two_rank_runs, "interrupted")
    assert rank_zero["code"] == rank_one["code"] == 130, rank_zero["stderr"] + rank_one["stderr"]
    assert rank_zero["stderr"].count("stopping after this step and saving the run") == 1
    assert f"resume it with: charlstm train --resume {two_rank_runs / 'interrupted'}" in rank_zero["stderr"]
    assert rank_one["stderr"] == "", "only rank 0 speaks"
    stopped_at = load_training_state(two_rank_runs / "interrupted-copy" / "last")["step"]
    assert stopped_at in (CtrlCAt.step_to_stop, CtrlCAt.step_to_stop + 1), "the stop is taken in at a step boundary"
    assert f"stopped at step {stopped_at};" in rank_zero["stderr"]


def test_a_run_stopped_on_two_ranks_resumes_on_two_through_the_cli_as_if_never_stopped(two_rank_runs):
    assert [outcome["code"] for outcome in _outcomes(two_rank_runs, "resumed")] == [0, 0]
    stopped_at = load_training_state(two_rank_runs / "interrupted-copy" / "last")["step"]
    assert f"resumed from step {stopped_at}" in " ".join(_outcomes(two_rank_runs, "resumed")[0]["stderr"].split())
    _assert_same_weights(two_rank_runs / "interrupted", two_rank_runs / "cli")
    resumed, uninterrupted = read_evaluations(two_rank_runs / "interrupted"), read_evaluations(two_rank_runs / "cli")
    assert [r["step"] for r in resumed] == [r["step"] for r in uninterrupted]
    assert [r["val_loss"] for r in resumed] == pytest.approx([r["val_loss"] for r in uninterrupted], rel=1e-5)


def test_a_run_stopped_on_two_ranks_resumes_on_one_through_the_cli_as_if_never_stopped(two_rank_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(two_rank_runs / "interrupted-copy", run)
    resumed = main_outcome("train", "--resume", str(run))
    assert resumed.code == 0, resumed.stderr
    _assert_same_weights(run, two_rank_runs / "cli")


def test_a_non_finite_loss_on_one_rank_is_skipped_or_stopped_on_every_rank(two_rank_runs):
    skipping = _outcomes(two_rank_runs, "skipping")
    assert [(o["skipped"], o["steps"]) for o in skipping] == [(1, STEPS)] * 2
    assert skipping[0]["weights"] == skipping[1]["weights"], "the ranks took the same updates"
    rank_zero, rank_one = (o["error"] for o in _outcomes(two_rank_runs, "diverging"))
    assert rank_zero == rank_one, "every rank stops with the same message"
    assert rank_zero.startswith("training diverged at step 5: the loss is nan; the weights were not updated and "
                                "the last good checkpoint (step 3) is kept")


def test_a_refusal_on_rank_zero_stops_every_rank_with_the_same_error(two_rank_runs):
    """Rank 0 alone checks the run directory; rank 1 must hear the refusal, not wait for a step that never comes."""
    rank_zero, rank_one = (CliOutcome(**outcome) for outcome in _outcomes(two_rank_runs, "refused"))
    assert rank_zero.error_line == rank_one.error_line
    assert "already holds a trained run; continue it with --resume" in rank_zero.error_line
