"""Fine-tuning (--init-from): the grown vocabulary and model, lineage, refusals, resume, torchrun, the base model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import TINY_CLI, main_outcome, make_text
from safetensors.torch import load_file
from test_distributed import _free_ports
from test_resume import SignalAtStep, tree_hashes

from charlstm.data.corpus import UNKNOWN_CHAR, Corpus, Vocab
from charlstm.interface import terminal as console
from charlstm.model.config import ModelConfig
from charlstm.model.network import CharLSTM
from charlstm.training.checkpoint import load
from charlstm.training.finetune import (
    FINETUNE_LR,
    FINETUNE_WARMUP_STEPS,
    grow_state,
    weights_sha256,
)
from charlstm.training.shipped import BASE_MODEL, shipped_model

NEW_TEXT = make_text(1500, seed=3).replace("dog", "Hund über Straße")  # 'u', 'ü', 'ß' are new


@pytest.fixture(scope="module")
def parent_run(tmp_path_factory, tiny_corpus_file) -> Path:
    out = tmp_path_factory.mktemp("parent")
    done = main_outcome("train", str(tiny_corpus_file), "--out", str(out), "--name", "parent", *TINY_CLI, "--steps", "8")
    assert done.code == 0, done.stderr
    return out / "parent"


@pytest.fixture(scope="module")
def new_corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("new") / "new.txt"
    path.write_text(NEW_TEXT, encoding="utf-8")
    return path


def finetune(corpus: Path, parent: Path | str, out: Path, name: str, *extra: str):
    return main_outcome("train", str(corpus), "--init-from", str(parent), "--out", str(out), "--name", name,
                        "--batch-size", "4", "--seq-len", "16", "--precision", "fp32", "--device", "cpu", *extra)


def test_a_grown_vocabulary_keeps_every_old_id_and_appends_the_new_characters():
    parent, corpus = Vocab(list("abc ")), Vocab(sorted("ab xyz"))
    grown = parent.grown(corpus)
    assert grown.chars == [*"abc ", "x", "y", "z"]
    assert grown.encode("cab zx").tolist() == [2, 0, 1, 3, 6, 4]
    assert grown.decode(grown.encode("zyx abc")) == "zyx abc"


def test_new_rows_leave_the_old_characters_logits_alone_and_start_new_ones_at_the_rarest_bias():
    torch.manual_seed(0)
    shape = dict(emb_size=8, hidden_size=12, num_layers=2)
    parent, grown = CharLSTM(ModelConfig(vocab_size=6, **shape)), CharLSTM(ModelConfig(vocab_size=9, **shape))
    grown.load_state_dict(grow_state(parent, 9))
    parent.eval(), grown.eval()
    ids = torch.tensor([[0, 3, 5, 1, 2, 4, 0]])
    with torch.no_grad():
        old_logits, _ = parent(ids)
        new_logits, _ = grown(ids)
    torch.testing.assert_close(new_logits[..., :6], old_logits)  # a wider matrix product may round differently
    torch.testing.assert_close(new_logits[..., 6:], parent.head.bias.min().expand(1, 7, 3))
    assert torch.equal(grown.embedding.weight[6], parent.embedding.weight.mean(0))


def test_a_finetuned_run_records_its_parent_and_grows_the_vocabulary(parent_run, new_corpus, tmp_path):
    before = tree_hashes(parent_run)
    done = finetune(new_corpus, parent_run, tmp_path, "child", "--steps", "6")
    assert done.code == 0, done.stderr
    assert tree_hashes(parent_run) == before
    parent, child = load(parent_run), load(tmp_path / "child")
    assert child.vocab.chars[: len(parent.vocab)] == parent.vocab.chars
    assert child.vocab.chars[len(parent.vocab):] == ["u", "ß", "ü"]  # in the corpus's (sorted) order
    record = child.config["parent"]
    assert record["path"] == str((parent_run / "best").resolve())
    assert record["weights_sha256"] == hashlib.sha256((parent_run / "best" / "model.safetensors").read_bytes()).hexdigest()
    assert record["new_chars"] == 3 and record["vocab_size"] == len(parent.vocab)
    assert child.model.config.hidden_size == parent.model.config.hidden_size
    assert (child.config["train"]["lr"], child.config["train"]["warmup_steps"]) == (FINETUNE_LR, FINETUNE_WARMUP_STEPS)
    info = main_outcome("info", str(tmp_path / "child"))
    assert "started from" in info.stdout and record["weights_sha256"][:12] in info.stdout


def test_the_grown_corpus_uses_the_unknown_symbol_as_a_fresh_run_does(parent_run, tmp_path):
    corpus = tmp_path / "rare.txt"
    corpus.write_text(NEW_TEXT + "Ω\n", encoding="utf-8")
    done = finetune(corpus, parent_run, tmp_path, "rare", "--steps", "2", "--min-char-count", "2")
    assert done.code == 0, done.stderr
    vocab = load(tmp_path / "rare").vocab
    assert UNKNOWN_CHAR in vocab and "Ω" not in vocab


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_other_cells_fine_tune_too(tmp_path, tiny_corpus_file, new_corpus, cell):
    assert main_outcome("train", str(tiny_corpus_file), "--out", str(tmp_path), "--name", "p", *TINY_CLI,
                        "--cell", cell, "--steps", "3").code == 0
    done = finetune(new_corpus, tmp_path / "p", tmp_path, "c", "--steps", "3")
    assert done.code == 0, done.stderr
    assert load(tmp_path / "c").model.config.cell == cell


def test_shape_options_that_disagree_with_the_parent_are_refused_naming_them(parent_run, new_corpus, tmp_path):
    before = tree_hashes(parent_run)
    refused = finetune(new_corpus, parent_run, tmp_path, "c", "--hidden", "99", "--cell", "gru", "--steps", "2")
    line = refused.final_error_line
    assert "--hidden 99 (the parent has 24)" in line and "--cell gru (the parent has lstm)" in line
    assert tree_hashes(parent_run) == before and not (tmp_path / "c").exists()
    agreeing = finetune(new_corpus, parent_run, tmp_path, "ok", "--hidden", "24", "--dropout", "0.2", "--steps", "2")
    assert agreeing.code == 0, agreeing.stderr
    assert load(tmp_path / "ok").model.config.dropout == 0.2


def _damage(run: Path, how: str) -> None:
    config = run / "best" / "config.json"
    if how == "config":
        config.write_text("{not json", encoding="utf-8")
    elif how == "weights":
        (run / "best" / "model.safetensors").write_bytes(b"\0" * 40)
    else:
        data = json.loads(config.read_text(encoding="utf-8"))
        data["format_version"] = 0
        config.write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize("how, message", [
    ("config", "is not valid JSON"), ("weights", "damaged"), ("version", "format 0"),
])
def test_a_damaged_parent_or_one_of_another_format_is_refused_and_left_untouched(parent_run, new_corpus, tmp_path, how, message):
    run = tmp_path / "parent"
    shutil.copytree(parent_run, run)
    shutil.rmtree(run / "last")  # best/ is what --init-from reads: no fallback to a sound last/
    _damage(run, how)
    before = tree_hashes(run)
    line = finetune(new_corpus, run, tmp_path, "c", "--steps", "2").final_error_line
    assert "--init-from" in line and message in line, line
    assert tree_hashes(run) == before


def test_init_from_nothing_or_with_resume_is_refused_in_one_line(parent_run, new_corpus, tmp_path):
    before = tree_hashes(parent_run)
    missing = finetune(new_corpus, tmp_path / "nowhere", tmp_path, "c", "--steps", "2").final_error_line
    assert "no such run, checkpoint or shipped model" in missing
    both = main_outcome("train", str(new_corpus), "--init-from", str(parent_run), "--resume", str(parent_run))
    assert both.code == 2 and "--init-from" in both.stderr and "--resume" in both.stderr
    assert tree_hashes(parent_run) == before


def test_resuming_a_finetuned_run_matches_an_uninterrupted_one(parent_run, new_corpus, tmp_path, monkeypatch):
    args = ("--steps", "20", "--dropout", "0.2")
    assert finetune(new_corpus, parent_run, tmp_path, "whole", *args).code == 0
    monkeypatch.setattr(console, "ConsoleTrainReporter", lambda **options: SignalAtStep(8, **options))
    assert finetune(new_corpus, parent_run, tmp_path, "split", *args).code == 130
    monkeypatch.undo()
    resumed = main_outcome("train", "--resume", str(tmp_path / "split"))
    assert resumed.code == 0, resumed.stderr
    for tag in ("last", "best"):
        whole = load_file(str(tmp_path / "whole" / tag / "model.safetensors"))
        split = load_file(str(tmp_path / "split" / tag / "model.safetensors"))
        assert all(torch.equal(whole[name], split[name]) for name in whole), tag
    assert load(tmp_path / "split", prefer="last").config["parent"] == load(tmp_path / "whole").config["parent"]


def _rank_main(rank: int, port: int, corpus: Path, parent: Path, out: Path) -> None:
    from charlstm.interface import cli

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), TORCHELASTIC_RUN_ID="finetune")
    torch.set_num_threads(1)
    cli.main(["train", str(corpus), "--init-from", str(parent), "--out", str(out), "--name", "ranked", "--steps", "6",
              "--batch-size", "4", "--seq-len", "16", "--precision", "fp32", "--device", "cpu"])


def test_two_ranks_fine_tune_as_one_process_does(parent_run, new_corpus, tmp_path):
    context = mp.start_processes(_rank_main, args=(_free_ports(1)[0], new_corpus, parent_run, tmp_path), nprocs=2,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + 300  # a rank stuck in a collective fails the test (generous: CI may be busy)
    while not context.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("two-rank fine-tuning did not finish within 300s")
    assert finetune(new_corpus, parent_run, tmp_path, "single", "--steps", "6").code == 0
    ranked, single = load(tmp_path / "ranked", prefer="last"), load(tmp_path / "single", prefer="last")
    assert ranked.vocab == single.vocab and ranked.config["parent"] == single.config["parent"]
    for name, tensor in ranked.model.state_dict().items():
        torch.testing.assert_close(tensor, single.model.state_dict()[name], rtol=1e-4, atol=1e-5, msg=name)


base_shipped = pytest.mark.skipif(shipped_model(BASE_MODEL) is None, reason="the base model is not built")


@base_shipped
def test_the_base_model_ships_small_in_half_precision_and_loads_as_fp32():
    path = shipped_model(BASE_MODEL)
    assert (path / "model.safetensors").stat().st_size < 2_000_000
    assert all(t.dtype == torch.float16 for t in load_file(str(path / "model.safetensors")).values())
    loaded = load("base")
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert loaded.config["base"]["command"].startswith("charlstm train ")
    assert weights_sha256(path) == hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


@base_shipped
def test_sample_and_repl_fall_back_to_the_base_model_with_a_note(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sampled = main_outcome("sample", "--length", "40", "--seed", "1", "--prime", "The ")
    assert sampled.code == 0 and sampled.stdout.startswith("The ") and len(sampled.stdout) > 40
    assert "shipped base model" in sampled.stderr and len(sampled.stderr.strip().splitlines()) == 1
    named = main_outcome("sample", "-c", "base", "--length", "40", "--seed", "1", "--prime", "The ")
    assert named.stdout == sampled.stdout and named.stderr == ""
    info = main_outcome("info", "base")
    assert "books" in info.stdout and "grimm.txt" in info.stdout  # what it saw and what it never saw


@base_shipped
def test_fine_tuning_starts_from_the_base_model_by_name(new_corpus, tmp_path):
    done = finetune(new_corpus, "base", tmp_path, "from-base", "--steps", "2")
    assert done.code == 0, done.stderr
    child = load(tmp_path / "from-base")
    assert child.config["parent"]["base"] == "base"
    assert child.config["parent"]["weights_sha256"] == weights_sha256(shipped_model(BASE_MODEL))
    assert Corpus.from_text(NEW_TEXT, vocab=child.vocab).ids.max() < len(child.vocab)
