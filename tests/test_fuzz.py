"""Property: whatever is thrown at the command line, charlstm either works or says why in one line.

Arbitrary bytes as corpora, arbitrary prime text, arbitrary values for options:
the exit code is 0 or the last line is the only ``error:`` line; never a
traceback, never an "unexpected" error (the CLI's last line of defence for
bugs), and never a change to a checkpoint that already existed.
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
from pathlib import Path

import pytest
from conftest import CliOutcome, main_outcome
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# The autouse corpus-cache fixture is function-scoped; sharing it across examples is harmless here.
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TINY = ("--hidden", "8", "--layers", "1", "--emb", "4", "--batch-size", "2", "--seq-len", "4",
        "--precision", "fp32", "--device", "cpu", "--steps", "2")
names = itertools.count()


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_works_or_fails_cleanly(outcome: CliOutcome) -> None:
    assert "Traceback" not in outcome.stderr, outcome.stderr
    if outcome.code != 0:
        outcome.final_error_line  # noqa: B018 - the property asserts the one-line error


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, trained_run) -> Path:
    """A --out directory that already holds a run, which no fuzzed command may change."""
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(trained_run, root / "existing")
    return root


@pytest.fixture(scope="module")
def existing_hashes(workspace) -> dict[str, str]:
    return tree_hashes(workspace / "existing")


SOME_VALUES = st.one_of(
    st.text(max_size=8),
    st.integers(-3, 60).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", "-", "--", "0", "1e999", "nan", "-inf", "١٢", "10m", "0.5h", "utf-16", "strict", "lstm"]),
)


@FUZZ
@given(content=st.binary(max_size=400), encoding=st.sampled_from(["utf-8", "latin-1", "utf-16", "cp1252", "utf-8-sig"]),
       errors=st.sampled_from(["strict", "replace", "ignore"]), val_frac=st.sampled_from(["0", "0.2"]))
def test_any_bytes_as_a_corpus(workspace, existing_hashes, content, encoding, errors, val_frac):
    corpus = workspace / "corpus.bin"
    corpus.write_bytes(content)
    outcome = main_outcome("train", str(corpus), "--out", str(workspace), "--name", f"new{next(names)}",
                       "--encoding", encoding, "--errors", errors, "--val-frac", val_frac, *TINY)
    assert_works_or_fails_cleanly(outcome)
    assert tree_hashes(workspace / "existing") == existing_hashes


TRAIN_OPTIONS = ["--time", "--epochs", "--lr", "--dropout", "--val-frac", "--eval-every", "--seed", "--encoding",
                 "--errors", "--on-nan", "--cell", "--size", "--name", "--device", "--precision", "--bogus"]


@FUZZ
@given(options=st.lists(st.tuples(st.sampled_from(TRAIN_OPTIONS), SOME_VALUES), max_size=4))
def test_any_option_values_for_train(workspace, existing_hashes, tiny_corpus_file, options):
    args = [part for option in options for part in option]
    outcome = main_outcome("train", str(tiny_corpus_file), "--out", str(workspace), "--name", f"opt{next(names)}",
                       *args, *TINY)
    assert_works_or_fails_cleanly(outcome)
    assert tree_hashes(workspace / "existing") == existing_hashes


SAMPLE_OPTIONS = ["--temp", "--top-k", "--top-p", "--seed", "-n", "--unknown", "--which", "--device", "--length"]


@FUZZ
@given(prime=st.text(max_size=40), options=st.lists(st.tuples(st.sampled_from(SAMPLE_OPTIONS), SOME_VALUES), max_size=4))
def test_any_prime_and_options_for_sample(workspace, existing_hashes, prime, options):
    args = [part for option, value in options for part in (option, value)
            if not (option in ("--length", "-n") and value.isdigit() and int(value) > 60)]
    outcome = main_outcome("sample", "-c", str(workspace / "existing"), "--length", "20", "--prime", prime, *args)
    assert_works_or_fails_cleanly(outcome)
    assert tree_hashes(workspace / "existing") == existing_hashes
