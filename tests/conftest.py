"""Shared fixtures: tiny generated corpora and tiny trained models, so the suite needs no data files."""

from __future__ import annotations

import contextlib
import io
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from charlstm import Corpus, ModelConfig, TrainConfig, Trainer

# One thread is faster than two for models this small, and keeps runs repeatable.
torch.set_num_threads(1)

WORDS = "the cat sat on a mat while his dog ran to her red ball and we saw it".split()


def make_text(num_words: int = 6000, seed: int = 0) -> str:
    """Words from a small lexicon in sentences: structure a tiny model can learn fast."""
    rng = random.Random(seed)
    sentences = []
    while num_words > 0:
        length = rng.randint(3, 9)
        sentence = " ".join(rng.choice(WORDS) for _ in range(length))
        sentences.append(sentence.capitalize() + rng.choice([".", "!", "?"]))
        num_words -= length
    lines = [" ".join(sentences[i : i + 4]) for i in range(0, len(sentences), 4)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def tiny_text() -> str:
    return make_text()


@pytest.fixture(scope="session")
def tiny_corpus_file(tmp_path_factory: pytest.TempPathFactory, tiny_text: str) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(tiny_text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the compiled int8 layer step through the session: built once, never in the user's cache."""
    return tmp_path_factory.mktemp("kernels")


@pytest.fixture(autouse=True)
def private_corpus_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, kernel_dir: Path) -> Path:
    """Every test (and every CLI it starts) caches encoded corpora in its own directory, never the user's."""
    directory = tmp_path_factory.mktemp("corpus-cache")
    monkeypatch.setenv("CHARLSTM_CACHE_DIR", str(directory))
    monkeypatch.setenv("CHARLSTM_SPEED_CACHE", str(directory / "speed.json"))
    monkeypatch.setenv("CHARLSTM_KERNEL_DIR", str(kernel_dir))
    return directory


@pytest.fixture
def run_main(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """Run `charlstm ARGS` in this process (faster than a subprocess); returns (exit code, stdout, stderr)."""
    from charlstm.interface.cli import main

    def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as stop:
            code = stop.code
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)

    return run


TINY_MODEL = dict(emb_size=16, hidden_size=48, num_layers=2, dropout=0.0)


def tiny_train_config(**overrides) -> TrainConfig:
    settings = dict(batch_size=8, seq_len=32, steps=60, lr=1e-2, warmup_steps=5, precision="fp32",
                    device="cpu", preview_chars=0, evals_per_run=3)
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_text: str) -> Path:
    """A run directory holding a tiny model trained for a few seconds."""
    corpus = Corpus.from_text(tiny_text, source="tiny")
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    config = ModelConfig(vocab_size=len(corpus.vocab), **TINY_MODEL)
    Trainer(corpus, config, tiny_train_config(steps=150), run_dir).train()
    return run_dir


@dataclass
class CliOutcome:
    code: int
    stdout: str
    stderr: str

    @property
    def final_error_line(self) -> str:
        """The error that ended a failed command: its last line, the only one saying ``error:``."""
        lines = self.stderr.strip().splitlines()
        assert self.code != 0, f"expected a failure, got exit 0: {self.stderr}"
        assert lines and lines[-1].startswith("error: "), self.stderr
        assert sum(line.startswith("error:") for line in lines) == 1, self.stderr
        assert "Traceback" not in self.stderr and "unexpected" not in lines[-1], self.stderr
        return lines[-1]

    @property
    def error_line(self) -> str:
        """The one line a command refused with, before doing anything else."""
        assert len(self.stderr.strip().splitlines()) == 1, self.stderr
        return self.final_error_line


def main_outcome(*args: str) -> CliOutcome:
    """Run the real entry point, ``cli.main()``, in this process and capture what a user would see."""
    from charlstm.interface.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            main(list(args))
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return CliOutcome(code, stdout.getvalue(), stderr.getvalue())


# A model and batch shape that train in a fraction of a second through the CLI.
TINY_CLI = ("--hidden", "24", "--layers", "1", "--emb", "8", "--batch-size", "4", "--seq-len", "16",
            "--precision", "fp32", "--device", "cpu")


CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def browser():
    """Debian's headless Chromium driven by Playwright (its own browser download does not work offline).

    CI installs the `chromium` package, so a missing browser is an error there, not a skip."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install -y chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()
