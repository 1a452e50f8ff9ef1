"""Everything charlstm shows on a terminal goes through here: the one rule for output.

There are two consoles and no others. ``out`` (stdout) carries only what the user asked for
— samples, JSON, the tables of ``eval``/``score``/``info`` — so it can be piped; ``err``
(stderr) carries messages, progress and summaries. Views (:mod:`.views`) and the REPL
(:mod:`.repl`) draw on these two; progress is Rich's, a live bar on a terminal and a plain
line every few seconds elsewhere (CI, a log file). The layers below never print.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

if TYPE_CHECKING:
    from ..analysis.bench import BenchResult
    from ..analysis.corpus_stats import CorpusStats
    from ..analysis.longrange import DemoRow
    from ..data.catalogue import CatalogueEntry
    from ..data.sources import SkippedFile
    from ..data.synth import SynthCorpus
    from ..training.reporting import EvalStats, RunInfo, StepStats, TrainResult

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


# What str.splitlines breaks a line at: a path or name holding one would split a message across lines.
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


def _one_line(message: str) -> str:
    """An error or warning as the single line it is meant to be: line breaks inside it (from a file or run
    name) are shown escaped, and rich markup in it is shown as text."""
    return escape(message.translate(_LINE_BREAKS))


def error(message: str) -> None:
    err.print(f"[bold red]error:[/] {_one_line(message)}", soft_wrap=True)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {_one_line(message)}", soft_wrap=True)


def note(message: str) -> None:
    err.print(escape(message), soft_wrap=True)


# Narrower than this, tables and panels have no room for a single cell and print nothing.
MIN_WIDTH = 40


def fit_width() -> None:
    """Take $COLUMNS afresh (a wrapper or test may set it after import), never narrower than MIN_WIDTH."""
    columns = os.environ.get("COLUMNS", "")
    for console in (out, err):
        console.width = int(columns) if columns.isdigit() else None  # type: ignore[assignment]  # None: measure again
        if console.width < MIN_WIDTH:
            console.width = MIN_WIDTH


def write_text(text: str) -> None:
    """Generated text goes to stdout untouched: no markup, no wrapping."""
    sys.stdout.write(text)
    sys.stdout.flush()


def format_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def format_count(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:.0f}"


def _loss(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f} ({value / 0.6931471805599453:.3f} bpc)"


def _budget(info: RunInfo) -> str:
    limits = []
    if info.train.steps is not None:
        limits.append(f"{info.train.steps} steps")
    if info.train.epochs is not None:
        limits.append(f"{info.train.epochs:g} epochs")
    if info.train.time_budget is not None:
        limits.append(format_duration(info.train.time_budget))
    return " or ".join(limits) + (", whichever comes first" if len(limits) > 1 else "")


class ConsoleTrainReporter:
    """Draws a training run: a header, live progress, evaluations, a summary table."""

    def __init__(self, console: Console = err, live: bool | None = None, log_every: float = 10.0,
                 started_at: float | None = None):
        self.console = console
        self.estimate = ""  # what the sizing rule expects the run to read, shown in the header
        # When the command began (perf_counter): the header shows the start-up, which the budget does not count.
        self.started_at = started_at
        self.startup_detail = ""  # what the start-up did, e.g. whether the corpus came from the cache
        self.live = console.is_terminal if live is None else live
        self.log_every = log_every
        self._progress: Progress | None = None
        self._task = None
        self._last_log = 0.0

    def start(self, info: RunInfo) -> None:
        m, t = info.model, info.train
        table = Table.grid(padding=(0, 2))
        table.add_row("corpus", f"{escape(info.corpus)}  ({format_count(info.corpus_chars)} chars, {info.vocab_size} distinct)")
        table.add_row("split", f"{format_count(info.train_chars)} train / {format_count(info.val_chars)} validation")
        table.add_row(
            "model",
            f"{m.cell.upper()} {m.num_layers}x{m.hidden_size}, embedding {m.emb_size}, dropout {m.dropout:g}"
            f" — {format_count(info.parameters)} parameters",
        )
        table.add_row("batches", f"{t.batch_size} streams x {t.seq_len} chars, lr {t.lr:g}, budget {_budget(info)}")
        table.add_row("device", f"{info.device}, precision {info.precision}")
        if self.estimate:
            table.add_row("expect", escape(self.estimate))
        if self.started_at is not None:
            detail = f" ({self.startup_detail})" if self.startup_detail else ""
            table.add_row("start-up", f"{time.perf_counter() - self.started_at:.1f}s, not counted in the budget{detail}")
        table.add_row("run", str(info.run_dir))
        if info.resumed_from_step:
            table.add_row("resumed", f"from step {info.resumed_from_step}")
        self.console.print(Panel(table, title="charlstm train", expand=False))
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]step {task.fields[step]}"),
                BarColumn(bar_width=24),
                TextColumn("{task.percentage:>3.0f}%"),
                TextColumn("ep {task.fields[epoch]}"),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("val {task.fields[val]}"),
                TextColumn("{task.fields[rate]} ch/s"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("train", total=1.0, step=0, epoch=0, loss="—", val="—", rate="—")

    def step(self, stats: StepStats) -> None:
        val = "—" if stats.val_loss is None else f"{stats.val_loss:.3f}/{stats.val_loss / 0.6931471805599453:.2f}bpc"
        if self._progress is not None:
            self._progress.update(
                self._task,
                completed=stats.progress,
                step=stats.step,
                epoch=stats.epoch,
                loss=f"{stats.train_loss:.3f}",
                val=val,
                rate=format_count(stats.chars_per_sec),
            )
            return
        now = time.monotonic()
        if now - self._last_log >= self.log_every:
            self._last_log = now
            eta = "—" if stats.eta is None else format_duration(stats.eta)
            self.console.print(
                f"step {stats.step} ({stats.progress:.0%}) epoch {stats.epoch} loss {stats.train_loss:.4f} "
                f"val {val} {format_count(stats.chars_per_sec)} ch/s elapsed {format_duration(stats.elapsed)} eta {eta}",
                soft_wrap=True,
            )

    def evaluated(self, stats: EvalStats) -> None:
        mark = " [green]best[/]" if stats.is_best else ""
        part = ""
        if stats.chars < stats.of_chars:
            why = "the most the budget's final share allows" if stats.final else "the same part at every evaluation"
            part = f" [dim]over {format_count(stats.chars)} of {format_count(stats.of_chars)} validation chars ({why})[/]"
        self.console.print(
            f"[bold]step {stats.step}[/] ({format_duration(stats.elapsed)}): val loss {_loss(stats.val_loss)}{mark}{part}"
        )
        if stats.preview:
            self.console.print(f"[dim]{escape(stats.preview)}[/]", soft_wrap=True)

    def finish(self, result: TrainResult) -> None:
        if self._progress is not None:
            self._progress.stop()
        table = Table(title="training finished" if not result.stopped_early else "training stopped", show_header=False)
        table.add_row("parameters", format_count(result.parameters))
        table.add_row("steps", f"{result.steps} ({result.epochs:.2f} epochs)")
        table.add_row("time", format_duration(result.elapsed))
        table.add_row("where it went", _time_shares(result))
        table.add_row("speed", f"{format_count(result.chars_per_sec)} chars/s")
        table.add_row("train loss", f"{result.train_loss:.4f}")
        table.add_row("best val loss", _loss(result.best_val_loss))
        table.add_row("last val loss", _loss(result.last_val_loss))
        if result.final_val_chars < result.val_chars:
            table.add_row("validation", f"the final figure read {format_count(result.final_val_chars)} of "
                                        f"{format_count(result.val_chars)} chars (the most its share of the budget allows)")
        table.add_row("checkpoint", str(result.run_dir))
        self.console.print(table)


def _time_shares(result: TrainResult) -> str:
    """Seconds and share of the run in training steps, evaluation, checkpoints and previews."""
    parts = [("training", result.train_seconds), ("evaluation", result.eval_seconds),
             ("checkpoints", result.save_seconds), ("previews", result.preview_seconds)]
    total = max(result.elapsed, 1e-9)
    return ", ".join(f"{name} {format_duration(seconds)} ({seconds / total:.0%})" for name, seconds in parts)


def print_samples(samples: Iterable[str], prime: str) -> None:
    """Several samples to stdout, each under a header so they can be told apart."""
    for index, text in enumerate(samples, 1):
        write_text(f"--- sample {index} ---\n{prime}{text}\n")


def show_synth(made: "SynthCorpus", path: Path, sidecar: Path) -> None:
    table = Table(title=f"synthetic corpus: {made.kind}", show_header=False)
    table.add_row("what", made.description)
    table.add_row("settings", ", ".join(f"{k} {v}" for k, v in made.params.items()))
    table.add_row("text", f"{path} ({format_count(len(made.text))} chars)")
    table.add_row("marked positions", f"{len(made.positions)} (in {sidecar})")
    table.add_row("ideal loss there", f"{made.ideal_loss:.4f} nats/char")
    table.add_row("without memory", f"{made.chance_loss:.4f} nats/char")
    err.print(table)
    note(f"train on it: charlstm train {path}; score the marked positions: charlstm eval {path} --positions")


def show_demo_progress(row: "DemoRow") -> None:
    err.print(
        f"{row.cell.upper():>4} distance {row.distance:>4}: recall accuracy {row.accuracy:6.1%} "
        f"(chance {row.chance_accuracy:.1%}), key loss {row.key_loss:.3f}, "
        f"gradient reaching the key {row.gradient_norm:.2e}  [{format_duration(row.seconds)}]",
        soft_wrap=True,
    )


def show_demo_table(rows: list["DemoRow"]) -> None:
    """Accuracy against distance per cell, as a table and as bars: the long-range picture."""
    cells = list(dict.fromkeys(r.cell for r in rows))
    distances = list(dict.fromkeys(r.distance for r in rows))
    by_key = {(r.cell, r.distance): r for r in rows}
    table = Table(title="delayed recall: accuracy at the key (gradient norm reaching the key)")
    table.add_column("distance", justify="right")
    for cell in cells:
        sample = next(r for r in rows if r.cell == cell)
        table.add_column(f"{cell.upper()} ({format_count(sample.parameters)} params)", justify="right")
    for distance in distances:
        table.add_row(
            str(distance),
            *(f"{by_key[c, distance].accuracy:.1%} ({by_key[c, distance].gradient_norm:.1e})" for c in cells),
        )
    err.print(table)
    width = 40
    chance = rows[0].chance_accuracy
    err.print(f"recall accuracy (bar = 0-100%, | marks chance {chance:.1%})")
    for distance in distances:
        for cell in cells:
            accuracy = by_key[cell, distance].accuracy
            filled = int(round(accuracy * width))
            bar = list("█" * filled + " " * (width - filled))
            marker = min(width - 1, int(round(chance * width)))
            if bar[marker] == " ":
                bar[marker] = "|"
            err.print(f"{distance:>5} {cell:<4} [{''.join(bar)}] {accuracy:5.1%}", highlight=False)


def show_position_score(figures: dict[str, object]) -> None:
    """The marked positions' loss between its two yardsticks: ideal (perfect memory) and chance (none)."""
    table = Table(title=f"marked positions of {figures['file']} ({figures['kind']})", show_header=False)
    table.add_row("positions scored", str(figures["positions"]))
    table.add_row("loss there", f"{figures['loss']:.4f} nats/char")
    table.add_row("top-1 accuracy", f"{figures['accuracy']:.1%}")
    table.add_row("ideal loss", f"{figures['ideal_loss']:.4f} (a model that remembers everything)")
    table.add_row("no-memory loss", f"{figures['chance_loss']:.4f} (a model that forgot the long-range fact)")
    err.print(table)
# -- corpora ----------------------------------------------------------------------



def format_bytes(size: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size:.0f} B"


def print_catalogue(entries: "Iterable[CatalogueEntry]") -> None:
    """The known corpora, as a table on stdout (it is what the user asked for)."""
    table = Table(title="corpora (charlstm corpus get NAME)")
    for column in ("name", "download", "description", "licence", "sha256"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        checksum = entry.sha256[:12] + "…" if entry.sha256 else "[yellow]unknown[/]"
        table.add_row(entry.name, format_bytes(entry.size), escape(entry.description), escape(entry.licence), checksum)
    out.print(table)


class DownloadBar:
    """Download progress on stderr for :func:`charlstm.data.catalogue.fetch` (a live bar on a terminal only)."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task: Any = None

    def start(self, name: str, total: int | None, done: int) -> None:
        if done:
            note(f"resuming {name} from byte {done:,}")
        if not err.is_terminal:
            return
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            console=err, transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(escape(name), total=total, completed=done)

    def advance(self, size: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, size)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def note_skipped(skipped: "Iterable[SkippedFile]") -> None:
    for item in skipped:
        note(f"skipped {item.path}: {item.reason}")


def _shown(char: str) -> str:
    return repr(char) if not char.isprintable() or char.isspace() else char


def print_corpus_stats(stats: "CorpusStats") -> None:
    """A corpus's statistics, as a table on stdout."""
    table = Table(title="corpus statistics", show_header=False)
    table.add_row("files", f"{stats.files}" + (f" ({len(stats.skipped)} skipped)" if stats.skipped else ""))
    table.add_row("size", f"{stats.bytes:,} bytes ({format_bytes(stats.bytes)})")
    table.add_row("characters", f"{stats.chars:,}")
    table.add_row("distinct", f"{stats.distinct:,}")
    table.add_row("rarest", escape(", ".join(f"{_shown(c)} ×{n:,}" for c, n in stats.rarest)))
    table.add_row("line endings", stats.line_ending_style)
    table.add_row("BOM", f"{stats.files_with_bom} file(s)" if stats.files_with_bom else "none")
    for label, found in (("control chars", stats.controls), ("invisible chars", stats.invisible)):
        shown = ", ".join(f"U+{ord(c):04X} ×{n:,}" for c, n in found.items())
        table.add_row(label, shown or "none")
    table.add_row("memory", f"ids {format_bytes(stats.ids_bytes)} while training; about "
                  f"{format_bytes(stats.encode_peak_bytes)} at peak while first encoding (then cached)")
    presets = ", ".join(f"{name} {format_count(n)}" for name, n in stats.preset_parameters.items())
    table.add_row("model size", f"~{format_count(stats.suggested_parameters)} parameters (char-rnn's rule of thumb: "
                  f"about as many as characters); closest preset: --size {stats.closest_preset} ({presets})")
    out.print(table)


def _finite(data: Any) -> Any:
    """NaN and infinities as null: bare NaN is not JSON, and a script reading it would fail or be misled."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(value) for value in data]
    return data


def write_json(data: Any) -> None:
    write_text(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")


def write_json_line(data: Any) -> None:
    """One JSON object on one line (characters as themselves, not escaped), for scripts and JSONL."""
    write_text(json.dumps(_finite(data), ensure_ascii=False, allow_nan=False) + "\n")


@contextlib.contextmanager
def counting_progress(description: str, unit: str) -> Iterator[Callable[[int, int], None]]:
    """A bar on stderr for a long loop (on a terminal only; transient), fed ``advance(done, total)``."""
    if not err.is_terminal:
        yield lambda done, total: None
        return
    with Progress(TextColumn(escape(description)), BarColumn(), TextColumn(f"{{task.completed:,.0f}}/{{task.total:,.0f}} {unit}"),
                  TimeRemainingColumn(), console=err, transient=True) as progress:
        task = progress.add_task(description, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


def phase(name: str) -> None:
    """A long measurement starting: a dim line on stderr so a silent minute is explained."""
    err.print(f"[dim]measuring {escape(name)}…[/]", soft_wrap=True)


def _rate(chars_per_sec: float) -> str:
    return f"{format_count(chars_per_sec)} chars/s"


def _flops(flops_per_sec: float) -> str:
    return f"{flops_per_sec / 1e9:.1f} GFLOP/s"


def print_bench(result: "BenchResult") -> None:
    """The bench table: each charlstm figure beside the plain-PyTorch one measured in the same run."""
    m, train, memory = result.model, result.train, result.memory
    title = (
        f"charlstm bench — {result.size}: LSTM {m['num_layers']}x{m['hidden_size']}, embedding {m['emb_size']}, "
        f"vocabulary {m['vocab_size']} ({format_count(result.parameters)} parameters), precision {result.precision} "
        f"(sampling {result.sampling_precision}, {result.sampling_step}), CPU {result.cpu_capability}, {result.threads} thread{'s' if result.threads != 1 else ''}"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("measure")
    table.add_column("charlstm", justify="right")
    table.add_column("plain PyTorch", justify="right")
    table.add_column("ratio", justify="right")
    table.add_row(
        f"training, batch {result.batch_size} x {result.seq_len}",
        _rate(train.charlstm_chars_per_sec), _rate(train.bare_chars_per_sec), f"{train.ratio:.2f}x",
    )
    table.add_row(
        f"  MFU ({format_count(train.flops_per_char)} FLOP/char)",
        f"{train.charlstm_mfu:.1%}", f"{train.bare_mfu:.1%}", "",
    )
    table.add_row(
        f"matmul peak ({result.peak.size}²)",
        f"bf16 {_flops(result.peak.bf16_flops_per_sec)}", f"fp32 {_flops(result.peak.fp32_flops_per_sec)}", "",
    )
    for speed in result.sampling:
        table.add_row(
            f"sampling, batch {speed.batch} ({speed.precision} steps)",
            _rate(speed.charlstm_chars_per_sec), _rate(speed.naive_chars_per_sec), f"{speed.ratio:.2f}x",
        )
    stops = result.stops
    table.add_row(
        f"  batch {stops.batch}, {stops.stopped_early} rows stopping early (charlstm without stops in the plain column)",
        f"{format_count(stops.stop_steps_per_sec)} steps/s", f"{format_count(stops.no_stop_steps_per_sec)} steps/s",
        f"{stops.ratio:.2f}x",
    )
    if result.other_runtime is not None:
        other = result.other_runtime
        table.add_row(f"sampling, batch 1, beside {other.runtime}", _rate(other.charlstm_steps_per_sec),
                      _rate(other.naive_steps_per_sec), f"{other.charlstm_steps_per_sec / other.naive_steps_per_sec:.2f}x")
        table.add_row(f"  {other.runtime}, same rounds", _rate(other.runtime_steps_per_sec),
                      _rate(other.naive_steps_per_sec), f"{other.runtime_steps_per_sec / other.naive_steps_per_sec:.2f}x")
    table.add_row(f"first character after a {result.prime_chars}-char prime", f"{result.first_char_ms:.1f} ms", "", "")
    table.add_row("  fast-step setup (once per batch size)", f"{result.stepper_setup_ms:.1f} ms", "", "")
    table.add_row(
        f"sampling step bound: {memory.weight_bytes / 1e6:.1f} MB of weights at "
        f"{memory.bandwidth_bytes_per_sec / 1e9:.1f} GB/s",
        f"{format_count(memory.measured_steps_per_sec)} steps/s",
        f"bound {format_count(memory.bound_steps_per_sec)} steps/s",
        f"{memory.fraction_of_bound:.0%} of bound",
    )
    err.print(table)
