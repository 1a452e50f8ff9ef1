"""The REPL's front-end: reads lines (readline on a terminal, plain lines from a pipe), runs
``:commands`` and turns of a :class:`~charlstm.generation.session.ReplSession`, and shows them
through a :class:`ReplView`. The session itself (settings, turns, carried state) lives in the
generation layer, so the benchmark and the server drive the same code a user's Enter key drives."""

from __future__ import annotations

import glob
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.style import Style
from rich.table import Table
from rich.text import Text

from ..base.errors import CharlstmError
from ..base.fsutil import user_dir
from ..data.corpus import UnknownPolicy
from ..generation.controls import CharLogprob
from ..generation.session import (
    OFF_WORDS,
    SETTINGS,
    ModelInfo,
    ReplSession,
    ReplSettings,
    show_escaped,
    split_arguments,
)
from ..training.checkpoint import LoadedModel
from .signals import TwoStageStop
from .terminal import error, format_count, print_samples, warn, write_text
from .terminal import out as terminal_out

HISTORY_ENV = "CHARLSTM_REPL_HISTORY"
HISTORY_LENGTH = 1000


# -- parsing values -------------------------------------------------------------------


ACTIONS: dict[str, tuple[str, str]] = {
    "stop": ('"S" ...|off', r'stop a continuation once it ends with S (escapes such as \n work); several are allowed'),
    "reset": ("", "forget the conversation: the next turn starts from nothing"),
    "save": ("FILE", "write the transcript (every turn, its settings and seed) to FILE"),
    "load": ("CHECKPOINT", "switch to another run or checkpoint directory (the conversation starts over)"),
    "help": ("", "show this list"),
    "quit": ("", "leave (Ctrl-D does the same)"),
}

COMMAND_NAMES = sorted([*SETTINGS, *ACTIONS])


# -- the session: model, settings, conversation ------------------------------------------


# -- reading lines -------------------------------------------------------------------------


def history_path() -> Path:
    """Where the input history persists: $CHARLSTM_REPL_HISTORY, else the user's data directory."""
    return user_dir("data", "repl_history", HISTORY_ENV)


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


def _stop_turn_at_once(signum: int) -> None:
    raise KeyboardInterrupt


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
            # The first Ctrl-C ends the turn after the current character; a second one stops at once.
            with TwoStageStop(lambda signum: turn.interrupt(), _stop_turn_at_once):
                for char in turn:
                    self.view.stream(char)
        else:
            for char in turn:
                self.view.stream(char)
        assert turn.record is not None
        self.view.end_turn(turn.record.text, turn.record.continuations, turn.record.ended,
                           turn.record.chars_per_second, turn.record.seed, turn.record.logprobs)

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


HEAT_BLOCKS = "▁▂▃▄▅▆▇█"


def heat_line(logprobs: tuple[CharLogprob, ...]) -> Text:
    """One block per character of the continuation: taller and greener the likelier the model found it."""
    line = Text()
    for entry in logprobs:
        probability = math.exp(entry.logprob)
        level = min(len(HEAT_BLOCKS) - 1, int(probability * len(HEAT_BLOCKS)))
        red, green = int(255 * (1 - probability)), int(200 * probability + 55)
        line.append(HEAT_BLOCKS[level], style=Style(color=f"rgb({red},{green},60)"))
    bits = -sum(entry.logprob for entry in logprobs) / len(logprobs) / math.log(2)
    line.append(f"  {bits:.2f} bits/char", style="dim")
    return line


def run(loaded: LoadedModel, settings: ReplSettings, view: "ReplView", load_model: LoadModel,
        stdin: TextIO | None = None, interactive: bool | None = None) -> int:
    """Run the REPL on ``loaded``: a terminal session if stdin and stdout are terminals, else piped lines."""
    stdin = stdin if stdin is not None else sys.stdin
    if interactive is None:
        interactive = stdin.isatty() and sys.stdout.isatty()
    session = ReplSession(loaded, settings)
    lines: TerminalLines | PipedLines = TerminalLines(view, history_path()) if interactive else PipedLines(stdin)
    return Repl(session, view, lines, load_model, interactive).run()


class ReplView:
    """What `charlstm repl` shows: a header, prompts, streamed continuations, notes.

    On a terminal the continuation is drawn in its own colour right after the typed
    text; from a pipe (``interactive=False``) stdout gets only the text, as
    ``charlstm sample --prime LINE`` would print it, and notes are left out.
    """

    CONTINUATION = Style(color="cyan")

    def __init__(self, interactive: bool, out: Console | None = None):
        self.interactive = interactive
        self.out = out if out is not None else terminal_out
        self._prompt_width = 0
        self._num_samples = 1
        self._at_line_start = True
        on, _, off = self._ansi(Text("\ue000", style=self.CONTINUATION)).partition("\ue000")
        self._style_on, self._style_off = on, off
        self._can_move_cursor = self.out.is_terminal and not self.out.is_dumb_terminal

    def header(self, info: "ModelInfo") -> None:
        table = Table.grid(padding=(0, 2))
        bpc = "—" if info.val_bpc is None else f"{info.val_bpc:.3f}"
        step = "" if info.step is None else f" at step {info.step}"
        table.add_row("model", f"[bold]{escape(info.run_name)}[/]  {format_count(info.parameters)} parameters, val {bpc} bpc{step}")
        table.add_row("shape", f"{info.shape}, {info.vocab_size} characters")
        table.add_row("checkpoint", escape(str(info.checkpoint)))
        table.add_row("keys", "Enter continues the text · [bold]:help[/] lists settings · Ctrl-C stops · Ctrl-D quits")
        self.out.print(Panel(table, title="charlstm repl", expand=False))

    def _ansi(self, text: Text) -> str:
        """``text`` as this console would write it: with colour codes on a colour terminal, plain elsewhere."""
        with self.out.capture() as captured:
            self.out.print(text, end="", soft_wrap=True)
        return captured.get()

    def _readline_safe(self, markup: str) -> str:
        """A prompt in colour, with its escape codes fenced so readline counts only visible columns."""
        text = Text.from_markup(markup)
        self._prompt_width = text.cell_len
        return re.sub(r"(\x1b\[[0-9;]*m)", "\x01\\1\x02", self._ansi(text))

    def prompt(self, mode: str, settings: str) -> str:
        if not self.interactive:
            return ""
        return self._readline_safe(f"[bold]{escape(mode)}[/] [dim]{escape(settings)}[/] [bold green]›[/] ")

    def continuation_prompt(self) -> str:
        return self._readline_safe("[bold green]…[/] ") if self.interactive else ""

    def unknown_question(self, unknown: list[str], can_keep: bool) -> str:
        shown = ", ".join(repr(c) for c in unknown)
        self.out.print(f"[yellow]the model never saw these characters:[/] {escape(shown)}", soft_wrap=True)
        if can_keep:
            return self._readline_safe("[bold]d[/]rop them, [bold]k[/]eep them as the unknown symbol, or [bold]r[/]e-type the text? \\[d/k/r] ")
        return self._readline_safe("[bold]d[/]rop them, or [bold]r[/]e-type the text? \\[d/r] ")

    def read_line(self, prompt: str) -> str:
        """One line from the user; readline (when loaded) gives editing and history."""
        return input(prompt)

    def begin_turn(self, text: str, num_samples: int, last_typed_line: str | None) -> None:
        """Start a turn's output; ``last_typed_line`` is what the user's last prompt line holds (None: not the text)."""
        self._num_samples = num_samples
        self._at_line_start = True
        if not self.interactive:
            if num_samples == 1:
                write_text(text)
            return
        if last_typed_line is None:
            self.out.file.write(text)  # the screen does not show the text as it will be read: show it
            self._at_line_start = not text or text.endswith("\n")
        elif last_typed_line and self._can_move_cursor and self._prompt_width + cell_len(last_typed_line) < self.out.width:
            # Back up to the end of the typed line so the continuation follows the text.
            self.out.file.write(f"\x1b[1A\x1b[{self._prompt_width + cell_len(last_typed_line) + 1}G")
            self._at_line_start = False

    def stream(self, char: str) -> None:
        if not self.interactive:
            if self._num_samples == 1:  # several are printed together at the end, under headers
                write_text(char)
            return
        if char != "\n" and not char.isprintable():
            char = chr(0x2400 + ord(char)) if ord(char) < 32 else "\ufffd"  # show control characters, never obey them
        self.out.file.write(f"{self._style_on}{char}{self._style_off}")
        self.out.file.flush()
        self._at_line_start = char == "\n"

    def end_turn(self, text: str, continuations: list[str], ended: str, chars_per_second: float, seed: int,
                 logprobs: tuple[CharLogprob, ...] | None = None) -> None:
        if not self.interactive:
            if len(continuations) == 1:
                write_text("\n")
            else:
                print_samples(continuations, text)
            return
        if not self._at_line_start:
            self.out.file.write("\n")
        self.out.file.flush()
        if logprobs:
            self.out.print(heat_line(logprobs), soft_wrap=True)
        for index, continuation in enumerate(continuations[1:], 2):
            self.out.print(f"[dim]── continuation {index} of {len(continuations)} ──[/]")
            self.out.print(Text(text) + Text(continuation, style=self.CONTINUATION), soft_wrap=True)
        how = {"length": "", "stop": " · stopped at a stop string", "lines": " · stopped after the lines asked for",
               "interrupted": " · interrupted"}[ended]
        self.out.print(f"[dim]{len(continuations[0])} chars · {chars_per_second:.0f} chars/s · seed {seed}{how}[/]")

    def help(self, rows: list[tuple[str, str, str]]) -> None:
        table = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
        table.add_column("command")
        table.add_column("does")
        table.add_column("now", style="cyan")
        for row in rows:
            table.add_row(*(escape(cell) for cell in row))
        self.out.print(table)
        self.out.print("[dim]Text is continued as typed; end a line with \\ to go on to the next; start it with :: to begin with a colon.[/]")

    def note(self, message: str) -> None:
        if self.interactive:
            self.out.print(f"[dim]{escape(message)}[/]", soft_wrap=True)

    def warn(self, message: str) -> None:
        warn(message)

    def error(self, message: str) -> None:
        error(message)

    def cancelled_line(self) -> None:
        self.out.file.write(f"{self._style_off}\n")
        self.out.file.flush()

    def goodbye(self) -> None:
        if self.interactive:
            self.out.file.write("\n")
            self.out.file.flush()
