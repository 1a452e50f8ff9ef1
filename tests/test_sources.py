import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, make_text, tiny_train_config

from charlstm import ModelConfig, Trainer
from charlstm.base.errors import CorpusError
from charlstm.data.cache import CorpusCache
from charlstm.data.corpus import UNKNOWN_CHAR, Corpus, TextOptions
from charlstm.data.sources import load_corpus
from charlstm.generation.generator import Generator


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def test_a_folder_is_its_files_in_sorted_order_joined_by_the_separator(tmp_path):
    write(tmp_path / "poems" / "b.txt", "second")
    write(tmp_path / "poems" / "a.txt", "first")
    write(tmp_path / "poems" / "sub" / "c.txt", "third")
    loaded = load_corpus([tmp_path / "poems"], separator="\n--\n")
    corpus = loaded.corpus
    assert corpus.vocab.decode(corpus.ids) == "first\n--\nsecond\n--\nthird"
    assert [os.path.basename(f.path) for f in corpus.files] == ["a.txt", "b.txt", "c.txt"]
    assert loaded.skipped == []


def test_a_pattern_and_named_files(tmp_path):
    write(tmp_path / "x.txt", "xx")
    write(tmp_path / "y.txt", "yy")
    write(tmp_path / "z.md", "zz")
    by_pattern = load_corpus([str(tmp_path / "*.txt")]).corpus
    assert by_pattern.vocab.decode(by_pattern.ids) == "xx\nyy"
    named = load_corpus([tmp_path / "z.md", tmp_path / "x.txt"]).corpus
    assert named.vocab.decode(named.ids) == "zz\nxx"  # named files keep the order given


def test_non_text_files_in_a_folder_are_skipped_and_reported(tmp_path):
    write(tmp_path / "a.txt", "text")
    write(tmp_path / "image.png", b"\x89PNG\r\n\x1a\n\x00\x00")
    write(tmp_path / "empty.txt", b"")
    loaded = load_corpus([tmp_path])
    assert loaded.corpus.vocab.decode(loaded.corpus.ids) == "text"
    assert sorted((p.name, why) for p, why in [(s.path, s.reason) for s in loaded.skipped]) == [
        ("empty.txt", "empty"), ("image.png", "not a text file (binary)")]


def test_undecodable_files_in_a_folder_fail_or_are_skipped_as_chosen(tmp_path):
    write(tmp_path / "good.txt", "good")
    write(tmp_path / "latin.txt", b"caf\xe9")
    with pytest.raises(CorpusError, match="latin.txt is not valid utf-8.*--undecodable skip"):
        load_corpus([tmp_path])
    loaded = load_corpus([tmp_path], undecodable="skip")
    assert loaded.corpus.vocab.decode(loaded.corpus.ids) == "good"
    assert [s.path.name for s in loaded.skipped] == ["latin.txt"]


def test_empty_folders_and_folders_without_text_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="holds no files"):
        load_corpus([tmp_path / "empty"])
    write(tmp_path / "binary" / "a.bin", b"\x00\x01")
    with pytest.raises(CorpusError, match="no text files"):
        load_corpus([tmp_path / "binary"])
    with pytest.raises(CorpusError, match="no files match"):
        load_corpus([str(tmp_path / "*.nothing")])


def test_second_load_is_memory_mapped_from_the_cache_and_a_change_invalidates_it(tmp_path):
    cache = CorpusCache(tmp_path / "cache")
    path = write(tmp_path / "c.txt", "hello cache\n" * 100)
    first = load_corpus([path], cache=cache)
    second = load_corpus([path], cache=cache)
    assert not first.from_cache and second.from_cache
    assert isinstance(second.corpus.ids, np.memmap)
    assert np.array_equal(first.corpus.ids, second.corpus.ids) and first.corpus.vocab == second.corpus.vocab
    assert load_corpus([path], TextOptions(lowercase=True), cache=cache).from_cache is False  # options are in the key
    write(path, "changed text\n" * 100)
    changed = load_corpus([path], cache=cache)
    assert not changed.from_cache
    assert changed.corpus.vocab.decode(changed.corpus.ids[:12]) == "changed text"


def test_training_reads_the_memory_map_without_copying_it(tmp_path):
    cache = CorpusCache(tmp_path / "cache")
    path = write(tmp_path / "c.txt", make_text(2000))
    load_corpus([path], cache=cache)
    corpus = load_corpus([path], cache=cache).corpus
    config = ModelConfig(vocab_size=len(corpus.vocab), **TINY_MODEL)
    trainer = Trainer(corpus, config, tiny_train_config(steps=2), tmp_path / "run")
    assert np.shares_memory(trainer.batches.inputs, corpus.ids)
    assert np.shares_memory(trainer.batches.targets, corpus.ids)
    trainer.train()


def test_the_checkpoint_records_each_file_and_its_hash(tmp_path):
    a = write(tmp_path / "docs" / "a.txt", make_text(800, seed=1))
    b = write(tmp_path / "docs" / "b.txt", make_text(800, seed=2))
    corpus = load_corpus([tmp_path / "docs"]).corpus
    config = ModelConfig(vocab_size=len(corpus.vocab), **TINY_MODEL)
    Trainer(corpus, config, tiny_train_config(steps=2, val_frac=0.0), tmp_path / "run").train()
    saved = json.loads((tmp_path / "run" / "last" / "config.json").read_text())
    import hashlib

    assert [(f["path"], f["sha256"]) for f in saved["corpus"]["files"]] == [
        (str(p), hashlib.sha256(p.read_bytes()).hexdigest()) for p in (a, b)]


def test_sampling_never_writes_the_unknown_symbol():
    corpus = Corpus.from_text("ab" * 200 + "xyz", min_char_count=2)
    assert UNKNOWN_CHAR in corpus.vocab
    torch.manual_seed(0)
    from charlstm.model.network import CharLSTM

    model = CharLSTM(ModelConfig(vocab_size=len(corpus.vocab), **TINY_MODEL))
    with torch.no_grad():
        model.head.bias.zero_()
        model.head.bias[corpus.vocab.unknown_id] = 50.0  # a model that would write almost nothing else
    text = Generator(model, corpus.vocab).generate("x", 200, seed=1)[0]
    assert UNKNOWN_CHAR not in text and len(text) == 200


def run_cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "charlstm", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_train_on_a_folder_from_the_command_line(tmp_path):
    write(tmp_path / "docs" / "a.txt", make_text(600, seed=1))
    write(tmp_path / "docs" / "b.txt", make_text(600, seed=2))
    write(tmp_path / "docs" / "blob.bin", b"\x00\x01\x02")
    done = run_cli("train", "docs", "--steps", "3", "--hidden", "16", "--layers", "1", "--batch-size", "4",
                   "--seq-len", "16", "--precision", "fp32", "--lowercase", "--min-char-count", "2",
                   "--name", "folder", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "skipped docs/blob.bin: not a text file (binary)" in done.stderr
    assert (tmp_path / "checkpoints" / "folder" / "last" / "config.json").exists()


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (lambda d: (d / "empty").mkdir(), ["empty"], "holds no files"),
        (lambda d: write(d / "mixed" / "bad.txt", b"\xff\xfe bad"), ["mixed"], "not valid utf-8"),
    ],
)
def test_bad_folders_end_in_one_error_line(tmp_path, run_main, setup, args, message):
    setup(tmp_path)
    done = run_main("train", *args, "--steps", "1", cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
