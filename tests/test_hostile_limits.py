"""Hostile inputs at the edges of memory, time and meaning (issue 15, classes 2–5).

Each case asserts the exit status, that a refusal is one line naming the thing and the
remedy, and that files already there are left byte-for-byte as they were. Cases that could
eat the machine's memory or block run in a subprocess under an address-space limit and a
timeout, so a regression fails the test instead of the machine.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_CLI, CliOutcome, main_outcome
from safetensors.torch import load_file, save_file

from charlstm.analysis import scoring
from charlstm.data import sources
from charlstm.training import checkpoint as checkpoint_module

REPO = Path(__file__).resolve().parents[1]
# Importing torch and charlstm reserves about 0.7 GB of address space; 3 GB leaves room to work
# and still fails a reader that takes a 6 GB file, or /dev/zero, whole.
ADDRESS_LIMIT = 3 * 1024**3
RUNNER = (
    "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit})); "
    "from charlstm.interface.cli import main; main(sys.argv[1:])"
)


def limited(*args: str, cwd: Path, stdin: str | bytes | None = None, env: dict[str, str] | None = None,
            timeout: float = 120, limit: int = ADDRESS_LIMIT) -> CliOutcome:
    """`charlstm ARGS` in a child process that cannot take more than ``limit`` bytes of address space."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    data = stdin.encode() if isinstance(stdin, str) else stdin
    done = subprocess.run([sys.executable, "-c", RUNNER.format(limit=limit), *args], cwd=cwd, input=data,
                          capture_output=True, timeout=timeout, env=environment)
    return CliOutcome(done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace"))


def fingerprint(folder: Path) -> dict[str, str]:
    """Every regular file under ``folder`` by its contents, to prove a refusal changed nothing."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def no_noise(outcome: CliOutcome) -> None:
    assert "Traceback" not in outcome.stderr and "unexpected" not in outcome.stderr, outcome.stderr


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of the tiny trained run that a test may damage."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def edit_config(checkpoint_dir: Path, change) -> None:
    path = checkpoint_dir / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    change(config)
    path.write_text(json.dumps(config), encoding="utf-8")


def text_file(folder: Path, name: str = "c.txt", text: str = "the cat sat on the mat.\n" * 40) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- class 2: bounded memory


@pytest.mark.parametrize("field,value", [("hidden_size", 10**9), ("hidden_size", 12000), ("num_layers", 10**6),
                                         ("emb_size", 10**9), ("vocab_size", 10**9)])
def test_config_larger_than_its_weights_is_refused_before_the_model_is_built(run_copy, tmp_path, field, value):
    for tag in ("best", "last"):
        edit_config(run_copy / tag, lambda config: config["model"].__setitem__(field, value))
    before = fingerprint(run_copy)
    line = limited("sample", "-c", str(run_copy), "--length", "5", cwd=tmp_path).error_line
    assert "config.json" in line or "model.safetensors" in line
    assert "does not match" in line or "belong" in line
    assert fingerprint(run_copy) == before


def test_dev_zero_is_refused_unread(tmp_path):
    """/dev/zero named as a corpus is refused at once, never read."""
    line = limited("corpus", "stats", "/dev/zero", cwd=tmp_path).error_line
    assert "/dev/zero is a device, not a regular file" in line and "text file" in line


def test_a_huge_sparse_file_in_a_folder_is_skipped_with_a_note(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    text_file(folder)
    with open(folder / "huge.txt", "wb") as handle:
        handle.truncate(6 * 10**9)
    fifo = folder / "pipe.txt"
    os.mkfifo(fifo)
    outcome = limited("corpus", "stats", str(folder), cwd=tmp_path, timeout=60)
    assert outcome.code == 0, outcome.stderr
    no_noise(outcome)
    assert "huge.txt" in outcome.stderr and "6.0 GB" in outcome.stderr
    assert "pipe.txt" in outcome.stderr and "named pipe" in outcome.stderr


def test_a_huge_named_corpus_is_refused_with_its_size(tmp_path):
    with open(tmp_path / "huge.txt", "wb") as handle:
        handle.truncate(6 * 10**9)
    line = limited("corpus", "stats", "huge.txt", cwd=tmp_path).error_line
    assert "huge.txt is 6.0 GB" in line and "smaller file" in line


@pytest.mark.parametrize("name", ["config.json", "metrics.jsonl"])
def test_a_json_file_too_big_to_be_ours_is_refused_unread(run_copy, tmp_path, name, monkeypatch):
    target = run_copy / "last" / name if name == "config.json" else run_copy / name
    if name == "metrics.jsonl":
        monkeypatch.setattr(checkpoint_module, "METRICS_LIMIT", 1000)
    else:
        monkeypatch.setattr("charlstm.base.reading.JSON_LIMIT", 1000)
    with open(target, "ab") as handle:
        handle.truncate(10**6 if name == "metrics.jsonl" else 2 * 10**6)
    outcome = main_outcome("info", str(run_copy))
    line = outcome.final_error_line
    assert name in line and "allowed" in line


@pytest.mark.parametrize("shape", [("--layers", "16", "--hidden", "8192", "--emb", "8192"),
                                   ("--layers", "16", "--hidden", "8192", "--emb", "1"),
                                   ("--layers", "8", "--hidden", "8192", "--batch-size", "65536", "--seq-len", "65536")])
def test_a_model_that_cannot_fit_is_refused_up_front(tmp_path, monkeypatch, shape):
    monkeypatch.chdir(tmp_path)
    text_file(tmp_path)
    line = main_outcome("train", "c.txt", "--steps", "1", "--device", "cpu", "--out", "runs", "--name", "big",
                        *shape).final_error_line
    assert "needs about" in line and "this machine has" in line and "smaller" in line
    assert not (tmp_path / "runs" / "big" / "last").exists()


@pytest.mark.parametrize("target", ["/dev/full", "/dev/zero", "fifo", "folder"])
def test_repl_save_never_reads_a_device_or_blocks(trained_run, tmp_path, target):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    outcome = limited("repl", "-c", str(trained_run), "--len", "3", cwd=tmp_path, stdin=f":save {target}\nhi\n", timeout=60)
    assert outcome.code == 1
    no_noise(outcome)
    line = outcome.error_line
    assert target in line and ("not a regular file" in line or "directory" in line) and ("file name" in line or "name of a file" in line)


def test_repl_save_keeps_a_file_that_is_not_a_transcript(trained_run, tmp_path):
    keep = tmp_path / "notes.txt"
    keep.write_bytes(b"my notes\n" * 100)
    before = fingerprint(tmp_path)
    line = limited("repl", "-c", str(trained_run), "--len", "3", cwd=tmp_path, stdin=":save notes.txt\n").error_line
    assert "not a charlstm transcript" in line
    assert fingerprint(tmp_path) == before


def test_a_megabyte_line_in_the_repl_is_read_in_pieces(trained_run, tmp_path):
    outcome = limited("repl", "-c", str(trained_run), "--len", "4", "--seed", "1", cwd=tmp_path,
                      stdin="the " * 250_000 + "\n", timeout=120)
    assert outcome.code == 0, outcome.stderr
    no_noise(outcome)
    assert len(outcome.stdout) >= 1_000_000


@pytest.mark.parametrize("size", [20_000, 300_000])
def test_a_long_prime_is_fed_in_pieces_to_the_same_state(trained_run, size):
    """Reading in pieces must not change the result: the greedy continuation is the same either way."""
    from charlstm.generation import generator

    prime = ("the cat sat. " * size)[:size]
    first = main_outcome("sample", "-c", str(trained_run), "--prime", prime, "--length", "20", "--temp", "0")
    assert first.code == 0, first.stderr
    original = generator.PRIME_CHUNK
    try:
        generator.PRIME_CHUNK = 10**9
        whole = main_outcome("sample", "-c", str(trained_run), "--prime", prime, "--length", "20", "--temp", "0")
    finally:
        generator.PRIME_CHUNK = original
    assert first.stdout[size:] == whole.stdout[size:]


# ---------------------------------------------------------------- class 3: nothing hangs


@pytest.mark.parametrize("args", [("corpus", "stats", "fifo"), ("train", "fifo", "--steps", "1", *TINY_CLI),
                                  ("eval", "fifo", "-c", "RUN"), ("score", "-f", "fifo", "-c", "RUN")])
def test_a_fifo_with_no_writer_is_refused_not_waited_on(trained_run, tmp_path, args):
    os.mkfifo(tmp_path / "fifo")
    args = tuple(str(trained_run) if a == "RUN" else a for a in args)
    line = limited(*args, cwd=tmp_path, timeout=60).error_line
    assert "fifo is a named pipe (FIFO), not a regular file" in line and "text file" in line


@pytest.mark.parametrize("pattern", ["/proc/**/x", "/sys/**/x", "/dev/*", "/proc/*/status", "/dev/**/*.txt"])
def test_patterns_do_not_search_pseudo_filesystems(tmp_path, monkeypatch, pattern):
    monkeypatch.chdir(tmp_path)
    line = main_outcome("corpus", "stats", pattern).error_line
    assert "holds no corpus files" in line and "name a folder" in line


def test_a_pattern_that_walks_too_far_stops_with_a_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for index in range(30):
        (tmp_path / "deep" / str(index)).mkdir(parents=True)
    monkeypatch.setattr(sources, "WALK_LIMIT", 10)
    line = main_outcome("corpus", "stats", "deep/**/x.txt").error_line
    assert "more than 10 files and folders" in line and "narrow it" in line


# ---------------------------------------------------------------- class 4: one line that says what to do

BAD_METRICS_LINES = ["null", '"a string"', "[1, 2]", "true", "42", '{"step": NaN, "val_loss": 1.0}',
                     '{"val_loss": 1.0}', '{"step": "7", "train_loss": 2.0}', '{"step": 3, "train_loss": NaN}',
                     '{"step": 4, "val_loss": Infinity}', '{"step": true, "val_loss": 1}', "{broken"]


@pytest.mark.parametrize("line", BAD_METRICS_LINES + ["INVALID-UTF8"])
def test_malformed_metrics_lines_are_passed_over(run_copy, line):
    metrics = run_copy / "metrics.jsonl"
    data = b"\xff\xfe\x80 bad bytes" if line == "INVALID-UTF8" else line.encode()
    metrics.write_bytes(metrics.read_bytes() + data + b"\n")
    before = fingerprint(run_copy)
    outcome = main_outcome("info", str(run_copy))
    assert outcome.code == 0, outcome.stderr
    no_noise(outcome)
    assert "loss" in outcome.stdout
    assert fingerprint(run_copy) == before


def test_metrics_as_a_folder_is_one_line(run_copy):
    (run_copy / "metrics.jsonl").unlink()
    (run_copy / "metrics.jsonl").mkdir()
    line = main_outcome("info", str(run_copy)).final_error_line
    assert "metrics.jsonl is a folder" in line and "move it aside" in line


WRONG_SECTIONS = {
    "model list": lambda c: c.__setitem__("model", []),
    "model string": lambda c: c.__setitem__("model", "big"),
    "vocab number": lambda c: c.__setitem__("vocab", 5),
    "vocab of numbers": lambda c: c.__setitem__("vocab", list(range(len(c["vocab"])))),
    "train string": lambda c: c.__setitem__("train", "fast"),
    "train list": lambda c: c.__setitem__("train", [1]),
    "corpus number": lambda c: c.__setitem__("corpus", 3),
    "metrics list": lambda c: c.__setitem__("metrics", []),
    "precision number": lambda c: c.__setitem__("precision", 16),
    "batch_size string": lambda c: c["train"].__setitem__("batch_size", "eight"),
    "val_frac string": lambda c: c["train"].__setitem__("val_frac", "tenth"),
    "metric object": lambda c: c["metrics"].__setitem__("val_loss", {"x": 1}),
}


@pytest.mark.parametrize("command", ["sample", "eval", "info"])
@pytest.mark.parametrize("damage", list(WRONG_SECTIONS))
def test_wrongly_typed_config_sections_are_one_line(run_copy, tmp_path, command, damage):
    for tag in ("best", "last"):
        edit_config(run_copy / tag, WRONG_SECTIONS[damage])
    before = fingerprint(run_copy)
    corpus = text_file(tmp_path)
    args = {"sample": ("sample", "-c", str(run_copy), "--length", "3"),
            "eval": ("eval", str(corpus), "-c", str(run_copy)),
            "info": ("info", str(run_copy))}[command]
    line = main_outcome(*args).error_line
    assert "config.json" in line and ("damaged" in line or "invalid settings" in line)
    assert fingerprint(run_copy) == before


def test_config_as_a_folder_is_one_line(run_copy):
    for tag in ("best", "last"):
        (run_copy / tag / "config.json").unlink()
        (run_copy / tag / "config.json").mkdir()
    line = main_outcome("sample", "-c", str(run_copy / "best"), "--length", "3").error_line
    assert "config.json is a folder" in line and "train again" in line


@pytest.mark.parametrize("separator", ["\\x", "\\x4", "\\u12", "\\U0001", "\\N{NO SUCH NAME}", "abc\\"])
def test_a_broken_doc_separator_escape_is_named(tmp_path, monkeypatch, separator):
    monkeypatch.chdir(tmp_path)
    text_file(tmp_path)
    line = main_outcome("train", "c.txt", "--doc-separator", separator, "--steps", "1", *TINY_CLI).error_line
    assert "--doc-separator" in line and "broken escape" in line and "\\\\" in line
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("command", ["train", "stats"])
@pytest.mark.parametrize("encoding", ["rot13", "base64", "hex", "zlib", "bz2", "uu", "klingon", ""])
def test_codecs_that_are_not_text_encodings_are_refused(tmp_path, monkeypatch, command, encoding):
    monkeypatch.chdir(tmp_path)
    text_file(tmp_path)
    args = ("train", "c.txt", "--steps", "1", *TINY_CLI) if command == "train" else ("corpus", "stats", "c.txt")
    line = main_outcome(*args, "--encoding", encoding).error_line
    assert repr(encoding) in line and "--encoding utf-8" in line


@pytest.mark.parametrize("top_p", ["1e-300", "1e-45", "5e-324"])
def test_a_vanishing_top_p_keeps_the_likeliest_character(trained_run, top_p):
    nucleus = main_outcome("sample", "-c", str(trained_run), "--top-p", top_p, "--length", "30", "--seed", "3")
    greedy = main_outcome("sample", "-c", str(trained_run), "--temp", "0", "--length", "30")
    assert nucleus.code == 0, nucleus.stderr
    assert nucleus.stdout == greedy.stdout


def test_a_cache_folder_that_is_a_file_warns_once_and_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text_file(tmp_path)
    blocker = tmp_path / "cache-file"
    blocker.write_bytes(b"not a folder")
    monkeypatch.setenv("CHARLSTM_CACHE_DIR", str(blocker / "sub"))
    outcome = main_outcome("train", "c.txt", "--steps", "2", *TINY_CLI, "--out", "runs", "--name", "r")
    assert outcome.code == 0, outcome.stderr
    no_noise(outcome)
    warnings = [line for line in outcome.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "CHARLSTM_CACHE_DIR" in warnings[0] and "without the cache" in warnings[0]
    assert blocker.read_bytes() == b"not a folder"


def test_a_read_only_folder_for_synth_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir("/proc")  # unwritable even by root
    line = main_outcome("corpus", "synth", "recall", "--out", "x.txt", "--size", "1k").error_line
    assert "x.txt" in line and "another path" in line


@pytest.mark.parametrize("args", [("sample", "--length", "50"), ("eval", "CORPUS", "--json"), ("info",)])
def test_disk_full_on_stdout_is_one_line(trained_run, tmp_path, args):
    text_file(tmp_path)
    args = tuple(str(tmp_path / "c.txt") if a == "CORPUS" else a for a in args)
    command = [sys.executable, "-c", RUNNER.format(limit=ADDRESS_LIMIT), *args]
    if args[0] == "info":
        command.append(str(trained_run))
    else:
        command += ["-c", str(trained_run)]
    with open("/dev/full", "w") as full:
        done = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    outcome = CliOutcome(done.returncode, "", done.stderr.decode())
    assert "No space left on device" in outcome.error_line and "free some space" in outcome.error_line


@pytest.mark.parametrize("args", [("corpus", "stats", "u.txt"), ("eval", "café.txt", "--json", "-c", "RUN"),
                                  ("corpus", "stats", "café.txt")])
def test_an_ascii_only_stdout_is_one_line(trained_run, tmp_path, args):
    text_file(tmp_path, "u.txt", "café naïve — “quoted” text\n" * 20)
    text_file(tmp_path, "café.txt")
    args = tuple(str(trained_run) if a == "RUN" else a for a in args)
    line = limited(*args, cwd=tmp_path, env={"PYTHONIOENCODING": "ascii"}, timeout=60).error_line
    assert "encoding (ascii) cannot show" in line and "PYTHONIOENCODING=utf-8" in line


@pytest.mark.parametrize("failure", ["No space left on device", "Input/output error"])
def test_a_failed_torch_save_says_what_is_safe(tmp_path, monkeypatch, failure):
    monkeypatch.chdir(tmp_path)
    text_file(tmp_path)

    def full_disk(obj, path, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 1024 vs 512 file write failed")

    class Space:
        f_bavail, f_frsize = (0, 4096) if failure.startswith("No space") else (10**6, 4096)

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    monkeypatch.setattr(checkpoint_module.os, "statvfs", lambda path: Space())
    outcome = main_outcome("train", "c.txt", "--steps", "3", *TINY_CLI, "--out", "runs", "--name", "r")
    line = outcome.final_error_line
    assert failure in line and "inline_container" not in line and "free some space" in line


# ---------------------------------------------------------------- class 5: never silently wrong


@pytest.mark.parametrize("temperature", ["1e-300", "1e-100", "1e-30", "1e-12", "1e-7", "5e-324"])
def test_a_vanishing_temperature_is_greedy(trained_run, temperature):
    cold = main_outcome("sample", "-c", str(trained_run), "--temp", temperature, "--length", "60", "--seed", "9")
    greedy = main_outcome("sample", "-c", str(trained_run), "--temp", "0", "--length", "60")
    assert cold.code == 0, cold.stderr
    no_noise(cold)
    assert cold.stdout == greedy.stdout


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("command", ["sample", "eval", "score", "inspect"])
def test_weights_that_are_not_finite_are_refused(run_copy, tmp_path, value, command):
    for tag in ("best", "last"):
        path = run_copy / tag / "model.safetensors"
        weights = load_file(str(path))
        name = sorted(weights)[0]
        weights[name].view(-1)[0] = value
        save_file(weights, str(path))
    before = fingerprint(run_copy)
    corpus = text_file(tmp_path)
    args = {"sample": ("sample", "--length", "3"), "eval": ("eval", str(corpus)),
            "score": ("score", "the cat"), "inspect": ("inspect", "the cat")}[command]
    line = main_outcome(*args, "-c", str(run_copy)).error_line
    assert "NaN or infinite weights" in line and "train again" in line
    assert fingerprint(run_copy) == before


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_eval_json_never_prints_bare_nan(trained_run, tmp_path, monkeypatch, bad):
    corpus = text_file(tmp_path)
    real = scoring.evaluate_text

    def broken(*args, **kwargs):
        result = real(*args, **kwargs)
        result.loss = bad
        return result

    monkeypatch.setattr(scoring, "evaluate_text", broken)
    outcome = main_outcome("eval", str(corpus), "-c", str(trained_run), "--json")
    assert outcome.code == 0, outcome.stderr
    figures = json.loads(outcome.stdout, parse_constant=lambda name: pytest.fail(f"bare {name} in JSON"))
    assert figures["loss"] is None and figures["perplexity"] is None


@pytest.mark.parametrize("count", ["201", "1000", "999999999"])
def test_a_min_char_count_above_every_count_is_refused(tmp_path, monkeypatch, count):
    monkeypatch.chdir(tmp_path)
    text_file(tmp_path)  # its commonest characters appear 200 times
    line = main_outcome("train", "c.txt", "--min-char-count", count, "--steps", "1", *TINY_CLI, "--out", "runs").error_line
    assert f"--min-char-count {count}" in line and "smaller --min-char-count" in line
    assert not (tmp_path / "runs").exists()


def test_an_unreadable_subfolder_is_noted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "corpus"
    (folder / "locked").mkdir(parents=True)
    text_file(folder)
    text_file(folder / "locked", "inside.txt")
    real = os.scandir

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    outcome = main_outcome("corpus", "stats", "corpus")
    assert outcome.code == 0, outcome.stderr
    no_noise(outcome)
    assert "locked" in outcome.stderr and "Permission denied" in outcome.stderr


@pytest.mark.parametrize("columns", ["0", "1", "5"])
@pytest.mark.parametrize("command", ["info", "eval", "score"])
def test_a_tiny_columns_still_prints(trained_run, tmp_path, monkeypatch, columns, command):
    corpus = text_file(tmp_path)
    monkeypatch.setenv("COLUMNS", columns)
    args = {"info": ("info", str(trained_run)), "eval": ("eval", str(corpus), "-c", str(trained_run)),
            "score": ("score", "the cat sat", "-c", str(trained_run))}[command]
    outcome = main_outcome(*args)
    assert outcome.code == 0, outcome.stderr
    no_noise(outcome)
    assert len(outcome.stdout.strip()) > 40


@pytest.mark.parametrize("args", [("sample", "--length", "200000"), ("sample", "--length", "5000", "-n", "8"),
                                  ("eval", "CORPUS", "--json"), ("info",)])
def test_a_reader_that_stops_early_is_not_an_error(trained_run, tmp_path, args):
    big = text_file(tmp_path, "big.txt", "the cat sat on the mat.\n" * 5000)
    args = tuple(str(big) if a == "CORPUS" else a for a in args)
    command = [sys.executable, "-c", RUNNER.format(limit=ADDRESS_LIMIT), *args]
    command += [str(trained_run)] if args[0] == "info" else ["-c", str(trained_run)]
    producer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "80"})
    assert producer.stdout is not None and producer.stderr is not None
    producer.stdout.read(1)
    producer.stdout.close()
    error = producer.stderr.read().decode()
    assert producer.wait(timeout=60) == 0, error
    assert error == ""


@pytest.mark.parametrize("meta", [b"null", b"[1]", b"\xff\xfe", b"", "FOLDER"])
def test_a_damaged_cache_entry_is_encoded_afresh(tmp_path, monkeypatch, private_corpus_cache, meta):
    monkeypatch.chdir(tmp_path)
    text_file(tmp_path)
    assert main_outcome("corpus", "stats", "c.txt").code == 0
    first = main_outcome("train", "c.txt", "--steps", "1", *TINY_CLI, "--out", "runs", "--name", "a")
    assert first.code == 0, first.stderr
    for entry in private_corpus_cache.glob("*.json"):
        entry.unlink()
        if meta == "FOLDER":
            entry.mkdir()
        else:
            entry.write_bytes(meta)
    outcome = main_outcome("train", "c.txt", "--steps", "1", *TINY_CLI, "--out", "runs", "--name", "b")
    assert outcome.code == 0, outcome.stderr
    no_noise(outcome)
