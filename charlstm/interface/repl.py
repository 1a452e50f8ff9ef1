"""The interactive REPL: type a beginning, watch the model continue it.

Three parts, each testable without a terminal:

- ``ReplSettings`` and the command table: ``:temp 0.5`` and friends parsed into settings.
- ``ReplSession``: the model, the settings and the conversation (the carried LSTM state).
  It runs turns and never touches the terminal, so the benchmark and the tests drive the
  very code path a user's Enter key drives.
- ``Repl``: the loop that reads lines (readline on a terminal, plain lines from a pipe),
  runs commands and turns, and shows them through a ``console.ReplView``.

Turns, seeds and the carried state
----------------------------------
A turn feeds the user's text and draws up to ``len`` characters. Every turn draws from
its own random generator, seeded with the turn's seed: ``:seed N`` makes that N for
every turn; without it each turn takes a fresh random seed and records it in the
transcript, so any turn can be replayed.

The session keeps the state of the last turn's text (what was typed and what was
shown) minus its last character, which is kept as *pending* text: a stream needs the
logits of a last character to draw its first one, and feeding the pending character
first is how it gets them. Continue mode starts each turn from that state, so a
continue-mode turn with text B and seed S draws exactly what a fresh turn with seed S
draws for the whole conversation so far followed by B, at a cost that grows with the
length of B, not with the conversation's. Fresh mode starts each turn from nothing.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import secrets
import shlex
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, TextIO

from ..base.errors import CharlstmError, UnknownCharactersError
from ..data.corpus import UnknownPolicy
from ..generation.generator import Generator, SamplingOptions
from ..model.network import State
from ..training.checkpoint import LoadedModel

if TYPE_CHECKING:
    from .terminal import ReplView

Mode = Literal["fresh", "continue"]
MODES: tuple[Mode, ...] = ("fresh", "continue")
MAX_LENGTH = 1_000_000
MAX_SAMPLES = 64
HISTORY_ENV = "CHARLSTM_REPL_HISTORY"
HISTORY_LENGTH = 1000
TRANSCRIPT_MARK = "# charlstm repl transcript"
OFF_WORDS = ("off", "none")


@dataclass(frozen=True)
class ReplSettings:
    """What the next turn does; every field can be changed with a ``:command``."""

    temperature: float = 1.0
    length: int = 300
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    num_samples: int = 1
    stop: tuple[str, ...] = ()
    mode: Mode = "fresh"

    def __post_init__(self) -> None:
        self.sampling()  # refuses a bad temperature, top-k or top-p with a clear message
        if not 1 <= self.length <= MAX_LENGTH:
            raise CharlstmError(f"length must be between 1 and {MAX_LENGTH}, not {self.length}")
        if not 1 <= self.num_samples <= MAX_SAMPLES:
            raise CharlstmError(f"the number of continuations must be between 1 and {MAX_SAMPLES}, not {self.num_samples}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise CharlstmError(f"the seed must be between 0 and 2**63-1, not {self.seed}")
        if self.mode not in MODES:
            raise CharlstmError(f"mode must be fresh or continue, not {self.mode!r}")
        if any(not stop for stop in self.stop):
            raise CharlstmError("a stop string cannot be empty")

    def sampling(self) -> SamplingOptions:
        return SamplingOptions(self.temperature, self.top_k, self.top_p)

    def summary(self) -> str:
        """The settings in the words the commands use, short enough for a prompt: ``temp=0.8 len=300 seed=7``."""
        parts = [f"temp={self.temperature:g}", f"len={self.length}"]
        if self.top_k is not None:
            parts.append(f"topk={self.top_k}")
        if self.top_p is not None:
            parts.append(f"topp={self.top_p:g}")
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        if self.num_samples > 1:
            parts.append(f"n={self.num_samples}")
        if self.stop:
            parts.append("stop=" + ",".join(show_escaped(s) for s in self.stop))
        return " ".join(parts)


# -- parsing values -------------------------------------------------------------------

_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", '"': '"', "'": "'", " ": " "}


def unescape(text: str) -> str:
    r"""Turn ``\n``, ``\t``, ``\r``, ``\\``, ``\"``, ``\xHH`` and ``\uHHHH`` into the characters they name."""

    def replace(match: re.Match[str]) -> str:
        code = match.group(1)
        if code[0] in "xu" and len(code) > 1:
            return chr(int(code[1:], 16))
        if code in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[code]
        raise CharlstmError(f"unknown escape \\{code}; use \\n, \\t, \\r, \\\\, \\\", \\xHH or \\uHHHH")

    return _ESCAPE.sub(replace, text)


_SHOWN_ESCAPES = {value: "\\" + key for key, value in _SIMPLE_ESCAPES.items() if key not in "' "}


def show_escaped(text: str) -> str:
    """A stop string as one would type it: quoted, with escapes for newlines and other invisible characters."""
    shown = (_SHOWN_ESCAPES.get(c, c if c.isprintable() else f"\\u{ord(c):04x}") for c in text)
    return '"' + "".join(shown) + '"'


def split_arguments(text: str) -> list[str]:
    """Words, with quotes grouping; backslashes are left for ``unescape`` so ``"\\n"`` survives."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.escape = ""
    try:
        return list(lexer)
    except ValueError:
        raise CharlstmError("a quote is not closed; close it or leave the quotes out") from None


def _parse_number(kind: type, text: str, name: str, allow_off: bool) -> Any:
    if allow_off and text.lower() in OFF_WORDS:
        return None
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise CharlstmError(f":{name} takes {what}{' or off' if allow_off else ''}, not {text!r}") from None


@dataclass(frozen=True)
class Setting:
    """A ``:command`` that sets one field of ReplSettings from one word."""

    field: str
    usage: str
    summary: str
    parse: Callable[[str, str], Any]
    choices: tuple[str, ...] = ()


def _number(kind: type, allow_off: bool = False) -> Callable[[str, str], Any]:
    return lambda text, name: _parse_number(kind, text, name, allow_off)


def _mode(text: str, name: str) -> Mode:
    if text not in MODES:
        raise CharlstmError(f":mode takes fresh or continue, not {text!r}")
    return text  # type: ignore[return-value]


SETTINGS: dict[str, Setting] = {
    "temp": Setting("temperature", "T", "sampling temperature, 0 to 100; 0 always takes the likeliest character", _number(float)),
    "len": Setting("length", "N", f"characters to generate per turn, 1 to {MAX_LENGTH}", _number(int)),
    "topk": Setting("top_k", "K|off", "draw only from the K likeliest characters", _number(int, True), OFF_WORDS[:1]),
    "topp": Setting("top_p", "P|off", "draw only from the likeliest characters that together reach P", _number(float, True), OFF_WORDS[:1]),
    "seed": Setting("seed", "N|off", "seed every turn with N (the same text gets the same continuation); off: a new seed each turn", _number(int, True), OFF_WORDS[:1]),
    "n": Setting("num_samples", "N", f"continuations per turn, 1 to {MAX_SAMPLES} (the first streams, the rest follow)", _number(int)),
    "mode": Setting("mode", "fresh|continue", "fresh: each turn starts over; continue: the model's state carries across turns", _mode, MODES),
}

ACTIONS: dict[str, tuple[str, str]] = {
    "stop": ('"S" ...|off', r'stop a continuation once it ends with S (escapes such as \n work); several are allowed'),
    "reset": ("", "forget the conversation: the next turn starts from nothing"),
    "save": ("FILE", "write the transcript (every turn, its settings and seed) to FILE"),
    "load": ("CHECKPOINT", "switch to another run or checkpoint directory (the conversation starts over)"),
    "help": ("", "show this list"),
    "quit": ("", "leave (Ctrl-D does the same)"),
}

COMMAND_NAMES = sorted([*SETTINGS, *ACTIONS])


def apply_setting(settings: ReplSettings, name: str, args: list[str]) -> ReplSettings:
    """The settings after ``:name args``; a CharlstmError that says what was wrong otherwise."""
    if name == "stop":
        if not args:
            raise CharlstmError(':stop takes one or more strings, e.g. :stop "\\n\\n", or off')
        if len(args) == 1 and args[0].lower() in OFF_WORDS:
            return dataclasses.replace(settings, stop=())
        return dataclasses.replace(settings, stop=tuple(unescape(arg) for arg in args))
    setting = SETTINGS[name]
    if len(args) != 1:
        raise CharlstmError(f":{name} takes one value ({setting.usage}), e.g. :{name} {_example(name)}")
    return dataclasses.replace(settings, **{setting.field: setting.parse(args[0], name)})


def _example(name: str) -> str:
    return {"temp": "0.8", "len": "400", "topk": "20", "topp": "0.9", "seed": "7", "n": "3", "mode": "continue"}[name]


# -- the session: model, settings, conversation ------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """What the REPL's header says about the model in use."""

    run_name: str
    checkpoint: Path
    parameters: int
    shape: str
    vocab_size: int
    val_bpc: float | None
    step: int | None

    @classmethod
    def of(cls, loaded: LoadedModel) -> "ModelInfo":
        metrics = loaded.config.get("metrics") or {}
        val_loss = metrics.get("val_loss", metrics.get("best_val_loss"))
        config = loaded.model.config
        return cls(
            run_name=loaded.name,
            checkpoint=loaded.path,
            parameters=loaded.model.num_parameters(),
            shape=f"{config.cell.upper()} {config.num_layers}x{config.hidden_size}, embedding {config.emb_size}",
            vocab_size=len(loaded.vocab),
            val_bpc=None if val_loss is None else val_loss / 0.6931471805599453,
            step=metrics.get("step"),
        )


@dataclass(frozen=True)
class TurnRecord:
    """One finished turn, as the transcript keeps it."""

    text: str
    continuations: list[str]
    settings: ReplSettings
    seed: int
    ended: str  # "length", "stop" or "interrupted"
    seconds: float

    @property
    def chars_per_second(self) -> float:
        return len(self.continuations[0]) / self.seconds if self.seconds > 0 else 0.0


def _first_stream_state(state: State) -> State:
    """Sample 1's slice of a batched state, copied so later steps cannot change it."""
    return tuple(s[:, :1].clone() for s in state)


class Turn:
    """One turn's continuations, drawn step by step.

    Iterating yields the first continuation's characters as they are drawn (the
    others are collected alongside); ``interrupt()`` ends the turn after the current
    step and is safe to call from a signal handler. When iteration ends, the turn is
    recorded in the session and its state becomes the conversation's.
    """

    def __init__(self, session: "ReplSession", text: str, seed: int):
        self.session = session
        self.text = text
        self.seed = seed
        self.settings = session.settings
        self.continuations: list[list[str]] = [[] for _ in range(self.settings.num_samples)]
        self.ended = "length"
        self.record: TurnRecord | None = None
        self._interrupted = False
        continuing = self.settings.mode == "continue"
        self._prime = (session.pending if continuing else "") + text
        self._state = session.state if continuing else None
        self._carry: tuple[State | None, str] | None = None

    def interrupt(self) -> None:
        self._interrupted = True

    def __iter__(self) -> Iterator[str]:
        settings, generator = self.settings, self.session.generator
        started = time.perf_counter()
        stream = generator.stream(self._prime, settings.length, settings.sampling(), settings.num_samples,
                                  self.seed, "error", self._state)
        finished = [False] * settings.num_samples
        try:
            for _ in range(settings.length):
                if self._interrupted:
                    self.ended = "interrupted"
                    break
                # Between steps the stream holds its last character unfed, and
                # generator.last_state is the state before it: the conversation's state.
                chars = next(stream)
                first_grew = not finished[0]
                for index, char in enumerate(chars):
                    if finished[index]:
                        continue
                    piece = self.continuations[index]
                    piece.append(char)
                    if self._ends_with_stop(piece):
                        finished[index] = True
                        if index == 0:
                            self._carry = (_first_stream_state(generator.last_state), char)
                if first_grew:
                    yield chars[0]
                if all(finished):
                    self.ended = "stop"
                    break
            if self._carry is None and self.continuations[0]:
                self._carry = (_first_stream_state(generator.last_state), self.continuations[0][-1])
        finally:
            stream.close()
        if self._carry is None:  # interrupted before the first character: nothing was fed
            self._carry = (self._state, self._prime)
        self.record = TurnRecord(self.text, ["".join(p) for p in self.continuations], settings, self.seed,
                                 self.ended, time.perf_counter() - started)
        self.session.finish_turn(self, *self._carry)

    def _ends_with_stop(self, piece: list[str]) -> bool:
        for stop in self.settings.stop:
            if len(piece) >= len(stop) and "".join(piece[-len(stop):]) == stop:
                return True
        return False


class ReplSession:
    """A model, the REPL's settings and the conversation so far; no terminal in sight."""

    def __init__(self, loaded: LoadedModel, settings: ReplSettings | None = None):
        self.settings = settings if settings is not None else ReplSettings()
        self.transcript: list[TurnRecord] = []
        self.use(loaded)

    def use(self, loaded: LoadedModel) -> None:
        """Switch models; a state from another model means nothing to this one, so the conversation restarts."""
        self.loaded = loaded
        self.generator = Generator(loaded.model, loaded.vocab)
        self.info = ModelInfo.of(loaded)
        self.reset()
        self.check_settings(self.settings)
        # A turn's first run loads lazy modules and builds the kernels' plans: pay for it now, not on the first Enter.
        start = self.generator.lead_in
        self.unknown_chars(start)
        for _ in self.generator.stream(start, 2, SamplingOptions(), 1, 0):
            pass

    def reset(self) -> None:
        self.state: State | None = None
        self.pending = ""
        self.context_chars = 0

    def check_settings(self, settings: ReplSettings) -> None:
        """Refuse settings this model cannot honour, before a turn runs into them."""
        vocab = self.generator.vocab
        if settings.top_k is not None and settings.top_k > len(vocab):
            raise CharlstmError(f"top-k {settings.top_k} is larger than the vocabulary ({len(vocab)} characters); use at most {len(vocab)}")
        for stop in settings.stop:
            unknown = vocab.unknown_chars(stop)
            if unknown:
                raise CharlstmError(f"stop string {show_escaped(stop)} has characters the model never writes: "
                                    + ", ".join(repr(c) for c in unknown))

    def change(self, name: str, args: list[str]) -> ReplSettings:
        settings = apply_setting(self.settings, name, args)
        self.check_settings(settings)
        self.settings = settings
        return settings

    def unknown_chars(self, text: str) -> list[str]:
        return self.generator.vocab.unknown_chars(text)

    @property
    def has_unknown_symbol(self) -> bool:
        """Whether the model learned one symbol for rare characters, which unseen ones can be read as."""
        return self.generator.vocab.unknown_id is not None

    def without_unknown(self, text: str, policy: UnknownPolicy = "skip") -> str:
        """``text`` with unseen characters dropped (``skip``) or read as the unknown symbol (``replace``)."""
        vocab = self.generator.vocab
        return vocab.decode(vocab.encode(text, unknown=policy))

    def start_turn(self, text: str) -> Turn:
        """A turn on ``text``; characters the model never saw are refused (drop them first)."""
        unknown = self.unknown_chars(text)
        if unknown:
            raise UnknownCharactersError(unknown)
        seed = self.settings.seed if self.settings.seed is not None else secrets.randbelow(2**31)
        return Turn(self, text, seed)

    def finish_turn(self, turn: Turn, state: State | None, pending: str) -> None:
        assert turn.record is not None
        if turn.settings.mode == "fresh":
            self.context_chars = 0
        self.context_chars += len(turn.text) + len(turn.record.continuations[0])
        self.state, self.pending = state, pending
        self.transcript.append(turn.record)

    def save_transcript(self, path: Path) -> None:
        """Write every turn to ``path`` atomically; never replace a file that is not a transcript."""
        if path.is_dir():
            raise CharlstmError(f"{path} is a directory; give a file name")
        if path.exists() and not _is_transcript(path):
            raise CharlstmError(f"{path} exists and is not a charlstm transcript; choose another name")
        lines = [f"{TRANSCRIPT_MARK} · run {self.info.run_name} · checkpoint {self.info.checkpoint}"]
        for number, record in enumerate(self.transcript, 1):
            header = f"# turn {number} · {record.settings.mode} {record.settings.summary()}"
            header += f" · ended by {record.ended}" if record.settings.seed is not None else f" seed={record.seed} · ended by {record.ended}"
            for index, continuation in enumerate(record.continuations, 1):
                label = f" · continuation {index} of {len(record.continuations)}" if len(record.continuations) > 1 else ""
                lines.append(header + label)
                lines.append(record.text + continuation)
        write_text_atomically(path, "\n".join(lines) + "\n")


def _is_transcript(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline().startswith(TRANSCRIPT_MARK)
    except (OSError, UnicodeDecodeError):
        return False


def write_text_atomically(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename: a crash leaves the old file or the new."""
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise CharlstmError(f"cannot write {path}: the folder {directory} does not exist")
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as error:
        raise CharlstmError(f"cannot write {path}: {error.strerror}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# -- reading lines -------------------------------------------------------------------------


def history_path() -> Path:
    """Where the input history persists: $CHARLSTM_REPL_HISTORY, else the user's data directory."""
    override = os.environ.get(HISTORY_ENV)
    if override:
        return Path(override)
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "charlstm" / "repl_history"


class Completer:
    """Tab completion: command names, their fixed values, and paths for :save and :load."""

    def __init__(self, line_buffer: Callable[[], str]):
        self.line_buffer = line_buffer
        self.matches: list[str] = []

    def candidates(self, line: str, word: str) -> list[str]:
        words = line.split()
        at_first_word = not words or (len(words) == 1 and not line.endswith(" "))
        if at_first_word:
            return [f":{name} " for name in COMMAND_NAMES if f":{name}".startswith(word)] if word.startswith(":") else []
        command = words[0][1:]
        if command in ("save", "load"):
            return [path + ("/" if os.path.isdir(path) else "") for path in sorted(glob.glob(os.path.expanduser(word) + "*"))]
        fixed = SETTINGS[command].choices if command in SETTINGS else OFF_WORDS[:1] if command == "stop" else ()
        return [value for value in fixed if value.startswith(word)]

    def complete(self, word: str, index: int) -> str | None:
        if index == 0:
            self.matches = self.candidates(self.line_buffer(), word)
        return self.matches[index] if index < len(self.matches) else None


class TerminalLines:
    """Lines typed at a terminal: readline editing, completion, and history kept in a file."""

    def __init__(self, view: "ReplView", history: Path):
        self.view = view
        self.history = history
        try:
            import readline
        except ImportError:  # a Python built without readline still gets a working, plainer REPL
            self.readline = None
            return
        self.readline = readline
        self.completer = Completer(readline.get_line_buffer)
        readline.set_completer(self.completer.complete)
        readline.set_completer_delims(" \t\n")
        if "libedit" in (readline.__doc__ or ""):
            readline.parse_and_bind("bind ^I rl_complete")
        else:
            readline.parse_and_bind("tab: complete")
        readline.set_history_length(HISTORY_LENGTH)
        try:
            readline.read_history_file(history)
        except (FileNotFoundError, OSError):
            pass  # a first session, or an unreadable file: start with no history

    def read(self, prompt: str, prefill: str = "", remember: bool = True) -> str:
        """One line; EOFError on Ctrl-D, KeyboardInterrupt on Ctrl-C."""
        if self.readline is None:
            return self.view.read_line(prompt)
        readline = self.readline
        before = readline.get_current_history_length()
        readline.set_startup_hook((lambda: readline.insert_text(prefill)) if prefill else None)
        try:
            line = self.view.read_line(prompt)
        finally:
            readline.set_startup_hook(None)
        added = readline.get_current_history_length() - before
        if added > 0 and not remember:
            readline.remove_history_item(readline.get_current_history_length() - 1)
        elif added > 0:
            self._append_history(added)
        return line

    def _append_history(self, count: int) -> None:
        try:
            self.history.parent.mkdir(parents=True, exist_ok=True)
            if not self.history.exists():
                self.history.touch()
            self.readline.append_history_file(count, self.history)  # type: ignore[union-attr]
        except OSError as error:
            self.view.warn(f"cannot save the input history to {self.history}: {error.strerror}")


class PipedLines:
    """Lines from a pipe or file: no prompts, no editing, no history."""

    def __init__(self, source: TextIO):
        self.source = source

    def read(self, prompt: str, prefill: str = "", remember: bool = True) -> str:
        line = self.source.readline()
        if not line:
            raise EOFError
        return line[:-1] if line.endswith("\n") else line


# -- the loop ---------------------------------------------------------------------------------


class _Quit(Exception):
    """Raised by :quit to leave the loop."""


class _interrupt_turn_on_ctrl_c:
    """The first Ctrl-C ends the turn after the current character; a second one stops at once."""

    def __init__(self, turn: Turn):
        self.turn = turn
        self.previous: Any = None
        self.received = 0

    def _handle(self, signum: int, frame: Any) -> None:
        self.received += 1
        if self.received > 1:
            raise KeyboardInterrupt
        self.turn.interrupt()

    def __enter__(self) -> "_interrupt_turn_on_ctrl_c":
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        signal.signal(signal.SIGINT, self.previous)


LoadModel = Callable[[str], LoadedModel]


@dataclass
class Repl:
    """Reads entries, runs commands and turns, shows them; ``run()`` returns the exit status.

    On a terminal a bad entry gets one line and the loop goes on; from a pipe it goes
    on too, and the exit status is 1 if any entry was refused, so scripts notice.
    """

    session: ReplSession
    view: "ReplView"
    lines: TerminalLines | PipedLines
    load_model: LoadModel
    interactive: bool
    refused: int = field(default=0, init=False)
    _prefill: str = field(default="", init=False)
    _last_typed_line: str | None = field(default=None, init=False)

    def run(self) -> int:
        if self.interactive:
            self.view.header(self.session.info)
        while True:
            try:
                self.handle(self._read_entry())
            except (EOFError, _Quit):
                self.view.goodbye()
                return self._status()
            except KeyboardInterrupt:
                if not self.interactive:
                    raise
                self.view.cancelled_line()  # Ctrl-C at a prompt, or twice in a turn: back to the prompt
            except CharlstmError as problem:
                self.refused += 1
                self.view.error(str(problem))

    def _status(self) -> int:
        return 1 if self.refused and not self.interactive else 0

    def _read_entry(self) -> str:
        """A logical entry: lines ending in a backslash continue on the next line."""
        prompt = self.view.prompt(self._mode_label(), self.session.settings.summary())
        prefill, self._prefill = self._prefill, ""
        parts = [self.lines.read(prompt, prefill)]
        while parts[-1].endswith("\\"):
            parts[-1] = parts[-1][:-1]
            parts.append(self.lines.read(self.view.continuation_prompt()))
        # A paste can hold newlines of its own; then the screen's last line is not a prompt line.
        self._last_typed_line = parts[-1] if "\n" not in parts[-1] else None
        return "\n".join(parts)

    def _mode_label(self) -> str:
        """``fresh``, or ``continue`` with how many characters the carried state has read."""
        if self.session.settings.mode == "continue" and self.session.context_chars:
            return f"continue+{self.session.context_chars}"
        return self.session.settings.mode

    def handle(self, entry: str) -> None:
        """Run one entry: ``:command args``, or text to continue (``::`` starts text with a colon)."""
        if entry.startswith(":") and not entry.startswith("::"):
            self.command(entry[1:])
        else:
            self.turn(entry[1:] if entry.startswith("::") else entry)

    def command(self, line: str) -> None:
        name, _, rest = line.strip().partition(" ")
        if name in SETTINGS or name == "stop":
            args = split_arguments(rest)
            if not args and name != "stop":
                self.view.note(f"{name}: {_current(self.session.settings, name)}")
                return
            self.session.change(name, args)
            self.view.note(f"{name}: {_current(self.session.settings, name)}")
        elif name == "reset":
            self.session.reset()
            self.view.note("conversation forgotten: the next turn starts from nothing")
        elif name == "save":
            path = self._one_path(name, rest)
            self.session.save_transcript(path)
            self.view.note(f"transcript of {len(self.session.transcript)} turn(s) written to {path}")
        elif name == "load":
            self.session.use(self.load_model(str(self._one_path(name, rest))))
            self.view.header(self.session.info)
        elif name == "help":
            rows = [(f":{n} {s.usage}", s.summary, _current(self.session.settings, n)) for n, s in SETTINGS.items()]
            rows += [(f":{n} {usage}".rstrip(), summary, _current(self.session.settings, n)) for n, (usage, summary) in ACTIONS.items()]
            self.view.help(rows)
        elif name == "quit":
            raise _Quit
        else:
            raise CharlstmError(f"unknown command :{name}; type :help for the list (start text with :: to write a colon)")

    def _one_path(self, name: str, rest: str) -> Path:
        args = split_arguments(rest)
        if len(args) != 1:
            raise CharlstmError(f":{name} takes one {ACTIONS[name][0].lower()} path")
        return Path(os.path.expanduser(args[0]))

    def turn(self, text: str) -> None:
        unknown = self.session.unknown_chars(text)
        if unknown:
            if self.interactive:
                policy = self._ask_about_unknown(unknown)
            elif self.session.has_unknown_symbol:
                policy = "replace"  # as `charlstm sample` reads them
            else:
                raise CharlstmError(
                    "the model never saw these characters: " + ", ".join(repr(c) for c in unknown) + "; remove them from the input"
                )
            if policy is None:
                self._prefill = text
                return
            text = self.session.without_unknown(text, policy)
            self._last_typed_line = None
        turn = self.session.start_turn(text)
        self.view.begin_turn(text, self.session.settings.num_samples, self._last_typed_line)
        if self.interactive:
            with _interrupt_turn_on_ctrl_c(turn):
                for char in turn:
                    self.view.stream(char)
        else:
            for char in turn:
                self.view.stream(char)
        assert turn.record is not None
        self.view.end_turn(turn.record.text, turn.record.continuations, turn.record.ended,
                           turn.record.chars_per_second, turn.record.seed)

    def _ask_about_unknown(self, unknown: list[str]) -> UnknownPolicy | None:
        """Drop the unseen characters (``skip``), read them as the unknown symbol (``replace``), or re-type (None)."""
        can_keep = self.session.has_unknown_symbol
        while True:
            answer = self.lines.read(self.view.unknown_question(unknown, can_keep), remember=False).strip().lower()
            if answer in ("d", "drop"):
                return "skip"
            if can_keep and answer in ("k", "keep"):
                return "replace"
            if answer in ("r", "retype", "re-type", ""):
                return None


def _current(settings: ReplSettings, name: str) -> str:
    if name == "stop":
        return " ".join(show_escaped(s) for s in settings.stop) or "off"
    if name not in SETTINGS:
        return ""
    value = getattr(settings, SETTINGS[name].field)
    return "off" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def run(loaded: LoadedModel, settings: ReplSettings, view: "ReplView", load_model: LoadModel,
        stdin: TextIO | None = None, interactive: bool | None = None) -> int:
    """Run the REPL on ``loaded``: a terminal session if stdin and stdout are terminals, else piped lines."""
    stdin = stdin if stdin is not None else sys.stdin
    if interactive is None:
        interactive = stdin.isatty() and sys.stdout.isatty()
    session = ReplSession(loaded, settings)
    lines: TerminalLines | PipedLines = TerminalLines(view, history_path()) if interactive else PipedLines(stdin)
    return Repl(session, view, lines, load_model, interactive).run()
