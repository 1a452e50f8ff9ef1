"""The REPL: settings, continue mode's carried state, transcripts, piped use, and a real terminal session."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
import torch

from charlstm import CharLSTM, LoadedModel, ModelConfig, Vocab, load
from charlstm.base.errors import CharlstmError, UnknownCharactersError
from charlstm.data.corpus import UNKNOWN_CHAR
from charlstm.generation.session import (
    ReplSession,
    ReplSettings,
    apply_setting,
    show_escaped,
    split_arguments,
    unescape,
)
from charlstm.interface.repl import Completer, PipedLines, Repl, ReplView, history_path

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PROMPT = r"›(?:\x1b\[[0-9;]*m)* "  # the prompt's last mark, whatever colours surround it


@pytest.fixture(scope="module")
def loaded(trained_run):
    return load(trained_run)


def session_with(loaded, **settings) -> ReplSession:
    return ReplSession(loaded, ReplSettings(**settings))


def run_turn(session: ReplSession, text: str, interrupt_after: int | None = None) -> str:
    turn = session.start_turn(text)
    for count, _ in enumerate(turn, 1):
        if count == interrupt_after:
            turn.interrupt()
    return turn.record.continuations[0]


def test_commands_set_values_and_refuse_bad_ones_with_a_clear_message():
    settings = ReplSettings()
    settings = apply_setting(settings, "temp", ["0.5"])
    settings = apply_setting(settings, "topk", ["20"])
    settings = apply_setting(settings, "seed", ["7"])
    settings = apply_setting(settings, "mode", ["continue"])
    assert (settings.temperature, settings.top_k, settings.seed, settings.mode) == (0.5, 20, 7, "continue")
    assert apply_setting(settings, "topk", ["off"]).top_k is None
    bad = [("temp", ["hot"], "takes a number"), ("temp", ["-1"], "between 0 and 100"), ("len", ["0"], "between 1"),
           ("topp", ["1.5"], "top-p"), ("n", ["2.5"], "whole number"), ("mode", ["sideways"], "fresh or continue"),
           ("len", ["1", "2"], "takes one value"), ("stop", [], "one or more strings")]
    for name, args, message in bad:
        with pytest.raises(CharlstmError, match=message):
            apply_setting(settings, name, args)


def test_stop_strings_are_typed_with_escapes_and_shown_the_same_way():
    assert split_arguments(r'"\n\n" END "two words"') == [r"\n\n", "END", "two words"]
    assert unescape(r"\n\t\\\x41\u00e9") == "\n\t\\Aé"
    settings = apply_setting(ReplSettings(), "stop", split_arguments(r'"\n\n" "."'))
    assert settings.stop == ("\n\n", ".")
    assert show_escaped("\n\n") == r'"\n\n"'
    assert apply_setting(settings, "stop", ["off"]).stop == ()
    with pytest.raises(CharlstmError, match="not closed"):
        split_arguments('"\\n')
    with pytest.raises(CharlstmError, match="unknown escape"):
        unescape(r"\q")


def test_settings_the_model_cannot_honour_are_refused(loaded):
    session = session_with(loaded)
    with pytest.raises(CharlstmError, match="larger than the vocabulary"):
        session.change("topk", ["100000"])
    with pytest.raises(CharlstmError, match="never writes"):
        session.change("stop", ["Ж"])
    assert session.settings == ReplSettings()
    with pytest.raises(UnknownCharactersError, match="'Ж'"):
        session.start_turn("Жук")
    assert session.without_unknown("Жcat") == "cat"


def test_stream_holds_each_character_unfed_until_the_next_step(loaded):
    """The contract continue mode rests on: while the caller holds step k, last_state has read steps < k."""
    generator = session_with(loaded).generator
    stream = generator.stream("The ", 5, seed=1)
    chars = [next(stream)[0] for _ in range(3)]
    _, expected = generator.feed(generator.encode_prime(generator.lead_in + "The " + "".join(chars[:-1])), None)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(generator.last_state, expected))
    stream.close()


@pytest.mark.parametrize("first_turn_ends", ["length", "stop", "interrupted"])
def test_continue_mode_draws_what_one_pass_over_the_whole_conversation_draws(loaded, first_turn_ends):
    """Turn A then turn B with the carried state = one fresh turn on A + A's continuation + B, same seed.

    "Same seed" means: every turn draws from a generator seeded with the turn's seed (here :seed 11).
    """
    stop = (" ",) if first_turn_ends == "stop" else ()
    carried = session_with(loaded, mode="continue", seed=11, length=40, stop=stop)
    first = run_turn(carried, "The cat sat", interrupt_after=7 if first_turn_ends == "interrupted" else None)
    assert carried.transcript[-1].ended == first_turn_ends
    second = run_turn(carried, ". The dog")
    one_pass = session_with(loaded, mode="fresh", seed=11, length=40, stop=stop)
    assert run_turn(one_pass, "The cat sat" + first + ". The dog") == second
    assert carried.pending == one_pass.pending  # and the state the next turn starts from is the same
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(carried.state, one_pass.state))
    assert carried.context_chars == len("The cat sat" + first + ". The dog" + second)


def test_fresh_mode_forgets_and_continue_mode_remembers(loaded):
    session = session_with(loaded, seed=5, length=30, temperature=0.0)
    alone = run_turn(session, "The dog")
    run_turn(session, "Her red ball")
    assert run_turn(session, "The dog") == alone
    session.settings = ReplSettings(seed=5, length=30, temperature=0.0, mode="continue")
    session.reset()
    run_turn(session, "Her red ball and ")
    assert session.pending and session.state is not None
    session.reset()
    assert (session.state, session.pending, session.context_chars) == (None, "", 0)


def test_several_continuations_each_stop_at_their_own_stop_string(loaded):
    session = session_with(loaded, num_samples=3, length=200, stop=(".",), seed=2)
    turn = session.start_turn("The")
    streamed = "".join(turn)
    pieces = turn.record.continuations
    assert len(pieces) == 3 and streamed == pieces[0]
    for piece in pieces:
        assert piece.count(".") <= 1 and (piece.endswith(".") or len(piece) == 200)


def test_transcript_is_written_whole_and_never_replaces_a_foreign_file(loaded, tmp_path):
    session = session_with(loaded, seed=3, length=20)
    text = run_turn(session, "The cat")
    path = tmp_path / "session.txt"
    session.save_transcript(path)
    saved = path.read_text(encoding="utf-8")
    assert saved.startswith("# charlstm repl transcript") and "seed=3" in saved and f"The cat{text}\n" in saved
    session.save_transcript(path)  # our own transcript may be replaced
    foreign = tmp_path / "corpus.txt"
    foreign.write_text("precious", encoding="utf-8")
    with pytest.raises(CharlstmError, match="not a charlstm transcript"):
        session.save_transcript(foreign)
    assert foreign.read_text(encoding="utf-8") == "precious"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_completion_offers_commands_values_and_paths(tmp_path):
    line = ""
    completer = Completer(lambda: line)
    assert completer.candidates(":te", ":te") == [":temp "]
    assert completer.candidates(":mode c", "c") == ["continue"]
    (tmp_path / "run-a").mkdir()
    assert completer.candidates(f":load {tmp_path}/ru", f"{tmp_path}/ru") == [f"{tmp_path}/run-a/"]


def test_history_file_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CHARLSTM_REPL_HISTORY", str(tmp_path / "h"))
    assert history_path() == tmp_path / "h"
    monkeypatch.delenv("CHARLSTM_REPL_HISTORY")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert history_path() == tmp_path / "charlstm" / "repl_history"


def charlstm(*args: str, input: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "charlstm", *args], input=input, capture_output=True,
                          text=True, env=env, timeout=120)


def test_piped_lines_each_get_what_sample_would_print_and_bad_lines_one_error_each(trained_run, loaded):
    script = ":temp hot\nThe cat\nЖук\n:temp 0\nThe dog\n"
    done = charlstm("repl", "-c", str(trained_run), "--len", "50", "--seed", "4", input=script)
    generator = session_with(loaded).generator  # what `charlstm sample --prime LINE --length 50 ...` prints
    sampled = generator.generate("The cat", 50, seed=4)[0]
    greedy = generator.generate("The dog", 50, temperature=0.0)[0]
    assert done.stdout == f"The cat{sampled}\nThe dog{greedy}\n"
    assert not ANSI.search(done.stdout + done.stderr) and "›" not in done.stdout
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("error:") for line in errors), done.stderr
    assert "'hot'" in errors[0] and "'Ж'" in errors[1]
    assert done.returncode == 1  # a script learns that some lines were refused


def spawn_repl(run: Path, history: Path, *args: str) -> pexpect.spawn:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CHARLSTM_REPL_HISTORY": str(history), "TERM": "xterm"}
    child = pexpect.spawn(sys.executable, ["-m", "charlstm", "repl", "-c", str(run), *args], env=env,
                          encoding="utf-8", timeout=60, dimensions=(40, 200))
    child.expect(PROMPT)
    return child


def read_turn(child: pexpect.spawn) -> str:
    """The streamed text of one turn, up to its status line, without colours or cursor moves."""
    child.expect(r"(\d+) chars · ")
    streamed = ANSI.sub("", child.before).replace("\r", "")
    child.expect(PROMPT)
    return streamed


def test_a_terminal_session_streams_obeys_settings_stops_on_ctrl_c_and_quits_on_ctrl_d(trained_run, loaded, tmp_path):
    history = tmp_path / "history"
    child = spawn_repl(trained_run, history, "--len", "40")
    child.sendline("The cat")
    assert len(read_turn(child).split("The cat", 1)[1].strip("\n")) > 0
    child.sendline(":temp 0")
    child.expect("temp: 0")
    child.expect(PROMPT)
    child.sendline("The dog")
    greedy = session_with(loaded, temperature=0.0, length=40)
    assert "The dog\n" + run_turn(greedy, "The dog") + "\n" in read_turn(child)  # the echoed line, then the stream
    child.sendline(":len 1000000")
    child.expect(PROMPT)
    child.sendline("The")
    child.expect("The")
    child.expect(r"\S{3}")  # a few characters of the continuation have arrived
    child.sendintr()
    child.expect(r"(\d+) chars · .*interrupted")
    assert int(child.match.group(1)) < 1_000_000
    child.expect(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert history.read_text(encoding="utf-8").splitlines() == ["The cat", ":temp 0", "The dog", ":len 1000000", "The"]


def test_a_terminal_session_asks_about_unseen_characters_and_recalls_history(trained_run, tmp_path):
    history = tmp_path / "history"
    history.write_text(":seed 9\n", encoding="utf-8")
    child = spawn_repl(trained_run, history, "--len", "20")
    child.send("\x1b[A\r")  # Up recalls the last session's line
    child.expect("seed: 9")
    child.expect(PROMPT)
    child.sendline("Жcat")
    child.expect("never saw these characters:")
    child.expect("'Ж'")
    child.expect(r"\[d/r\]")
    child.sendline("d")
    assert "cat" in read_turn(child)
    child.sendline(":bogus")
    child.expect("unknown command :bogus")
    child.expect(PROMPT)
    child.sendline(":quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_piped_input_reads_unseen_characters_as_the_unknown_symbol_when_the_model_has_one(capsys):
    vocab = Vocab(sorted(set("abc \n" + UNKNOWN_CHAR)))
    model = CharLSTM(ModelConfig(vocab_size=len(vocab), emb_size=4, hidden_size=8, num_layers=1))
    loaded = LoadedModel(model, vocab, {}, Path("untrained/best"))
    session = ReplSession(loaded, ReplSettings(length=5, seed=1))
    repl = Repl(session, ReplView(interactive=False), PipedLines(io.StringIO("abЖ\n")), lambda path: loaded, interactive=False)
    assert repl.run() == 0
    out = capsys.readouterr().out
    assert out.startswith("ab" + UNKNOWN_CHAR) and len(out) == len("abЖ") + 5 + 1
