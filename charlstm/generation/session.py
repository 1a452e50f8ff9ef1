"""A REPL session without a terminal: settings, turns and the conversation's carried state.

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
The benchmark and the tests drive the very code path a user's Enter key drives.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from ..base.errors import CharlstmError, UnknownCharactersError
from ..base.fsutil import atomic_write_text
from ..base.reading import FileRefused, read_bytes, why_not_regular
from ..data.corpus import UnknownPolicy
from ..model.network import State
from ..training.checkpoint import LoadedModel
from .controls import MAX_LOGPROBS, CharLogprob
from .generator import Generator, SamplingOptions

Mode = Literal["fresh", "continue"]


MODES: tuple[Mode, ...] = ("fresh", "continue")


MAX_LENGTH = 1_000_000


MAX_SAMPLES = 64


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
    lines: int | None = None
    min_p: float | None = None
    logprobs: int | None = None

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
        if self.lines is not None and self.lines < 1:
            raise CharlstmError(f":lines takes a number of lines, 1 or more, or off; not {self.lines}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise CharlstmError(f":logprobs takes 0 to {MAX_LOGPROBS} alternatives, or off; not {self.logprobs}")

    def sampling(self) -> SamplingOptions:
        return SamplingOptions(self.temperature, self.top_k, self.top_p, self.min_p)

    def summary(self) -> str:
        """The settings in the words the commands use, short enough for a prompt: ``temp=0.8 len=300 seed=7``."""
        parts = [f"temp={self.temperature:g}", f"len={self.length}"]
        if self.top_k is not None:
            parts.append(f"topk={self.top_k}")
        if self.top_p is not None:
            parts.append(f"topp={self.top_p:g}")
        if self.min_p is not None:
            parts.append(f"minp={self.min_p:g}")
        if self.lines is not None:
            parts.append(f"lines={self.lines}")
        if self.logprobs is not None:
            parts.append(f"logprobs={self.logprobs}")
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        if self.num_samples > 1:
            parts.append(f"n={self.num_samples}")
        if self.stop:
            parts.append("stop=" + ",".join(show_escaped(s) for s in self.stop))
        return " ".join(parts)


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
    "lines": Setting("lines", "N|off", "end a continuation after N newlines", _number(int, True), OFF_WORDS[:1]),
    "min-p": Setting("min_p", "P|off", "draw only characters at least P times as likely as the likeliest", _number(float, True), OFF_WORDS[:1]),
    "logprobs": Setting("logprobs", "K|off", "after each turn, a heat line of how likely each character was (and K alternatives in :save)", _number(int, True), OFF_WORDS[:1]),
    "mode": Setting("mode", "fresh|continue", "fresh: each turn starts over; continue: the model's state carries across turns", _mode, MODES),
}


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
    return {"temp": "0.8", "len": "400", "topk": "20", "topp": "0.9", "seed": "7", "n": "3", "mode": "continue",
            "lines": "1", "min-p": "0.05", "logprobs": "3"}[name]


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
    ended: str  # "length", "stop", "lines" or "interrupted"
    seconds: float
    logprobs: tuple[CharLogprob, ...] | None = None  # of the first continuation, with :logprobs on

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
        reasons = ["length"] * settings.num_samples
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
                    reason = self._ending(piece)
                    if reason is not None:
                        finished[index], reasons[index] = True, reason
                        if index == 0:
                            self._carry = (_first_stream_state(generator.last_state), char)
                if first_grew:
                    yield chars[0]
                if all(finished):
                    self.ended = reasons[0]
                    break
            if self._carry is None and self.continuations[0]:
                self._carry = (_first_stream_state(generator.last_state), self.continuations[0][-1])
        finally:
            stream.close()
        if self._carry is None:  # interrupted before the first character: nothing was fed
            self._carry = (self._state, self._prime)
        seconds = time.perf_counter() - started
        first = "".join(self.continuations[0])
        logprobs = None
        if settings.logprobs is not None and first:
            logprobs = generator.continuation_logprobs(self._prime, first, settings.logprobs, self._state)
        self.record = TurnRecord(self.text, ["".join(p) for p in self.continuations], settings, self.seed,
                                 self.ended, seconds, logprobs)
        self.session.finish_turn(self, *self._carry)

    def _ending(self, piece: list[str]) -> str | None:
        """Why a continuation ends with its latest character ("stop", "lines"), or None; stops and newlines stay in the text."""
        for stop in self.settings.stop:
            if len(piece) >= len(stop) and "".join(piece[-len(stop):]) == stop:
                return "stop"
        if self.settings.lines is not None and piece[-1] == "\n" and piece.count("\n") == self.settings.lines:
            return "lines"
        return None


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
        kind = why_not_regular(path) if path.exists() else None
        if kind is not None:
            raise CharlstmError(f"{path} {kind}; give the name of a file to write the transcript to")
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
        atomic_write_text(path, "\n".join(lines) + "\n")


def _is_transcript(path: Path) -> bool:
    """Whether ``path`` starts with the transcript mark, reading no more than the mark's bytes."""
    mark = TRANSCRIPT_MARK.encode("utf-8")
    try:
        return read_bytes(path, head=len(mark)) == mark
    except FileRefused:
        return False
