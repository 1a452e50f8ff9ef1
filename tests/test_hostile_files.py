"""Issue 15, class 1: never destroy or misplace what the user has.

Every command case checks the exit status, that stderr is one ``error:`` line naming the thing and
the remedy (no traceback, nothing "unexpected"), and that every file there before is byte-identical
after. Servers bind 127.0.0.1 only and every wait on them is bounded by shortened module timeouts.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import pytest
from conftest import TINY_CLI, main_outcome, make_text

import charlstm
from charlstm.base.errors import CharlstmError, CheckpointError
from charlstm.base.fsutil import FileLock, write_output
from charlstm.data import catalogue
from charlstm.training import checkpoint
from charlstm.training.checkpoint import check_run_name, config_json, safe_run_stem

TEXT = ("It is a truth universally acknowledged.\n" * 200).encode()


def tree(root: Path) -> dict[str, str]:
    """Every regular file under ``root`` and the SHA-256 of its bytes."""
    hashes = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            hashes[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def assert_kept(before: dict[str, str], root: Path) -> None:
    after = tree(root)
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    assert not changed, f"changed or removed: {changed}"


def refused(outcome, *words: str, code: int = 1) -> str:
    """The one error line, checked to name each of ``words``."""
    assert outcome.code == code, outcome.stderr
    line = outcome.error_line
    for word in words:
        assert word in line, line
    return line


# --- class 1: corpus get --------------------------------------------------------------------------


class Server:
    """A 127.0.0.1 server whose handler is ``serve(handler)``; shut down on exit, however the test ends."""

    def __init__(self, serve: Callable[[BaseHTTPRequestHandler], None]):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                try:
                    serve(self)
                except OSError:
                    pass  # the client gave up, as it should

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self) -> "Server":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def send_whole(body: bytes) -> Callable[[BaseHTTPRequestHandler], None]:
    def serve(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return serve


def write_catalogue(root: Path, address: str, body: bytes, **fields: object) -> Path:
    item = {"name": "austen", "description": "test text", "url": address, "size": len(body),
            "sha256": hashlib.sha256(body).hexdigest(), "sha256_source": "the test", "licence": "test",
            "unpack": "none", "file": "austen.txt", "text_file": "austen.txt", **fields}
    path = root / "catalogue.json"
    path.write_text(json.dumps({"corpora": [item]}))
    return path


@pytest.fixture
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalogue, "IDLE_TIMEOUT", 0.5)
    monkeypatch.setattr(catalogue, "TOTAL_TIMEOUT", 1.5)


@contextmanager
def served(root: Path, serve: Callable[[BaseHTTPRequestHandler], None], body: bytes = TEXT, **fields: object) -> Iterator[Path]:
    with Server(serve) as server:
        yield write_catalogue(root, server.url("/austen.txt"), body, **fields)


def get(catalogue_path: Path, *extra: str):
    return main_outcome("corpus", "--catalogue", str(catalogue_path), "get", "austen", *extra)


@pytest.mark.parametrize("directory", ["corpora", "."])
def test_a_users_own_file_at_the_target_is_kept_and_refused(tmp_path, monkeypatch, directory):
    monkeypatch.chdir(tmp_path)
    Path(directory).mkdir(exist_ok=True)
    (Path(directory) / "austen.txt").write_text("my own notes, not the corpus\n")
    with served(tmp_path, send_whole(TEXT)) as cat:
        before = tree(tmp_path)
        refused(get(cat, "--dir", directory), "austen.txt", "left as it is", "move it away", "--dir")
    assert_kept(before, tmp_path)


@pytest.mark.parametrize("unpack", ["gzip", "zip"])
def test_a_users_own_text_beside_an_archive_is_kept(tmp_path, monkeypatch, unpack):
    import io
    import zipfile

    monkeypatch.chdir(tmp_path)
    if unpack == "gzip":
        body = gzip.compress(TEXT)
    else:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as bundle:
            bundle.writestr("austen.txt", TEXT)
        body = buffer.getvalue()
    Path("corpora").mkdir()
    Path("corpora/austen.txt").write_text("the user's own austen.txt\n")
    with served(tmp_path, send_whole(body), body, unpack=unpack, file="austen.archive") as cat:
        before = tree(tmp_path)
        refused(get(cat), "austen.txt", "is not the text of austen.archive", "move it away")
    assert_kept(before, tmp_path)


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_folder_or_fifo_at_the_target_is_refused_untouched(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    Path("corpora").mkdir()
    if kind == "directory":
        Path("corpora/austen.txt").mkdir()
        Path("corpora/austen.txt/keep").write_text("mine")
    else:
        os.mkfifo("corpora/austen.txt")
    with served(tmp_path, send_whole(TEXT)) as cat:
        before = tree(tmp_path)
        refused(get(cat), "austen.txt", "not a regular file", "move it away")
    assert_kept(before, tmp_path)
    assert Path("corpora/austen.txt").is_dir() if kind == "directory" else Path("corpora/austen.txt").is_fifo()


@pytest.mark.parametrize("key, value", [
    ("file", "../escape.txt"), ("file", "/tmp/absolute.txt"), ("file", "sub/dir.txt"), ("file", "back\\slash.txt"),
    ("file", ".."), ("file", ""), ("file", ".hidden"), ("file", "austen.txt.part"),
    ("text_file", "../../etc/passwd"), ("text_file", "nested/austen.txt"),
])
def test_catalogue_names_that_leave_the_folder_are_refused_when_read(tmp_path, monkeypatch, key, value):
    monkeypatch.chdir(tmp_path)
    cat = write_catalogue(tmp_path, "http://127.0.0.1:9/austen.txt", TEXT, **{key: value})
    before = tree(tmp_path)
    for args in (["list"], ["get", "austen"]):
        outcome = main_outcome("corpus", "--catalogue", str(cat), *args)
        refused(outcome, "austen", key, "not a plain file name", "fix the catalogue")
    assert_kept(before, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalogue.json"]


@pytest.mark.parametrize("field, value, words", [
    ("url", "file:///etc/passwd", ("only http and https",)),
    ("size", -5, ("byte count",)),
    ("size", "100", ("byte count",)),
])
def test_catalogue_urls_and_sizes_that_cannot_be_honoured_are_refused(tmp_path, monkeypatch, field, value, words):
    monkeypatch.chdir(tmp_path)
    cat = write_catalogue(tmp_path, "http://127.0.0.1:9/austen.txt", TEXT, **{field: value})
    refused(get(cat), "austen", field, *words)
    assert not Path("corpora").exists()


def drip(handler: BaseHTTPRequestHandler, pause: float, announce: bool = True) -> None:
    handler.send_response(200)
    if announce:
        handler.send_header("Content-Length", str(len(TEXT)))
    handler.end_headers()
    for byte in TEXT[:40]:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(pause)


@pytest.mark.parametrize("pause, words", [
    (2.0, ("stalled", "sent nothing for 0.5 s", "run the same command again")),  # silent past the idle limit
    (0.1, ("took longer than 1.5 s", "run the same command again")),  # a drip that never ends
])
def test_a_slow_server_ends_in_an_error_and_the_part_is_kept_for_resuming(tmp_path, monkeypatch, short_timeouts, pause, words):
    monkeypatch.chdir(tmp_path)
    with served(tmp_path, lambda handler: drip(handler, pause)) as cat:
        refused(get(cat), "austen", *words)
    assert not Path("corpora/austen.txt").exists()
    assert TEXT.startswith(Path("corpora/austen.txt.part").read_bytes())


def flood(handler: BaseHTTPRequestHandler, announce: bool) -> None:
    handler.send_response(200)
    if announce:
        handler.send_header("Content-Length", str(50_000_000))
    handler.end_headers()
    for _ in range(800):  # up to 50 MB, in pieces; the client stops reading long before
        handler.wfile.write(b"x" * 65536)


@pytest.mark.parametrize("announce, words", [
    (True, ("announces 50000000 bytes", "catalogue says 8000")),
    (False, ("sent more than 8000 bytes", "the download was deleted")),
])
def test_a_server_sending_more_than_the_entry_is_cut_off(tmp_path, monkeypatch, short_timeouts, announce, words):
    monkeypatch.chdir(tmp_path)
    with served(tmp_path, lambda handler: flood(handler, announce)) as cat:
        refused(get(cat), "austen", *words)
    assert list(Path("corpora").iterdir()) == []


def test_only_the_commands_own_download_is_deleted_on_a_checksum_mismatch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("corpora").mkdir()
    Path("corpora/other.txt").write_text("unrelated")
    changed = TEXT.replace(b"truth", b"TRUTH")
    with served(tmp_path, send_whole(changed), TEXT) as cat:
        before = tree(tmp_path)
        refused(get(cat), "checksum mismatch for austen", "the download was deleted", "run the command again")
    assert_kept(before, tmp_path)
    assert sorted(p.name for p in Path("corpora").iterdir()) == ["other.txt"]


def test_a_verified_copy_already_there_is_used_as_it_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("corpora").mkdir()
    Path("corpora/austen.txt").write_bytes(TEXT)
    with served(tmp_path, send_whole(b"never asked for")) as cat:
        before = tree(tmp_path)
        outcome = get(cat)
    assert outcome.code == 0, outcome.stderr
    assert outcome.stdout.strip() == os.path.join("corpora", "austen.txt")
    assert_kept(before, tmp_path)


# --- class 2: files written where the user said --------------------------------------------------


def make_target(kind: str) -> str:
    """A hostile thing at ./target, in the current folder (a socket's path must stay short)."""
    if kind == "user-file":
        Path("target").write_text("the user's own work\n")
    elif kind == "fifo":
        os.mkfifo("target")
    elif kind == "socket":
        listener = socket.socket(socket.AF_UNIX)
        listener.bind("target")
        listener.close()
    elif kind == "devnull":
        return os.devnull
    return "target"


def output_command(command: str, target: str, run: Path) -> list[str]:
    if command == "score":
        return ["score", "the cat sat", "-c", str(run), "--html", target]
    if command == "plot":
        return ["plot", str(run), "-o", target]
    return ["corpus", "synth", "recall", "--size", "2k", "--out", target]


OUTPUT_COMMANDS = ["score", "plot", "synth"]


@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
@pytest.mark.parametrize("kind, words", [
    ("user-file", ("already exists", "not charlstm's output", "--force")),
    ("fifo", ("a FIFO, not a file",)),
    ("socket", ("a socket, not a file",)),
    ("devnull", ("a device, not a file",)),
])
def test_outputs_never_replace_a_users_file_nor_write_through_a_special_one(tmp_path, monkeypatch, trained_run, command, kind, words):
    monkeypatch.chdir(tmp_path)
    target = make_target(kind)
    before, run_before = tree(tmp_path), tree(trained_run)
    mode = os.stat(target).st_mode
    args = output_command(command, target, trained_run) + ([] if kind == "user-file" else ["--force"])
    refused(main_outcome(*args), target, *words)
    assert_kept(before, tmp_path)
    assert_kept(run_before, trained_run)
    assert os.stat(target).st_mode == mode  # a device stays a device
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging file left


@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_a_folder_as_output_is_refused_in_one_line(tmp_path, monkeypatch, trained_run, command):
    monkeypatch.chdir(tmp_path)
    Path("target").mkdir()
    Path("target/keep").write_text("mine")
    before = tree(tmp_path)
    refused(main_outcome(*output_command(command, "target", trained_run), "--force"), "target", "is a directory", code=2)
    assert_kept(before, tmp_path)


needs_matplotlib = pytest.mark.skipif(
    __import__("importlib").util.find_spec("matplotlib") is None, reason="plot needs matplotlib")


@pytest.mark.parametrize("command", [c if c != "plot" else pytest.param(c, marks=needs_matplotlib) for c in OUTPUT_COMMANDS])
def test_own_earlier_output_is_replaced_and_force_replaces_a_users_file(tmp_path, monkeypatch, trained_run, command):
    monkeypatch.chdir(tmp_path)
    run_before = tree(trained_run)
    first = main_outcome(*output_command(command, "out", trained_run))
    assert first.code == 0, first.stderr
    again = main_outcome(*output_command(command, "out", trained_run))
    assert again.code == 0, again.stderr  # charlstm's own output: no --force needed
    Path("mine").write_text("the user's\n")
    forced = main_outcome(*output_command(command, "mine", trained_run), "--force")
    assert forced.code == 0, forced.stderr
    assert Path("mine").read_bytes() != b"the user's\n"
    assert_kept(run_before, trained_run)


def test_an_edited_synthetic_text_is_the_users_and_is_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main_outcome("corpus", "synth", "recall", "--size", "2k", "--out", "s.txt").code == 0
    with open("s.txt", "a") as handle:
        handle.write("my edit\n")
    before = tree(tmp_path)
    refused(main_outcome("corpus", "synth", "recall", "--size", "2k", "--out", "s.txt"), "s.txt", "--force")
    assert_kept(before, tmp_path)


def test_a_users_file_where_the_sidecar_goes_is_kept_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("s.txt.synth.json").write_text('{"mine": true}')
    before = tree(tmp_path)
    refused(main_outcome("corpus", "synth", "recall", "--size", "2k", "--out", "s.txt"), "s.txt.synth.json", "--force")
    assert_kept(before, tmp_path)
    assert not Path("s.txt").exists()  # checked both before writing either


def test_the_writer_refuses_a_device_even_when_forced(tmp_path):
    with pytest.raises(CharlstmError, match="a device, not a file"):
        write_output(Path(os.devnull), b"x", force=True)
    assert Path(os.devnull).is_char_device()


# --- class 3: one writer per run ----------------------------------------------------------------


def train_args(corpus: Path, out: Path, name: str, *extra: str) -> list[str]:
    return ["train", str(corpus), "--out", str(out), "--name", name, "--steps", "4", *TINY_CLI, *extra]


HOLD = "import fcntl, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\nfcntl.flock(fd, fcntl.LOCK_EX)\n" \
       "os.write(fd, str(os.getpid()).encode())\nprint('held', flush=True)\nsys.stdin.read()\n"


@contextmanager
def held_by_another_process(lock: Path) -> Iterator[int]:
    """A separate process holds ``lock`` until the block ends (it exits when its stdin closes)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


@pytest.fixture
def finished_run(tmp_path, tiny_corpus_file) -> Path:
    outcome = main_outcome(*train_args(tiny_corpus_file, tmp_path / "runs", "r"))
    assert outcome.code == 0, outcome.stderr
    return tmp_path / "runs" / "r"


@pytest.mark.parametrize("how", ["again", "resume"])
def test_a_run_being_trained_is_refused_naming_the_process(finished_run, tiny_corpus_file, how):
    before = tree(finished_run)
    with held_by_another_process(finished_run / ".lock") as pid:
        if how == "resume":
            outcome = main_outcome("train", "--resume", str(finished_run), "--steps", "8")
        else:
            outcome = main_outcome(*train_args(tiny_corpus_file, finished_run.parent, "r"))
        refused(outcome, str(finished_run), f"process {pid}", "wait for it to finish")
    assert_kept(before, finished_run)
    assert charlstm.load(finished_run).name == "r"


def test_a_new_run_is_refused_while_another_process_starts_it(tmp_path, tiny_corpus_file):
    run = tmp_path / "runs" / "fresh"
    run.mkdir(parents=True)
    with held_by_another_process(run / ".lock") as pid:
        refused(main_outcome(*train_args(tiny_corpus_file, tmp_path / "runs", "fresh")), f"process {pid}")
    assert [p.name for p in run.iterdir() if p.name != ".lock"] == []  # the holder's lock file only


def test_a_stale_lock_is_taken_over_and_the_lock_goes_with_the_run(finished_run):
    (finished_run / ".lock").write_text("999999999\n")  # left by a process killed mid-run: nobody holds it
    outcome = main_outcome("train", "--resume", str(finished_run), "--steps", "8")
    assert outcome.code == 0, outcome.stderr
    assert not (finished_run / ".lock").exists()
    assert charlstm.load(finished_run, prefer="last").config["metrics"]["step"] == 8


def test_the_lock_refuses_a_second_holder_in_the_same_process(tmp_path):
    first, second = FileLock(tmp_path / ".lock"), FileLock(tmp_path / ".lock")
    first.acquire()
    with pytest.raises(Exception, match=str(os.getpid())):
        second.acquire()
    first.release()
    second.acquire()  # free again once released
    second.release()


# --- class 4: run names ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "r/last", "a\\b", ".hidden", "x" * 201, "nul\0byte", "é" * 101])
def test_run_names_that_are_not_one_plain_folder_are_refused(finished_run, tiny_corpus_file, name):
    root = finished_run.parent
    before = tree(root.parent)
    refused(main_outcome(*train_args(tiny_corpus_file, root, name)), "run name", "--name")
    assert_kept(before, root.parent)
    assert sorted(p.name for p in root.iterdir()) == ["r"]
    assert charlstm.load(finished_run).name == "r"


@pytest.mark.parametrize("stem, expected", [
    (".hidden", "hidden"), ("caf\udce9", "caf_"), ("tab\there", "tab_here"), ("x" * 300, "x" * 168), ("...", "corpus"),
])
def test_default_run_names_from_a_corpus_stem_are_valid(stem, expected):
    assert safe_run_stem(stem) == expected
    assert check_run_name(safe_run_stem(stem) + "-20250101-000000")


# --- class 5: what fails at save time is checked first, and a failed save loses nothing ----------


def test_a_corpus_named_in_invalid_utf8_trains_saves_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = os.fsdecode(b"caf\xe9.txt")
    Path(name).write_text(make_text(800))
    outcome = main_outcome("train", name, "--out", "runs", "--steps", "4", *TINY_CLI)
    assert outcome.code == 0, outcome.stderr
    (run,) = Path("runs").iterdir()
    assert run.name.startswith("caf_-")
    loaded = charlstm.load(run)
    assert loaded.config["corpus"]["source"].endswith(name)  # the same name, read back
    resumed = main_outcome("train", "--resume", str(run), "--steps", "8")
    assert resumed.code == 0, resumed.stderr


def test_config_json_keeps_undecodable_names_exactly():
    config = {"corpus": {"source": os.fsdecode(b"/data/\xff\xfe.txt")}, "vocab": ["é", "\U0001f600"]}
    text = config_json(config)
    text.encode("utf-8")  # writable as UTF-8
    assert json.loads(text) == config


@pytest.mark.parametrize("failing", ["best", "last"])
def test_a_failing_save_leaves_the_previous_checkpoints_byte_identical(finished_run, monkeypatch, failing):
    before = tree(finished_run)
    real = checkpoint.save_file

    def full_disk(tensors, filename, metadata=None):
        if f".{failing}.tmp-" in filename:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    outcome = main_outcome("train", "--resume", str(finished_run), "--steps", "8", "--eval-every", "2")
    line = outcome.final_error_line
    assert f"could not write the {failing} checkpoint" in line and "No space left on device" in line
    for name, digest in before.items():
        if name.startswith(f"{failing}/"):
            assert tree(finished_run).get(name) == digest, name
    assert charlstm.load(finished_run, prefer=failing).config["metrics"]["step"] == 4
    assert sorted(p.name for p in finished_run.iterdir()) == ["best", "last", "metrics.jsonl", "summary.json"]


def test_an_unwritable_config_is_refused_before_training(tmp_path, tiny_corpus_file, monkeypatch):
    def cannot(config):
        raise ValueError("not serialisable")

    monkeypatch.setattr("charlstm.training.run_writer.config_json", cannot)
    outcome = main_outcome(*train_args(tiny_corpus_file, tmp_path / "runs", "x"))
    refused(outcome, "cannot be saved in config.json", "report it as a bug")
    assert not (tmp_path / "runs" / "x" / "last").exists()


def test_the_run_name_check_is_also_the_apis(tmp_path):
    with pytest.raises(CheckpointError, match="path separator"):
        check_run_name("a/b")
