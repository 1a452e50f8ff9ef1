"""How long after Enter does the REPL show its first character, and how fast does it stream?

Drives the REPL's own code path, ``Repl.handle`` (the call a typed line goes
through: unknown-character check, ``ReplSession.start_turn``, the Ctrl-C guard,
``Turn`` iteration over ``Generator.stream``, the terminal view writing colour
codes), on a model of the shape a default ten-minute run trains on a
tiny-Shakespeare-sized corpus (``charlstm bench``'s default), with a
65-character vocabulary. The model is untrained: speed does not depend on the
weights. The clock starts when ``handle`` is called and stops when the view is
handed the first character.

    OMP_NUM_THREADS=1 python benchmarks/repl_latency.py            # one thread
    python benchmarks/repl_latency.py --threads 2                   # both cores

Figures on a shared machine move with the other work on it; compare rows taken
in one run (the continue-vs-fresh ratio is measured side by side).
"""

from __future__ import annotations

import argparse
import io
import statistics
import string
import time
from pathlib import Path
from typing import Sequence

import torch
from rich.console import Console

from charlstm.analysis.bench import default_size
from charlstm.data.corpus import Vocab
from charlstm.generation.session import ReplSession, ReplSettings
from charlstm.interface.repl import PipedLines, Repl, ReplView
from charlstm.model.network import CharLSTM
from charlstm.training.checkpoint import LoadedModel
from charlstm.training.presets import PRESETS

# The 65 characters of a typical English play corpus: letters, digits' stand-in, punctuation, space, newline.
VOCAB = Vocab(sorted(set(string.ascii_letters + " \n!$&',-.3:;?")))
PROMPT_WORDS = "now is the winter of our discontent made glorious summer by this sun of york "


class TimedView(ReplView):
    """The terminal view, writing to memory, noting when the first character of a turn arrives."""

    def __init__(self) -> None:
        super().__init__(interactive=True, out=Console(file=io.StringIO(), force_terminal=True, width=120))
        self.first_char_at: float | None = None
        self.chars = 0
        self.last_char_at = 0.0

    def begin_turn(self, text: str, num_samples: int, last_typed_line: str | None) -> None:
        self.first_char_at, self.chars = None, 0
        super().begin_turn(text, num_samples, last_typed_line)

    def stream(self, char: str) -> None:
        now = time.perf_counter()
        if self.first_char_at is None:
            self.first_char_at = now
        self.chars += 1
        self.last_char_at = now
        super().stream(char)

    def end_turn(self, *args: object) -> None:
        super().end_turn(*args)  # type: ignore[arg-type]
        self.out.file = io.StringIO()  # keep memory flat over many turns


def prompt_of(length: int) -> str:
    return (PROMPT_WORDS * (length // len(PROMPT_WORDS) + 1))[:length]


def timed_turn(repl: Repl, view: TimedView, text: str) -> tuple[float, float]:
    """(seconds to the first character, characters per second after it) for one Enter."""
    started = time.perf_counter()
    repl.handle(text)
    assert view.first_char_at is not None
    steady = (view.chars - 1) / max(view.last_char_at - view.first_char_at, 1e-9)
    return view.first_char_at - started, steady


def describe(label: str, seconds: Sequence[float], rates: Sequence[float]) -> None:
    ms = sorted(s * 1000 for s in seconds)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    print(f"{label:<44} first char: median {statistics.median(ms):6.1f} ms  p90 {p90:6.1f} ms  max {ms[-1]:6.1f} ms"
          f"   stream: {statistics.median(rates):6.0f} chars/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--repeats", type=int, default=15, help="turns per row")
    parser.add_argument("--length", type=int, default=30, help="characters generated per turn")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    preset = PRESETS[default_size()]
    model = CharLSTM(preset.model_config(len(VOCAB)))
    loaded = LoadedModel(model=model, vocab=VOCAB, config={}, path=Path("untrained/best"))
    print(f"model: LSTM {preset.num_layers}x{preset.hidden_size}, embedding {preset.emb_size}, {len(VOCAB)} characters, {model.num_parameters():,} parameters; "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {args.length} chars per turn")

    started = time.perf_counter()
    session = ReplSession(loaded, ReplSettings(length=args.length, seed=1))
    print(f"load-time warm-up (once per model): {(time.perf_counter() - started) * 1000:.0f} ms")
    view = TimedView()
    repl = Repl(session, view, PipedLines(io.StringIO()), lambda path: loaded, interactive=True)

    first, rate = timed_turn(repl, view, prompt_of(20))
    print(f"first Enter after start (20-char prompt): {first * 1000:.1f} ms to the first char")
    for length in (1, 20, 80, 400):
        results = [timed_turn(repl, view, prompt_of(length)) for _ in range(args.repeats)]
        describe(f"fresh turn, {length}-char prompt", *zip(*results))

    # Continue mode keeps the conversation in the state; fresh mode would re-read it all.
    # Two sessions on the same model, their turns alternated so both see the same machine load.
    history = prompt_of(2000)
    carrying = ReplSession(loaded, ReplSettings(length=args.length, seed=1, mode="continue"))
    carrying_view = TimedView()
    carrying_repl = Repl(carrying, carrying_view, PipedLines(io.StringIO()), lambda path: loaded, interactive=True)
    timed_turn(carrying_repl, carrying_view, history)
    carried, rereading = [], []
    for _ in range(args.repeats):
        carried.append(timed_turn(carrying_repl, carrying_view, prompt_of(20)))
        rereading.append(timed_turn(repl, view, history + prompt_of(20)))
    describe(f"continue, 20-char prompt, {carrying.context_chars // 1000}k+ chars in state", *zip(*carried))
    describe("fresh, re-reading 2k chars of history + 20", *zip(*rereading))
    ratio = statistics.median(r[0] for r in rereading) / statistics.median(r[0] for r in carried)
    print(f"continue mode shows its first char {ratio:.1f}x sooner than re-reading the history")


if __name__ == "__main__":
    main()
