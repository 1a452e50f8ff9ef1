"""Pictures of what a model learned: heat-maps, activation bands, run panels and loss curves.

Only the CLI calls this module, and like ``console.py`` it is the terminal layer: the analysis
modules compute, this one draws. Every picture carries its meaning in characters as well as
colours (a band of block glyphs under each line of text), so it survives a pipe, NO_COLOR or a
README.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from rich.cells import cell_len
from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..analysis.dynamic import DynamicResult
from ..analysis.features import Signal
from ..analysis.gates import GateSaturation, LstmTrace, UnitMatch
from ..analysis.lines import LineJudgement, LineScore, LineScores
from ..analysis.scoring import EvalResult, RunSummary, Surprisal
from ..base.errors import CharlstmError
from ..base.runtime import LN2
from .terminal import err, format_count, format_duration, out

BLOCKS = "▁▂▃▄▅▆▇█"
SURPRISAL_SCALE = 10.0  # bits at which the heat-map saturates; one scale makes texts comparable
Colour = Callable[[float], tuple[int, int, int]]


# -- colours ---------------------------------------------------------------------------------------

def _blend(stops: Sequence[tuple[int, int, int]], fraction: float) -> tuple[int, int, int]:
    fraction = min(1.0, max(0.0, fraction)) * (len(stops) - 1)
    low = min(int(fraction), len(stops) - 2)
    mix = fraction - low
    a, b = stops[low], stops[low + 1]
    return tuple(round(x + (y - x) * mix) for x, y in zip(a, b))  # type: ignore[return-value]


def heat(fraction: float) -> tuple[int, int, int]:
    """Calm to alarmed: dark blue, through yellow, to red."""
    return _blend([(24, 30, 60), (40, 90, 150), (230, 200, 60), (225, 60, 40)], fraction)


def diverging(fraction: float) -> tuple[int, int, int]:
    """-1 blue, 0 white, +1 red, as in Karpathy et al.'s cell pictures (``fraction`` = (v+1)/2)."""
    return _blend([(40, 90, 200), (245, 245, 245), (210, 50, 40)], fraction)


def sequential(fraction: float) -> tuple[int, int, int]:
    """0 white to 1 green, for gates."""
    return _blend([(245, 245, 245), (40, 150, 70)], fraction)


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _ink(rgb: tuple[int, int, int]) -> str:
    """Black text on light backgrounds, white on dark ones."""
    return "#000000" if 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140 else "#ffffff"


# -- bands: text coloured by a value, with a glyph row under it ------------------------------------

def glyph(char: str) -> str:
    """How a character is drawn: newlines, tabs and other invisible characters get a visible mark."""
    return {"\n": "↵", "\t": "→", " ": " "}.get(char, char if char.isprintable() else "·")


def _rows(text: str, width: int) -> list[range]:
    """Index ranges of ``text`` that fit ``width`` terminal cells; a newline ends its row."""
    rows, start, used = [], 0, 0
    for index, char in enumerate(text):
        size = cell_len(glyph(char))
        if used + size > width and index > start:
            rows.append(range(start, index))
            start, used = index, 0
        used += size
        if char == "\n":
            rows.append(range(start, index + 1))
            start, used = index + 1, 0
    if start < len(text):
        rows.append(range(start, len(text)))
    return rows


def band(text: str, fractions: np.ndarray, colour: Colour, width: int) -> Text:
    """``text`` with each character on the colour of its value and, under each row, a row of block
    glyphs whose height is the value (``fractions`` in [0, 1]; NaN draws ``?``: not scored)."""
    picture = Text()
    for row in _rows(text, width):
        marks = Text()
        for index in row:
            shown, value = glyph(text[index]), fractions[index]
            size = cell_len(shown)
            if math.isnan(value):
                picture.append(shown, style="bold magenta")
                marks.append("?" * size, style="magenta")
                continue
            rgb = colour(value)
            picture.append(shown, style=f"{_ink(rgb)} on {_hex(rgb)}")
            marks.append(BLOCKS[min(len(BLOCKS) - 1, int(value * len(BLOCKS)))] * size, style=_hex(rgb))
        picture.append("\n")
        picture.append_text(marks)
        picture.append("\n")
    return picture


def legend(colour: Colour, labels: Sequence[str]) -> Text:
    """One swatch per label, evenly spread over the colour scale."""
    line = Text()
    for position, label in enumerate(labels):
        fraction = position / max(1, len(labels) - 1)
        rgb = colour(fraction)
        line.append(f"{BLOCKS[min(len(BLOCKS) - 1, int(fraction * len(BLOCKS)))]}", style=_hex(rgb))
        line.append(f" {label} ", style=f"{_ink(rgb)} on {_hex(rgb)}")
        line.append(" ")
    return line


def _width(console: Console) -> int:
    return max(20, console.width)


# -- eval ------------------------------------------------------------------------------------------

def show_eval(result: EvalResult, source: str) -> None:
    table = Table(title=f"charlstm eval: {escape(source)}", show_header=False, title_justify="left")
    table.add_row("checkpoint", escape(result.checkpoint))
    table.add_row("loss", f"{result.loss:.4f} nats/char")
    table.add_row("bpc", f"{result.bpc:.4f} bits/char")
    table.add_row("perplexity", f"{result.perplexity:.3f}")
    table.add_row("characters", f"{result.scored_chars:,} scored of {result.text_chars:,} "
                                f"({result.streams} streams x {result.seq_len}-char windows, {result.precision})")
    table.add_row("unknown", escape(unknown_summary(result.unknown)) or "none")
    table.add_row("speed", f"{format_count(result.chars_per_sec)} chars/s ({format_duration(result.seconds)})")
    out.print(table)


def show_dynamic_eval(result: DynamicResult, source: str) -> None:
    """The static and dynamic losses of one text side by side, with what each took."""
    static = result.static
    lr, decay = result.config.rates
    table = Table(title=f"charlstm eval --dynamic: {escape(source)}", title_justify="left")
    for column in ("", "loss (nats/char)", "bpc", "time"):
        table.add_column(column, justify="right" if column else "left")
    table.add_row("static", f"{static.loss:.4f}", f"{static.bpc:.4f}", format_duration(static.seconds))
    table.add_row("dynamic", f"{result.dynamic_loss:.4f}", f"{result.dynamic_loss / LN2:.4f}",
                  format_duration(result.dynamic_seconds))
    table.add_row("gain", f"{result.gain:.4f}", f"{result.gain / LN2:.4f}", "")
    out.print(table)
    out.print(f"{static.scored_chars:,} characters scored in {static.streams} stream(s) of {result.config.window}-character "
              f"windows; update rule {result.config.rule} (η {lr:g}, λ {decay:g}); checkpoint {escape(static.checkpoint)} "
              "unchanged")
    if static.unknown:
        out.print(escape(unknown_summary(static.unknown)))


def unknown_summary(unknown: dict[str, int]) -> str:
    """'3 characters outside the vocabulary, skipped: 'é' x2, '€' x1' or ''."""
    if not unknown:
        return ""
    shown = ", ".join(f"{c!r} x{n}" for c, n in sorted(unknown.items(), key=lambda item: -item[1])[:8])
    more = f" and {len(unknown) - 8} more kinds" if len(unknown) > 8 else ""
    total = sum(unknown.values())
    return f"{total:,} character(s) outside the vocabulary, skipped: {shown}{more}"


# -- score -----------------------------------------------------------------------------------------

def show_surprisal(result: Surprisal, spans: int = 5) -> None:
    width = _width(out)
    out.print(band(result.text, result.bits / SURPRISAL_SCALE, heat, width), end="")
    scale = [f"{SURPRISAL_SCALE * n / 4:g}" for n in range(5)]
    out.print(Text("surprisal, bits: ").append_text(legend(heat, scale[:-1] + [scale[-1] + "+"])))
    summary = f"{len(result.scored):,} characters, mean {result.mean_bits:.3f} bits/char, total {result.total_bits:,.1f} bits"
    out.print(summary)
    if result.unknown:
        out.print(escape(unknown_summary(result.unknown)) + " (shown as ?)")
    if spans == 0:
        return
    table = Table(title="most surprising words", title_justify="left")
    for column in ("bits", "peak", "line:col", "text"):
        table.add_column(column, justify="right" if column != "text" else "left")
    for span in result.spans(spans):
        table.add_row(f"{span.bits:.1f}", f"{span.peak_bits:.1f}", f"{span.line}:{span.column}", escape(span.text))
    out.print(table)


def _highlighted_line(line: LineScore, limit: int) -> Text:
    """The line with each character on its heat colour (bits against the heat-map's scale), cut
    to ``limit`` cells around its most surprising character; a costly line break shows as ↵."""
    values = line.nats / LN2 / SURPRISAL_SCALE
    shown = line.text + "\n"
    begin = max(0, min(line.peak_index - limit // 2, len(shown) - limit))
    picture = Text("…" if begin else "")
    for index in range(begin, min(len(shown), begin + limit)):
        char = shown[index]
        if char == "\n" and values[index] < 0.5:
            continue
        rgb = heat(float(values[index]))
        picture.append(glyph(char), style=f"{_ink(rgb)} on {_hex(rgb)}" if values[index] >= 0.25 else "")
    if begin + limit < len(shown):
        picture.append("…")
    return picture


def show_line_ranking(scores: LineScores, judgement: LineJudgement, top: int, source: str) -> None:
    """The ``top`` most surprising lines, their costs and their hottest characters, and what the
    threshold and the labels say."""
    ranked = scores.ranked(judgement.by)[:top]
    title = f"charlstm score --lines: {escape(source)} (top {len(ranked)} of {len(scores.lines):,} by {judgement.by})"
    table = Table(title=title, title_justify="left")
    for column in ("line", "mean", "total", "peak", "at", "text"):
        table.add_column(column, justify="left" if column == "text" else "right", no_wrap=column != "text")
    flagged = judgement.flagged
    for line in ranked:
        mark = "[bold red]![/]" if flagged is not None and flagged[line.number - 1] else ""
        table.add_row(f"{mark}{line.number}", f"{line.mean_nats:.2f}", f"{line.total_nats:.1f}",
                      f"{line.peak_nats / LN2:.1f}b", str(line.peak_index + 1),
                      _highlighted_line(line, max(20, _width(out) - 40)))
    out.print(table)
    out.print(f"nats per character (mean), nats per line (total); peak: the costliest character, in bits, "
              f"at its column; {format_count(scores.chars_per_sec)} chars/s "
              f"({'carried state' if scores.carry else 'each line from a fresh state'})")
    if judgement.threshold is not None:
        out.print(f"threshold {judgement.threshold:.3f} ({judgement.by}, the reference's {judgement.percentile:g}th "
                  f"percentile): {judgement.flagged_count:,} line(s) above it, marked !")
    if judgement.auc is not None:
        precision = ", ".join(f"P@{k} {value:.3f}" for k, value in (judgement.precision or {}).items())
        out.print(f"labels: {judgement.positives:,} anomalous line(s); ROC AUC {judgement.auc:.4f}; {precision}")


# What makes a page or picture recognisably charlstm's own, so writing it again needs no --force.
HTML_MARKER = '<meta name="generator" content="charlstm">'
PNG_SOFTWARE = "charlstm"
PNG_MARKER = b"Software\x00" + PNG_SOFTWARE.encode()


def surprisal_html(result: Surprisal, title: str, spans: int = 10) -> str:
    """The heat-map as one self-contained HTML page (inline CSS, no scripts, nothing fetched);
    hovering a character shows its surprisal."""
    cells = []
    for char, value in zip(result.text, result.bits):
        if math.isnan(value):
            cells.append(f'<span class="u" title="not in the vocabulary">{html.escape(char)}</span>')
            continue
        rgb = heat(value / SURPRISAL_SCALE)
        shown = "↵\n" if char == "\n" else html.escape(char)
        cells.append(f'<span style="background:{_hex(rgb)};color:{_ink(rgb)}" title="{html.escape(repr(char))}: '
                     f'{value:.2f} bits">{shown}</span>')
    swatches = "".join(
        f'<span style="background:{_hex(heat(n / 4))};color:{_ink(heat(n / 4))}">&nbsp;{SURPRISAL_SCALE * n / 4:g}'
        f'{"+" if n == 4 else ""}&nbsp;</span>'
        for n in range(5)
    )
    rows = "".join(
        f"<tr><td>{s.bits:.1f}</td><td>{s.peak_bits:.1f}</td><td>{s.line}:{s.column}</td><td><code>{html.escape(s.text)}</code></td></tr>"
        for s in result.spans(spans)
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{HTML_MARKER}<title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; background: #fafafa; color: #222; }}
pre {{ font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 15px; line-height: 1.5;
      white-space: pre-wrap; word-break: break-all; background: #fff; padding: 1em; border: 1px solid #ddd; }}
pre span {{ border-radius: 2px; }} .u {{ outline: 1px dashed #c0c; }}
.legend span {{ font-family: ui-monospace, monospace; }} table {{ border-collapse: collapse; }}
td, th {{ padding: 2px 10px; border-bottom: 1px solid #ddd; text-align: right; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Each character on the colour of its surprisal, −log2 p(character | text before it), in bits.
{len(result.scored):,} characters, mean {result.mean_bits:.3f} bits/char.</p>
<p class="legend">bits: {swatches}</p>
<pre>{"".join(cells)}</pre>
<h2>Most surprising words</h2>
<table><tr><th>bits</th><th>peak</th><th>line:col</th><th>text</th></tr>{rows}</table>
</body></html>
"""


# -- inspect ---------------------------------------------------------------------------------------

def _signal_band(trace: LstmTrace, layer: int, unit: int, signal: Signal) -> Text:
    values = trace.layers[layer].signal(signal)[:, unit]
    if signal == "cell":
        return band(trace.text, (values + 1) / 2, diverging, _width(out))
    return band(trace.text, values, sequential, _width(out))


def _signal_legend(signal: Signal) -> Text:
    if signal == "cell":
        return Text("tanh(c): ").append_text(legend(diverging, ["-1", "-0.5", "0", "+0.5", "+1"]))
    return Text(f"{signal} gate: ").append_text(legend(sequential, ["0", "0.25", "0.5", "0.75", "1"]))


def show_unit(trace: LstmTrace, layer: int, unit: int, signal: Signal) -> None:
    title = "tanh(c)" if signal == "cell" else f"{signal} gate"
    out.print(Text(f"layer {layer} unit {unit}: {title}", style="bold"))
    out.print(_signal_band(trace, layer, unit, signal), end="")
    out.print(_signal_legend(signal))


def show_top_units(trace: LstmTrace, matches: list[UnitMatch], constant: list[str], signal: Signal, shown: int = 3) -> None:
    """The ranking as a table, then a band for each of the best ``shown`` units."""
    if constant:
        out.print(f"not ranked (the text does not vary in them): {', '.join(constant)}")
    table = Table(title=f"units whose {'tanh(c)' if signal == 'cell' else signal + ' gate'} follows a feature",
                  title_justify="left")
    for column in ("layer", "unit", "feature", "r"):
        table.add_column(column, justify="left" if column == "feature" else "right")
    for match in matches:
        table.add_row(str(match.layer), str(match.unit), match.feature, f"{match.r:+.3f}")
    out.print(table)
    for match in matches[:shown]:
        out.print(Text(f"layer {match.layer} unit {match.unit} ({match.feature}, r = {match.r:+.3f})", style="bold"))
        out.print(_signal_band(trace, match.layer, match.unit, signal), end="")
    if matches:
        out.print(_signal_legend(signal))


def show_saturation(stats: list[GateSaturation]) -> None:
    table = Table(title="gate saturation (fraction of unit-steps < 0.1 or > 0.9)", title_justify="left")
    for column in ("layer", "gate", "left < 0.1", "right > 0.9", "units mostly left", "units mostly right"):
        table.add_column(column, justify="left" if column == "gate" else "right")
    for s in stats:
        table.add_row(str(s.layer), s.gate, f"{s.left:.1%}", f"{s.right:.1%}",
                      f"{s.units_left}/{s.units}", f"{s.units_right}/{s.units}")
    out.print(table)


# -- info and loss curves --------------------------------------------------------------------------

BRAILLE_BASE = 0x2800
_DOT_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # [row][column] within a cell


def loss_chart(records: list[dict[str, Any]], width: int = 60, height: int = 10) -> Text:
    """Train loss (a braille line) and validation loss (◆) against steps, drawn in characters."""
    train = [(r["step"], r["train_loss"]) for r in records if r.get("train_loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    points = train + val
    if not points:
        return Text("no metrics to plot yet (metrics.jsonl is empty)")
    last_step = max(max(step for step, _ in points), 1)
    low, high = min(v for _, v in points), max(v for _, v in points)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    dots_x, dots_y = width * 2, height * 4
    grid = [[0] * width for _ in range(height)]
    markers: dict[tuple[int, int], str] = {}

    def dot(step: float, value: float) -> tuple[int, int]:
        x = round(step / last_step * (dots_x - 1))
        y = round((high - value) / (high - low) * (dots_y - 1))
        return x, y

    previous = None
    for step, value in train:
        x, y = dot(step, value)
        segment = [(x, y)] if previous is None else _line(previous, (x, y))
        for px, py in segment:
            grid[py // 4][px // 2] |= _DOT_BITS[py % 4][px % 2]
        previous = (x, y)
    for step, value in val:
        x, y = dot(step, value)
        markers[(y // 4, x // 2)] = "◆"
    axis = 8
    chart = Text()
    for row in range(height):
        value = high - (high - low) * row / (height - 1)
        label = f"{value:.3f}" if row in (0, height // 2, height - 1) else ""
        chart.append(f"{label:>{axis}} ┤", style="dim")
        for column in range(width):
            if (row, column) in markers:
                chart.append("◆", style="bold magenta")
            elif grid[row][column]:
                chart.append(chr(BRAILLE_BASE + grid[row][column]), style="cyan")
            else:
                chart.append(" ")
        chart.append("\n")
    chart.append(" " * axis + " └" + "─" * width + "\n", style="dim")
    end_label = f"step {last_step}"
    chart.append(" " * (axis + 2) + "0" + end_label.rjust(width - 1) + "\n", style="dim")
    chart.append(" " * (axis + 2))
    chart.append("⠒⠒ train loss (moving average)", style="cyan")
    chart.append("   ")
    chart.append("◆ validation loss", style="bold magenta")
    chart.append("   nats/char")
    return chart


def _line(start: tuple[int, int], end: tuple[int, int]) -> list[tuple[int, int]]:
    """The dots between two dots (Bresenham), so a sparse series still draws a joined line."""
    (x0, y0), (x1, y1) = start, end
    dx, dy = abs(x1 - x0), -abs(y1 - y0)
    sx, sy = (1 if x1 >= x0 else -1), (1 if y1 >= y0 else -1)
    error, dots = dx + dy, []
    while True:
        dots.append((x0, y0))
        if (x0, y0) == (x1, y1):
            return dots
        doubled = 2 * error
        if doubled >= dy:
            error += dy
            x0 += sx
        if doubled <= dx:
            error += dx
            y0 += sy


def _vocab_line(chars: list[str], limit: int = 160) -> str:
    shown = "".join("␠" if c == " " else glyph(c) for c in chars[:limit])
    return shown + (f" … and {len(chars) - limit} more" if len(chars) > limit else "")


def _loss_bpc(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f} nats/char ({value / LN2:.3f} bpc)"


def _origin_rows(config: dict[str, Any]) -> list[tuple[str, str]]:
    """Where a model came from: a shipped model's books and command, a fine-tuned run's chain of parents."""
    rows = []
    base = config.get("base")
    if isinstance(base, dict):
        files = config.get("corpus", {}).get("files", [])
        rows.append(("books", ", ".join(f"{f.get('path')} ({str(f.get('sha256'))[:12]})" for f in files if isinstance(f, dict))))
        rows.append(("trained", f"{base.get('command')} — {format_duration(float(base.get('wall_seconds', 0)))} "
                                f"on {base.get('machine')}; rebuilt by {base.get('trained_with')}"))
        rows.append(("stored", f"{base.get('stored_as')}; never saw {', '.join(base.get('held_out', []))}"))
    parent, chain = config.get("parent"), []
    while isinstance(parent, dict):
        name = f"the shipped model '{parent['base']}'" if "base" in parent else str(parent.get("path", "?"))
        chain.append(f"{name} (step {parent.get('step')}, weights sha256 {str(parent.get('weights_sha256'))[:12]}, "
                     f"{parent.get('new_chars', 0)} characters added)")
        parent = parent.get("parent")
    if chain:
        rows.append(("started from", " ← ".join(chain)))
    return rows


def info_panel(summary: RunSummary) -> Panel:
    config, metrics, train = summary.config, summary.metrics, summary.config.get("train", {})
    model = config["model"]
    p = summary.profile
    table = Table.grid(padding=(0, 2))
    table.add_row("checkpoint", escape(str(summary.checkpoint)))
    table.add_row("corpus", escape(f"{config.get('corpus', {}).get('source', '?')} "
                                   f"({format_count(config.get('corpus', {}).get('chars', 0))} chars)"))
    for label, line in _origin_rows(config):
        table.add_row(label, Text(line, overflow="fold"))
    table.add_row("model", f"{model.get('cell', 'lstm').upper()} {model['num_layers']}x{model['hidden_size']}, "
                           f"embedding {model['emb_size']}, dropout {model.get('dropout', 0):g} — "
                           f"{format_count(metrics.get('parameters', 0))} parameters")
    table.add_row("vocabulary", Text(_vocab_line(summary.vocab), overflow="fold"))
    table.add_row("", f"{p.size} characters: {p.letters} letters, {p.digits} digits, {p.punctuation} punctuation, "
                      f"{p.symbols} symbols, {p.whitespace} whitespace, {p.control} control, {p.other} other; "
                      f"{p.non_ascii} non-ASCII")
    settings = ("batch_size", "seq_len", "lr", "steps", "epochs", "time_budget", "val_frac", "seed")
    table.add_row("training", ", ".join(f"{k} {train[k]:g}" if isinstance(train[k], float) else f"{k} {train[k]}"
                                        for k in settings if train.get(k) is not None)
                  + f", precision {config.get('precision', '?')}")
    table.add_row("progress", f"step {metrics.get('step', 0)}, epoch {metrics.get('epoch', 0)}, "
                              f"{format_count(metrics.get('chars_seen', 0))} chars seen in "
                              f"{format_duration(metrics.get('elapsed', 0.0))}")
    evaluations = summary.evaluations
    best = min((r["val_loss"] for r in evaluations), default=metrics.get("best_val_loss"))
    last = evaluations[-1]["val_loss"] if evaluations else metrics.get("val_loss")
    table.add_row("best val", _loss_bpc(best))
    table.add_row("last val", _loss_bpc(last))
    table.add_row("train loss", _loss_bpc(metrics.get("train_loss")))
    return Panel(Group(table, Text(""), loss_chart(summary.records)), title="charlstm info", expand=False)


def show_info(summary: RunSummary) -> None:
    out.print(info_panel(summary))


def show_curves(records: list[dict[str, Any]]) -> None:
    """The loss chart on stderr, where the rest of a training run's report goes."""
    err.print(loss_chart(records))


def save_curve_png(records: list[dict[str, Any]], path: Path, title: str) -> None:
    """The loss curves as a PNG (matplotlib, the optional ``plot`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CharlstmError("charlstm plot needs matplotlib; install it with: pip install 'charlstm[plot]'") from None
    train = [(r["step"], r["train_loss"]) for r in records if r.get("train_loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if not train and not val:
        raise CharlstmError("the run has no metrics to plot yet; train it first")
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=120)
    if train:
        axes.plot(*zip(*train), label="train loss (moving average)", color="tab:blue")
    if val:
        axes.plot(*zip(*val), "D-", label="validation loss", color="tab:purple")
    axes.set_xlabel("step")
    axes.set_ylabel("loss, nats/char")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png", metadata={"Software": PNG_SOFTWARE})
    plt.close(figure)
