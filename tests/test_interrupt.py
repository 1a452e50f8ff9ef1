"""Stopping a training process from outside: Ctrl-C, SIGTERM, a second Ctrl-C, and SIGKILL at random moments.

These run the real entry point, ``charlstm.cli.main()``, in subprocesses,
because signals and sudden death are only real across a process boundary. Each
process is started ahead of time and imports charlstm (and torch) while the
test waits on the previous one (torch's import takes seconds); then it reads
its command line from stdin.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import TINY_CLI

from charlstm import load
from charlstm.training.checkpoint import (
    load_training_state,
    resolve_resumable,
    saved_steps,
)

TIMEOUT = 240.0  # generous: the machine may be shared; a passing run takes seconds


# torch._dynamo is imported lazily by the first optimiser; it is the slowest import of all.
_AWAIT_ARGS = "import sys, torch._dynamo, charlstm.cli; charlstm.cli.main(sys.stdin.readline().rstrip('\\n').split('\\0'))"


def prewarm() -> subprocess.Popen:
    """A charlstm process that has done its imports and waits for its arguments (see ``launch``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", _AWAIT_ARGS], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def launch(process: subprocess.Popen, *args: str) -> subprocess.Popen:
    assert process.stdin is not None
    process.stdin.write("\0".join(args) + "\n")
    process.stdin.flush()
    return process


def spawn(*args: str) -> subprocess.Popen:
    return launch(prewarm(), *args)


def wait_until(condition, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert process.poll() is None, f"training ended before {what}: {process.communicate()[1]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def last_step(run: Path) -> int:
    return saved_steps(run).get("last", -1)


def train_forever(corpus: Path, out: Path, *extra: str) -> tuple[str, ...]:
    return ("train", str(corpus), "--out", str(out), "--name", "run", "--steps", "1000000", *extra)


def test_ctrl_c_and_sigterm_save_the_run_and_say_how_to_resume(tmp_path, tiny_corpus_file):
    run = tmp_path / "run"
    resumer = prewarm()
    process = spawn(*train_forever(tiny_corpus_file, tmp_path, *TINY_CLI, "--eval-every", "5"))
    wait_until(lambda: last_step(run) >= 5, process, "the first checkpoint")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"the run is saved in {run / 'last'}; resume it with: charlstm train --resume {run}" in stderr
    stopped_at = load_training_state(run / "last")["step"]
    assert f"stopped at step {stopped_at};" in stderr

    process = launch(resumer, "train", "--resume", str(run))
    wait_until(lambda: last_step(run) > stopped_at, process, "the resumed run's first checkpoint")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 143, stderr
    assert f"resumed from step {stopped_at}" in " ".join(stderr.split()) and "resume it with" in stderr
    assert load_training_state(run / "last")["step"] > stopped_at
    load(run, prefer="last")


def test_second_ctrl_c_stops_at_once_and_keeps_the_saved_checkpoints(tmp_path, tiny_corpus_file):
    # Steps of about a second, so both signals land inside one step.
    slow = ("--hidden", "192", "--layers", "2", "--batch-size", "32", "--seq-len", "256", "--precision", "fp32",
            "--eval-every", "1", "--val-frac", "0.05")
    run = tmp_path / "run"
    process = spawn(*train_forever(tiny_corpus_file, tmp_path, *slow))
    wait_until(lambda: last_step(run) == 1, process, "the first checkpoint")
    time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    assert process.stderr is not None
    while "stopping after this step" not in (line := process.stderr.readline()):
        assert line, "the first Ctrl-C was not acknowledged"
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 130, rest
    assert rest.strip().splitlines()[-1] == "error: SIGINT again: stopped at once; the checkpoints already saved are intact"
    assert "resume it with" not in rest  # it did not wait to finish the step and save
    assert load_training_state(run / "last")["step"] == 1
    assert not list(run.glob(".*tmp-*"))
    load(run, prefer="last")
    load(run, prefer="best")


def test_sigkill_at_random_moments_always_leaves_last_and_best_that_load(tmp_path, tiny_corpus_file):
    """Kill a run that checkpoints every step, again and again, resuming it each time in between."""
    rng = random.Random(3)
    run = tmp_path / "run"
    kills = loaded = caught_mid_write = 0
    waiting = [prewarm() for _ in range(6)]  # they import side by side instead of one after another
    for attempt, ready in enumerate(waiting):
        before = last_step(run)
        if attempt == 0:
            process = launch(ready, *train_forever(tiny_corpus_file, tmp_path, *TINY_CLI, "--eval-every", "1"))
        else:
            process = launch(ready, "train", "--resume", str(run))
        wait_until(lambda: last_step(run) > before, process, "a new checkpoint")
        time.sleep(rng.uniform(0.0, 0.4))
        process.kill()
        process.communicate(timeout=TIMEOUT)
        kills += 1
        leftovers = list(run.glob(".*tmp-*")) + list(run.glob("*.old"))
        caught_mid_write += bool(leftovers)
        for tag in ("last", "best"):
            assert load(run, prefer=tag).path.name.startswith(tag)
            loaded += 1
        assert load_training_state(resolve_resumable(run))["step"] >= 1
    print(f"\nkill test: {kills} kills, {loaded} of {2 * kills} checkpoints loaded, "
          f"{caught_mid_write} kills left a write half-done (staging or .old) that loading stepped around")
    assert loaded == 2 * kills
