from pathlib import Path

import pytest

from charlstm.base.errors import CharlstmError
from charlstm.base.fsutil import (
    atomic_write_text,
    previous_dir,
    replacing,
    replacing_dir,
    user_dir,
)


def test_replacing_leaves_the_old_file_intact_when_the_write_raises(tmp_path):
    target = tmp_path / "report.txt"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError):
        with replacing(target) as staging:
            staging.write_text("half of the ne", encoding="utf-8")
            raise RuntimeError("the writer failed")
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.txt"]


def test_replacing_turns_an_os_error_into_one_line_naming_the_file(tmp_path):
    target = tmp_path / "report.txt"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(CharlstmError, match="cannot write .*report.txt"):
        with replacing(target) as staging:
            staging.write_text("new", encoding="utf-8")
            raise OSError(28, "No space left on device")
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.txt"]


def test_replacing_refuses_a_missing_folder(tmp_path):
    with pytest.raises(CharlstmError, match="folder .* does not exist"):
        with replacing(tmp_path / "no" / "x.txt"):
            pass


def test_atomic_write_is_complete_and_leaves_no_staging_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old", encoding="utf-8")
    text = "é" * 100_000
    atomic_write_text(target, text)
    assert target.read_text(encoding="utf-8") == text
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_replacing_dir_swaps_in_a_whole_folder(tmp_path):
    target = tmp_path / "last"
    target.mkdir()
    (target / "a").write_text("old", encoding="utf-8")
    with replacing_dir(target) as staging:
        (staging / "a").write_text("new", encoding="utf-8")
        (staging / "b").write_text("new", encoding="utf-8")
    assert sorted(p.name for p in target.iterdir()) == ["a", "b"]
    assert (target / "a").read_text(encoding="utf-8") == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["last"]


def test_replacing_dir_keeps_the_old_folder_when_the_write_raises(tmp_path):
    target = tmp_path / "last"
    target.mkdir()
    (target / "a").write_text("old", encoding="utf-8")
    (tmp_path / ".last.tmp-1").mkdir()  # left by a process killed mid-write
    with pytest.raises(OSError):
        with replacing_dir(target) as staging:
            (staging / "a").write_text("ne", encoding="utf-8")
            raise OSError(28, "No space left on device")
    assert (target / "a").read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["last"]
    assert previous_dir(target) == tmp_path / "last.old"


@pytest.mark.parametrize(
    ("kind", "variable", "default"),
    [
        ("cache", "XDG_CACHE_HOME", Path(".cache")),
        ("state", "XDG_STATE_HOME", Path(".local", "state")),
        ("data", "XDG_DATA_HOME", Path(".local", "share")),
    ],
)
def test_user_dir_follows_the_override_then_xdg_then_home(tmp_path, monkeypatch, kind, variable, default):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CHARLSTM_TEST_DIR", raising=False)
    monkeypatch.delenv(variable, raising=False)
    assert user_dir(kind, "thing", "CHARLSTM_TEST_DIR") == tmp_path / "home" / default / "charlstm" / "thing"
    monkeypatch.setenv(variable, "")  # empty counts as unset, as the XDG specification says
    assert user_dir(kind, "thing", "CHARLSTM_TEST_DIR") == tmp_path / "home" / default / "charlstm" / "thing"
    monkeypatch.setenv(variable, str(tmp_path / "xdg"))
    assert user_dir(kind, "thing", "CHARLSTM_TEST_DIR") == tmp_path / "xdg" / "charlstm" / "thing"
    monkeypatch.setenv("CHARLSTM_TEST_DIR", "")
    assert user_dir(kind, "thing", "CHARLSTM_TEST_DIR") == tmp_path / "xdg" / "charlstm" / "thing"
    monkeypatch.setenv("CHARLSTM_TEST_DIR", str(tmp_path / "mine"))
    assert user_dir(kind, "thing", "CHARLSTM_TEST_DIR") == tmp_path / "mine"
    assert user_dir(kind, "thing") == tmp_path / "xdg" / "charlstm" / "thing"


def test_the_corpus_cache_keeps_its_place(tmp_path, monkeypatch):
    from charlstm.data.cache import default_cache_dir

    monkeypatch.delenv("CHARLSTM_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "charlstm" / "corpora"
    monkeypatch.setenv("CHARLSTM_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
