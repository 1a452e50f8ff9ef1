"""`charlstm corpus get` against a small HTTP server on 127.0.0.1 that honours Range requests."""

import gzip
import hashlib
import io
import json
import os
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from charlstm.base.errors import CorpusError
from charlstm.data.catalogue import fetch, find_entry, load_catalogue

TEXT = ("To be, or not to be, that is the question.\n" * 2000).encode()


class RangeServer:
    """Serves ``files``; the first request for a path in ``cut_after`` stops after that many bytes."""

    def __init__(self, files, cut_after=None):
        self.files, self.cut_after, self.ranges = files, dict(cut_after or {}), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                requested = self.headers.get("Range")
                server.ranges.append(requested)
                start = int(requested.split("=")[1].rstrip("-")) if requested else 0
                if start >= len(body):
                    self.send_error(416)
                    return
                self.send_response(206 if requested else 200)
                if requested:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cut = server.cut_after.pop(self.path, None)
                self.wfile.write(body[start:cut] if cut is not None else body[start:])
                if cut is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def zipped(name, data):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def catalogue_file(tmp_path, server, entries):
    items = []
    for name, path, body, unpack, extra in entries:
        items.append({
            "name": name, "description": f"{name} for tests", "url": server.url(path), "size": len(body),
            "sha256": hashlib.sha256(body).hexdigest(), "sha256_source": "computed by the test", "licence": "test",
            "unpack": unpack, "file": os.path.basename(path), "text_file": name + ".txt", **extra})
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps({"corpora": items}))
    return path


@pytest.fixture
def served(tmp_path):
    files = {"/plain.txt": TEXT, "/bundle.zip": zipped("inner.txt", TEXT), "/packed.gz": gzip.compress(TEXT)}
    with RangeServer(files) as server:
        catalogue = catalogue_file(tmp_path, server, [
            ("plain", "/plain.txt", TEXT, "none", {"text_file": "plain.txt"}),
            ("bundle", "/bundle.zip", files["/bundle.zip"], "zip", {"member": "inner.txt"}),
            ("packed", "/packed.gz", files["/packed.gz"], "gzip", {}),
        ])
        yield server, catalogue


def test_get_downloads_verifies_and_unpacks_each_kind(tmp_path, served):
    _, catalogue = served
    entries = load_catalogue(catalogue)
    for name in ("plain", "bundle", "packed"):
        result = fetch(find_entry(entries, name), tmp_path / "corpora")
        assert result.downloaded and result.verified and result.path.read_bytes() == TEXT
    again = fetch(find_entry(entries, "plain"), tmp_path / "corpora")
    assert not again.downloaded and again.path.read_bytes() == TEXT


def test_an_interrupted_download_resumes_where_it_stopped(tmp_path):
    with RangeServer({"/plain.txt": TEXT}, cut_after={"/plain.txt": 30_000}) as server:
        entry = load_catalogue(catalogue_file(tmp_path, server, [("plain", "/plain.txt", TEXT, "none", {})]))[0]
        with pytest.raises(CorpusError, match="interrupted after 30000 .*run the same command again"):
            fetch(entry, tmp_path / "corpora")
        assert (tmp_path / "corpora" / "plain.txt.part").stat().st_size == 30_000
        result = fetch(entry, tmp_path / "corpora")
    assert server.ranges == [None, "bytes=30000-"]
    assert result.path.read_bytes() == TEXT and not (tmp_path / "corpora" / "plain.txt.part").exists()


def test_a_checksum_mismatch_deletes_the_download(tmp_path):
    with RangeServer({"/plain.txt": TEXT.replace(b"question", b"QUESTION")}) as server:
        entry = load_catalogue(catalogue_file(tmp_path, server, [("plain", "/plain.txt", TEXT, "none", {})]))[0]
        with pytest.raises(CorpusError, match="checksum mismatch for plain.*deleted"):
            fetch(entry, tmp_path / "corpora")
    assert list((tmp_path / "corpora").iterdir()) == []


def test_unknown_names_suggest_the_closest_and_unknown_checksums_are_refused(tmp_path, served):
    _, catalogue = served
    entries = load_catalogue(catalogue)
    with pytest.raises(CorpusError, match="did you mean 'bundle'"):
        find_entry(entries, "bundel")
    raw = json.loads(catalogue.read_text())
    raw["corpora"][0]["sha256"] = None
    catalogue.write_text(json.dumps(raw))
    with pytest.raises(CorpusError, match="no published SHA-256.*--unverified"):
        fetch(load_catalogue(catalogue)[0], tmp_path / "corpora")
    assert not fetch(load_catalogue(catalogue)[0], tmp_path / "corpora", allow_unverified=True).verified


def test_the_shipped_catalogue_is_complete_and_never_invents_a_checksum():
    entries = load_catalogue()
    names = {entry.name for entry in entries}
    assert {"tinyshakespeare", "warpeace", "enwik8", "text8"} <= names
    for entry in entries:
        assert entry.sha256 is None or len(entry.sha256) == 64
        assert entry.sha256_source


def run_cli(run_main, *args, cwd, catalogue):
    return run_main(*args, cwd=cwd, env={"CHARLSTM_CATALOGUE": str(catalogue)})


def test_corpus_get_prints_the_path_to_train_on(tmp_path, served, run_main):
    _, catalogue = served
    done = run_cli(run_main, "corpus", "get", "bundle", "--dir", "data", cwd=tmp_path, catalogue=catalogue)
    assert done.returncode == 0, done.stderr
    assert done.stdout == os.path.join("data", "bundle.txt") + "\n"
    listed = run_cli(run_main, "corpus", "list", cwd=tmp_path, catalogue=catalogue)
    assert listed.returncode == 0 and "bundle" in listed.stdout and "packed" in listed.stdout


def test_bad_corpus_requests_end_in_one_error_line(tmp_path, run_main):
    with RangeServer({"/plain.txt": TEXT[:-1] + b"?"}, cut_after={}) as server:
        catalogue = catalogue_file(tmp_path, server, [("plain", "/plain.txt", TEXT, "none", {})])
        for args, message in [(["corpus", "get", "plian"], "did you mean 'plain'"),
                              (["corpus", "get", "plain"], "checksum mismatch")]:
            done = run_cli(run_main, *args, cwd=tmp_path, catalogue=catalogue)
            lines = done.stderr.strip().splitlines()
            assert done.returncode != 0 and len(lines) == 1, done.stderr
            assert lines[0].startswith("error:") and message in lines[0]


def test_an_interrupted_command_line_download_resumes(tmp_path, run_main):
    with RangeServer({"/plain.txt": TEXT}, cut_after={"/plain.txt": 10_000}) as server:
        catalogue = catalogue_file(tmp_path, server, [("plain", "/plain.txt", TEXT, "none", {})])
        first = run_cli(run_main, "corpus", "get", "plain", cwd=tmp_path, catalogue=catalogue)
        assert first.returncode != 0 and first.stderr.strip().splitlines()[-1].startswith("error:")
        assert "interrupted" in first.stderr
        second = run_cli(run_main, "corpus", "get", "plain", cwd=tmp_path, catalogue=catalogue)
    assert second.returncode == 0, second.stderr
    assert "resuming plain from byte 10,000" in second.stderr
    assert (tmp_path / "corpora" / "plain.txt").read_bytes() == TEXT


def test_a_wheel_carries_the_catalogue_and_an_install_finds_it(tmp_path, monkeypatch):
    """A wheel has no corpora/ folder: the catalogue travels as data-files under <scheme data>/share/charlstm."""
    import shutil
    import subprocess
    import sys
    import sysconfig
    import zipfile
    from pathlib import Path

    from charlstm.data import catalogue

    root = Path(catalogue.__file__).resolve().parents[2]
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(root / "charlstm", source / "charlstm", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(root / "corpora", source / "corpora")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("charlstm-*.whl")
    with zipfile.ZipFile(wheel) as archive:  # the shipped base model and the C cell update travel as package data
        assert {"charlstm/shipped/base/model.safetensors", "charlstm/shipped/base/config.json",
                "charlstm/model/lstm_layer.c"} <= set(archive.namelist())
    prefix = tmp_path / "prefix"  # --ignore-installed: never uninstall the charlstm that runs these tests
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--ignore-installed", "--prefix", str(prefix), str(wheel)],
                   check=True, capture_output=True)
    installed = prefix / "share" / "charlstm" / "corpora" / "catalogue.json"
    assert installed.read_bytes() == (root / "corpora" / "catalogue.json").read_bytes()
    assert Path(sysconfig.get_path("data")) / catalogue.INSTALLED_CATALOGUE in catalogue.installed_catalogues()

    monkeypatch.setattr(catalogue, "SOURCE_CATALOGUE", tmp_path / "no-checkout" / "catalogue.json")
    monkeypatch.setattr(sys, "prefix", str(prefix))
    monkeypatch.delenv(catalogue.CATALOGUE_ENV, raising=False)
    assert catalogue.default_catalogue() == installed
    assert {entry.name for entry in load_catalogue()} >= {"tinyshakespeare", "warpeace"}
