"""Every bad input ends in one `error:` line on stderr, a non-zero exit and no traceback.

Each case runs the real entry point, ``cli.main()``, in this process (a
subprocess per case would spend most of its time importing torch); the hostile
pickle runs as a real ``python -m charlstm`` subprocess as well.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
from conftest import TINY_CLI, main_outcome

Setup = Callable[[Path, Path], tuple[str, ...]]  # (workspace, a trained run) -> command line


def corpus_file(content: bytes, name: str = "corpus.txt") -> Callable[[Path], Path]:
    def write(workspace: Path) -> Path:
        path = workspace / name
        path.write_bytes(content)
        return path

    return write


def train_on(content: bytes, *options: str) -> Setup:
    return lambda ws, run: ("train", str(corpus_file(content)(ws)), "--out", str(ws / "out"), *TINY_CLI, "--steps", "3", *options)


def binary_without_nul() -> bytes:
    data = bytes(range(1, 256)) * 40
    return bytes(random.Random(0).sample(data, len(data)))


def damaged_checkpoint(damage: Callable[[Path], None]) -> Setup:
    def setup(ws: Path, run: Path) -> tuple[str, ...]:
        checkpoint = ws / "ckpt"
        shutil.copytree(run / "best", checkpoint)
        damage(checkpoint)
        return ("sample", "-c", str(checkpoint), "--length", "5")

    return setup


def edit_config(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(checkpoint: Path) -> None:
        config = json.loads((checkpoint / "config.json").read_text())
        change(config)
        (checkpoint / "config.json").write_text(json.dumps(config))

    return damage


class CreatesAFile:
    """A pickle whose loading would run ``Path(marker).touch()``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def hostile_state(as_torch_zip: bool) -> Setup:
    def setup(ws: Path, run: Path) -> tuple[str, ...]:
        copy = ws / "run"
        shutil.copytree(run, copy)
        state = {"step": 1, "payload": CreatesAFile(ws / "pwned")}
        target = copy / "last" / "training_state.pt"
        if as_torch_zip:
            torch.save(state, target)
        else:
            target.write_bytes(pickle.dumps(state, protocol=2))  # a protocol torch's safe unpickler reads
        return ("train", "--resume", str(copy))

    return setup


HOSTILE = "{ws}/run/last/training_state.pt was refused: it is not a plain training state ("


def damaged_state(ws: Path, run: Path, content: bytes) -> tuple[str, ...]:
    copy = ws / "run"
    shutil.copytree(run, copy)
    (copy / "last" / "training_state.pt").write_bytes(content)
    return ("train", "--resume", str(copy))


def sample(*options: str) -> Setup:
    return lambda ws, run: ("sample", "-c", str(run), "--length", "5", *options)


def train_into_a_taken_name(name: str) -> Setup:
    """A new run named after one that is already there: the refusal names it, line breaks and all."""
    def setup(ws: Path, run: Path) -> tuple[str, ...]:
        shutil.copytree(run, ws / name)
        (ws / "corpus.txt").write_text("a small text to train on, " * 200, encoding="utf-8")
        return ("train", str(ws / "corpus.txt"), "--out", str(ws), "--name", name, *TINY_CLI)
    return setup


CASES: dict[str, tuple[Setup, str]] = {
    # corpus
    "missing corpus": (lambda ws, run: ("train", str(ws / "nope.txt")), "corpus file not found: {ws}/nope.txt"),
    "directory with no text": (lambda ws, run: ("train", str(ws)), "the folder {ws} holds no files; give a folder with text files in it"),
    "empty corpus": (train_on(b""), "{ws}/corpus.txt is empty; give a file with some text in it"),
    "whitespace only": (train_on(b" \n\t \r\n"), "{ws}/corpus.txt holds only whitespace; give a file with some text in it"),
    "too short for the batch shape": (
        train_on(b"hello world, a short text"),
        "too few for batches of 4 x 16 (needs at least 65); use a smaller --batch-size or --seq-len, or a longer text",
    ),
    "invalid utf-8": (
        train_on(b"good text \xff and more text after it"),
        "{ws}/corpus.txt is not valid utf-8 (byte 0xff at offset 10); pass --encoding with the file's real encoding, or --errors replace",
    ),
    "binary with NUL bytes": (train_on(b"PK\x03\x04\x00\x00binary"), "looks like a binary file (NUL byte at offset 4); give a text file"),
    "binary read as latin-1": (
        train_on(binary_without_nul(), "--encoding", "latin-1"),
        "{ws}/corpus.txt has 59 distinct control characters; it looks like binary data; check that it is text "
        "and that --encoding is right, or pass --force to train on it anyway",
    ),
    "absurd vocabulary": (
        train_on("".join(chr(0x4E00 + i) for i in range(20_000)).encode() + "".join(chr(0x20000 + i) for i in range(12_000)).encode()),
        "{ws}/corpus.txt has 32,000 distinct characters (the limit is 30,000); the model's output layer would be huge",
    ),
    "unknown encoding": (train_on(b"text", "--encoding", "klingon"), "unknown text encoding 'klingon'; try --encoding utf-8"),
    # checkpoints
    "missing checkpoint": (lambda ws, run: ("sample", "-c", str(ws / "none")), "checkpoint not found: {ws}/none"),
    "missing text to adapt to": (
        lambda ws, run: ("sample", "-c", str(run), "--length", "5", "--adapt-to", str(ws / "gone.txt")),
        "{ws}/gone.txt does not exist; give the path of a text file",
    ),
    "no runs at all": (lambda ws, run: ("info",), "no trained runs under checkpoints/; run 'charlstm train' first or pass -c CHECKPOINT"),
    "truncated weights": (
        damaged_checkpoint(lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:700])),
        "model.safetensors cannot be read",
    ),
    "random bytes as weights": (
        damaged_checkpoint(lambda c: (c / "model.safetensors").write_bytes(random.Random(1).randbytes(4000))),
        "model.safetensors cannot be read",
    ),
    "config.json not JSON": (damaged_checkpoint(lambda c: (c / "config.json").write_text("{\"model\": {")), "config.json is not valid JSON"),
    "config.json lacks fields": (
        damaged_checkpoint(edit_config(lambda cfg: cfg.pop("vocab"))), "config.json lacks the 'vocab' field; the checkpoint is damaged"
    ),
    "config.json with nonsense values": (
        damaged_checkpoint(edit_config(lambda cfg: cfg["model"].update(hidden_size="big"))), "config.json has invalid settings: hidden_size is 'big' (expected int)"
    ),
    "weights of another shape": (
        damaged_checkpoint(edit_config(lambda cfg: cfg["model"].update(hidden_size=49))),
        "model.safetensors does not match its config (rnn.weight_ih_l0 (192, 16) != (196, 16)",
    ),
    "newer format version": (
        damaged_checkpoint(edit_config(lambda cfg: cfg.update(format_version=99))),
        "uses checkpoint format 99, newer than this charlstm (0.1.0) reads (format 1); upgrade charlstm",
    ),
    "hostile pickle in training_state.pt": (hostile_state(as_torch_zip=False), HOSTILE),
    "hostile object in a torch.save file": (hostile_state(as_torch_zip=True), HOSTILE),
    "random bytes as training state": (
        lambda ws, run: damaged_state(ws, run, random.Random(2).randbytes(3000)), "training_state.pt cannot be read ("
    ),
    "truncated training state": (
        lambda ws, run: damaged_state(ws, run, (run / "last" / "training_state.pt").read_bytes()[:2000]),
        "training_state.pt cannot be read (",
    ),
    "a run name with line breaks in it, taken": (
        train_into_a_taken_name("M\x85b\nc"), "{ws}/M\\x85b\\nc already holds a trained run; continue it with --resume",
    ),
    # sampling
    "prime with unknown characters": (
        sample("--prime", "Жук ☃"),
        "text has 4 character(s) the model never saw: 'Ж', 'к', 'у', '☃'; use --unknown skip or --unknown replace, or remove them",
    ),
    "length 0": (sample("--length", "0"), "Invalid value for '--length': 0 is not in the range x>=1. (see 'charlstm sample --help')"),
    "absurd temperature": (sample("--temp", "1e9"), "Invalid value for '--temp': 1000000000.0 is not in the range 0<=x<=100."),
    "temperature nan": (sample("--temp", "nan"), "Invalid value for '--temp': 'nan' is not a finite number"),
    "top-k larger than the vocabulary": (sample("--top-k", "1000"), "top-k 1000 is larger than the vocabulary (33 characters); use at most 33"),
    "top-p out of range": (sample("--top-p", "0"), "Invalid value for '--top-p': 0.0 is not in the range 0<x<=1."),
    # command line
    "unknown option": (lambda ws, run: ("train", "--bogus"), "No such option '--bogus'. Did you mean '--out'? (see 'charlstm train --help')"),
    "unknown command": (lambda ws, run: ("trian",), "No such command 'trian'."),
    "conflicting options": (lambda ws, run: ("train", "--resume", str(run), "--name", "x"), "--name cannot be used with --resume"),
    "steps out of range": (lambda ws, run: ("train", "--steps", "0"), "Invalid value for '--steps': 0 is not in the range x>=1."),
    "learning rate out of range": (lambda ws, run: ("train", "--lr", "5"), "Invalid value for '--lr': 5.0 is not in the range 0<x<=1."),
    "learning rate nan": (lambda ws, run: ("train", "--lr", "nan"), "Invalid value for '--lr': 'nan' is not a finite number"),
    "time that is not a duration": (lambda ws, run: ("train", "--time", "soon"), "'soon' is not a duration; write e.g. 90s, 10m or 1.5h"),
    "infinite time": (lambda ws, run: ("train", "--time", "9" * 400), "the duration must be positive and finite"),
    "seed too large": (lambda ws, run: ("train", "--seed", str(2**64)), "Invalid value for '--seed': 18446744073709551616 is not in the range"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_clear_error_line(case, tmp_path, trained_run, monkeypatch):
    monkeypatch.chdir(tmp_path)
    setup, expected = CASES[case]
    workspace = tmp_path / "ws"
    workspace.mkdir()
    line = main_outcome(*setup(workspace, trained_run)).error_line
    assert expected.format(ws=workspace) in line
    assert not (workspace / "pwned").exists()


def test_force_trains_on_a_vocabulary_that_looks_like_binary(tmp_path):
    corpus = corpus_file(binary_without_nul())(tmp_path)
    done = main_outcome("train", str(corpus), "--encoding", "latin-1", "--force", "--out", str(tmp_path), *TINY_CLI, "--steps", "2")
    assert done.code == 0, done.stderr
    assert "warning: " in done.stderr and "59 distinct control characters" in done.stderr


def test_a_large_but_real_vocabulary_only_warns(tmp_path):
    text = "".join(chr(0x4E00 + i) for i in range(10_500)) * 2
    corpus = corpus_file(text.encode())(tmp_path)
    from charlstm.data.corpus import check_vocabulary
    from charlstm.data.sources import read_corpus

    warnings = check_vocabulary(read_corpus(corpus).vocab, "text.txt")
    assert warnings == ["text.txt has 10,500 distinct characters; the model will be large and slow"]


def test_a_hostile_pickle_never_runs_in_a_real_process(tmp_path, trained_run):
    args = hostile_state(as_torch_zip=False)(tmp_path, trained_run)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "charlstm", *args], capture_output=True, text=True, env=env)
    assert done.returncode == 1
    assert done.stderr.startswith("error: " + HOSTILE.format(ws=tmp_path))
    assert done.stderr.endswith("; nothing in it was run; the file is damaged or not charlstm's\n")
    assert len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "pwned").exists()


def test_a_warning_naming_a_path_with_line_breaks_stays_one_line(capsys):
    from charlstm.interface import terminal

    terminal.warn("cannot save the input history to /tmp/M\x85b\u2028c")
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["warning: cannot save the input history to /tmp/M\\x85b\\u2028c"]
