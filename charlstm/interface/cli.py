"""The ``charlstm`` command: a thin shell that turns options into calls of the Python API."""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn

import click
from click.core import ParameterSource

# Only light modules at the top: `charlstm --help` and `--version` must answer without loading torch.
# Each command imports the layers it needs when it runs.
from ..analysis.features import FEATURES, SIGNALS, Signal
from ..base.errors import CharlstmError
from ..base.version import __version__
from ..data.corpus import DEFAULT_CORPUS_DESCRIPTION
from ..data.synth import SYNTH_KINDS
from ..training.layout import DEFAULT_ROOT
from ..training.presets import ALL_PRESETS, PRESETS
from . import terminal as console
from .options import (
    PRECISIONS,
    SAMPLING_PRECISION_HELP,
    SAMPLING_PRECISIONS,
    SEED,
    Duration,
    FiniteFloatRange,
    Size,
    checkpoint_option,
    device_option,
    precision_option,
    which_option,
)
from .signals import TwoStageStop

if TYPE_CHECKING:
    from ..data.cache import CorpusCache
    from ..data.corpus import Corpus, TextOptions
    from ..model.config import ModelConfig
    from ..training.config import TrainConfig
    from ..training.distributed import DistributedContext
    from ..training.sizing import RunChoices
    from ..training.trainer import Trainer


force_output_option = click.option(
    "--force", is_flag=True,
    help="Replace an existing file that is not charlstm's own earlier output (devices, FIFOs and folders are refused even so).")


class ReaderGone(Exception):
    """stdout's reader went away (``| head``): carried past click, which would turn the OSError into exit 1."""


class CharlstmGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise ReaderGone() from None


def _escapes(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Escapes stand for characters a shell cannot pass; a broken one is refused before any corpus is read."""
    try:
        return value.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as error:
        raise click.BadParameter(
            f"{value!r} has a broken escape ({error.reason}); write a backslash as \\\\ or use \\n, \\t, \\xHH"
        ) from None


@click.group(cls=CharlstmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="charlstm")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Train character-level LSTM language models on any text and generate from them."""
    ctx.obj = {"debug": debug}


TRAIN_HELP = f"""Train a model on CORPUS: text files, folders and quoted patterns ('poems/*.txt').

Folders and patterns bring their files in sorted order, joined by
--doc-separator; files that are not text are skipped with a note. The encoded
corpus is cached (by content and options) so the next run starts at once. With
no CORPUS, trains on the built-in default: {DEFAULT_CORPUS_DESCRIPTION},
read from this Python installation. Stops at --steps, --epochs or --time,
whichever comes first (10 minutes if none is given). Writes the run to
OUT/NAME: best/ and last/ checkpoints and metrics.jsonl.

With --init-from RUN (a run, a checkpoint, or 'base', the model shipped with
charlstm), starts from RUN's weights: the vocabulary grows by the corpus's new
characters and the model keeps RUN's shape; the optimiser is fresh.

With --resume, continues a run exactly where it stopped, on its own corpus
unless CORPUS is given; --steps, --epochs and --time then set the run's new
total budget. Ctrl-C stops cleanly and saves the run; a second Ctrl-C stops at once.
"""


@cli.command(help=TRAIN_HELP)
@click.argument("corpus", nargs=-1)
@click.option("--time", "time_budget", type=Duration(), help="Wall-clock budget, e.g. 90s, 10m, 1h (default 10m when no other limit is given).")
@click.option("--steps", type=click.IntRange(min=1), help="Stop after this many optimiser steps.")
@click.option("--epochs", type=FiniteFloatRange(min=0, min_open=True), help="Stop after this many passes over the training text.")
@click.option("--size", type=click.Choice(list(PRESETS)), help="Model size preset (default: chosen from the time budget and corpus size).")
@click.option("--layers", type=click.IntRange(1, 16), help="Number of stacked recurrent layers.")
@click.option("--hidden", type=click.IntRange(1, 8192), help="Hidden (and cell) state size per layer.")
@click.option("--emb", type=click.IntRange(1, 8192), help="Character embedding size.")
@click.option("--dropout", type=FiniteFloatRange(0, 1, max_open=True), help="Dropout between layers and before the head.")
@click.option("--cell", type=click.Choice(["lstm", "gru", "rnn"]), default="lstm", show_default=True, help="Recurrent cell type.")
@click.option("--batch-size", type=click.IntRange(1, 65536), help="Number of parallel text streams per step.")
@click.option("--seq-len", type=click.IntRange(1, 65536), help="Characters per stream per step (truncated-BPTT length).")
@click.option("--lr", type=FiniteFloatRange(0, 1, min_open=True), help="Peak learning rate (AdamW).")
@click.option("--val-frac", type=FiniteFloatRange(0, 1, max_open=True), default=0.1, show_default=True, help="Fraction of the text, taken from the end, held out for validation.")
@click.option("--eval-every", type=click.IntRange(min=1), help="Evaluate every N steps (default: six times per run).")
@click.option("--seed", type=SEED, default=1337, show_default=True, help="Random seed for initialisation and dropout.")
@device_option("auto")
@precision_option(PRECISIONS, "auto", "auto: bf16 autocast on CPUs/GPUs that run it fast, else fp32.")
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_ROOT, show_default=True, help="Parent directory for run directories.")
@click.option("--name", help="Run name (default: corpus name and time).")
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of the corpus.")
@click.option("--errors", "decode_errors", type=click.Choice(["strict", "replace", "ignore"]), default="strict", show_default=True, help="What to do with bytes that do not decode.")
@click.option("--keep-crlf", is_flag=True, help="Keep Windows line endings instead of turning CRLF into LF.")
@click.option("--lowercase", is_flag=True, help="Fold the text to lower case (a smaller vocabulary; no capitals generated).")
@click.option("--nfc/--no-nfc", default=True, show_default=True, help="Compose characters to Unicode NFC, so each letter is one id however the file spelled it.")
@click.option("--min-char-count", type=click.IntRange(min=1), default=1, show_default=True, help="Characters seen fewer times become one unknown symbol (U+FFFD).")
@click.option("--doc-separator", default="\\n", show_default=True, callback=_escapes, help="Text put between files (backslash escapes such as \\n work).")
@click.option("--undecodable", type=click.Choice(["fail", "skip"]), default="fail", show_default=True, help="A file in a folder or pattern that does not decode: stop, or skip it with a warning.")
@click.option("--no-cache", is_flag=True, help="Encode the corpus afresh and do not store it in the cache.")
@click.option("--resume", metavar="[RUN]", is_flag=False, flag_value="", help="Continue RUN (a run directory; default: the newest run under --out) where it stopped.")
@click.option("--init-from", metavar="RUN", help="Start from this run's, checkpoint's or shipped model's ('base') weights: fine-tune it on CORPUS.")
@click.option("--on-nan", type=click.Choice(["stop", "skip"]), default="stop", show_default=True, help="On a non-finite loss: stop, keeping the last good checkpoint, or skip the batch.")
@click.option("--force", is_flag=True, help="Train even on a corpus whose characters look like binary data or are absurdly many.")
def train(corpus: tuple[str, ...], **options: Any) -> None:
    from ..base.runtime import ThreadGovernor, resolve_device
    from ..data.cache import CorpusCache
    from ..data.corpus import TextOptions, check_vocabulary
    from ..data.sources import load_corpus
    from ..generation.generator import preview_text
    from ..training.checkpoint import check_run_name, safe_run_stem
    from ..training.distributed import launched
    from ..training.gpu import (
        apply_cuda_settings,
        choose_gpu_configs,
        cuda_shape_probe,
        uses_gpu_rule,
    )
    from ..training.sizing import (
        REFERENCE_SPEEDS,
        RunChoices,
        cached_speed_probe,
        choose_configs,
    )
    from ..training.trainer import Trainer

    reporter = console.ConsoleTrainReporter(started_at=time.perf_counter())
    text_options = TextOptions(
        options["encoding"], options["decode_errors"], options["keep_crlf"], options["lowercase"], options["nfc"]
    )
    separator = options["doc_separator"]
    if options["name"] is not None:
        check_run_name(options["name"])  # before the corpus is read: a bad name should cost nothing
    if options["resume"] is not None and options["init_from"] is not None:
        raise click.UsageError("--init-from starts a new run and --resume continues one; give one of them")
    if options["resume"] is not None:
        with launched() as distributed:  # under torchrun: one rank of a data-parallel continuation
            _run_training(_resumed_trainer(corpus, text_options, separator, options, distributed, reporter))
        return
    loaded = load_corpus(
        list(corpus) or None,
        text_options,
        separator=separator,
        undecodable=options["undecodable"],
        min_char_count=options["min_char_count"],
        cache=None if options["no_cache"] else _usable_cache(CorpusCache()),
    )
    console.note_skipped(loaded.skipped)
    reporter.startup_detail = "the corpus from the cache" if loaded.from_cache else "the corpus read and encoded"
    data = loaded.corpus
    for warning in check_vocabulary(data.vocab, data.source, options["force"]):
        console.warn(warning)
    choices = RunChoices.from_options(options)
    name = options["name"] or f"{safe_run_stem(_run_stem(corpus))}-{time.strftime('%Y%m%d-%H%M%S')}"
    if options["init_from"] is not None:
        with launched() as distributed:  # under torchrun: one rank of a data-parallel fine-tuning run
            _run_training(_finetune_trainer(data, choices, options, options["out"] / name, distributed, reporter))
        return
    single = os.environ.get("WORLD_SIZE", "1") == "1"
    if single and uses_gpu_rule(choices, resolve_device(choices.device).type):  # grow the batch to fill the GPU
        shape_probe = cuda_shape_probe(len(data.vocab), choices.device, choices.precision,
                                       on_measure=lambda what: console.phase(f"the training speed of {what}"))
        model_config, train_config, sizing = choose_gpu_configs(choices, len(data), len(data.vocab), shape_probe)
        apply_cuda_settings(sizing.cudnn_benchmark)
    else:
        if not single:
            probe = REFERENCE_SPEEDS.__getitem__  # every rank must pick the same shape: no per-rank timing
        else:
            probe = cached_speed_probe(
                len(data.vocab), choices.device, choices.precision,
                on_measure=lambda name: console.phase(f"the training speed of the {name} shape (cached for a day)"),
                on_busy=lambda name, load: console.note(
                    f"other programs kept {load:.1f} cores busy while the {name} shape was timed: its speed sizes "
                    "this run only and is measured again next time"))
        model_config, train_config, sizing = choose_configs(choices, len(data), len(data.vocab), probe)  # type: ignore[assignment]
    _check_fits(model_config, train_config)
    reporter.estimate = sizing.describe()
    with launched() as distributed:  # under torchrun: one rank of a data-parallel run
        _run_training(Trainer(data, model_config, train_config, options["out"] / name, reporter,
                              distributed=distributed, preview=preview_text, threads=ThreadGovernor()))


def _usable_cache(cache: CorpusCache) -> CorpusCache | None:
    """The cache, or None with one warning when it cannot be used: it only saves time."""
    reason = cache.unusable()
    if reason is None:
        return cache
    console.warn(reason)
    return None


def _check_fits(model_config: ModelConfig, train_config: TrainConfig) -> None:
    """Refuse a model that cannot fit in this machine's memory before a byte of it is allocated.

    Training holds each parameter four times in fp32 (weights, gradients, two AdamW moments),
    and each step's activations: several gate values per unit, layer and character of the batch.
    """
    import torch

    from ..base.reading import format_size, memory_available
    from ..base.runtime import resolve_device
    from ..model.network import CharLSTM

    if resolve_device(train_config.device).type != "cpu":
        return
    with torch.device("meta"):
        parameters = CharLSTM(model_config).num_parameters()
    activations = 8 * train_config.batch_size * train_config.seq_len * model_config.num_layers * model_config.hidden_size
    needed = 4 * (4 * parameters + activations)
    have = memory_available()
    if needed > have:
        raise CharlstmError(
            f"this model ({parameters:,} parameters) needs about {format_size(needed)} to train, and this machine "
            f"has {format_size(have)}; choose a smaller --size, --hidden, --layers, --emb or --batch-size"
        )


# Options of `train` that a resumed run compares with, or takes over into, its recorded settings.
_MODEL_OPTIONS = {"emb": "emb_size", "hidden": "hidden_size", "layers": "num_layers", "dropout": "dropout", "cell": "cell"}
_TRAIN_OPTIONS = ("steps", "epochs", "time_budget", "lr", "eval_every", "device", "precision", "on_nan",
                  "batch_size", "seq_len", "val_frac", "seed")
_TEXT_OPTIONS = ("encoding", "decode_errors", "keep_crlf", "lowercase", "nfc")


def _resumed_trainer(corpus: tuple[str, ...], text_options: TextOptions, separator: str, options: dict[str, Any],
                     distributed: DistributedContext | None, reporter: console.ConsoleTrainReporter) -> Trainer:
    """The run's Trainer at its last step, with only the options the user typed again applied."""
    from ..base.runtime import ThreadGovernor
    from ..generation.generator import preview_text
    from ..training.presets import PRESETS
    from ..training.resume import plan_resume

    ctx = click.get_current_context()
    given = _given(options)
    for conflicting in ("name", "force", "min_char_count", "undecodable", "no_cache"):
        if conflicting in given:
            flag = conflicting.replace("_", "-")
            raise click.UsageError(f"--{flag} cannot be used with --resume: it applies only to a new run", ctx)
    model_changes: dict[str, Any] = PRESETS[options["size"]].shape() if options["size"] is not None else {}
    model_changes.update({field: options[name] for name, field in _MODEL_OPTIONS.items() if name in given})
    plan = plan_resume(
        run=options["resume"] or None,
        root=options["out"],
        corpus_sources=list(corpus) or None,
        text_options=text_options if given.intersection(_TEXT_OPTIONS) else None,
        separator=separator if "doc_separator" in given else None,
        model_changes=model_changes,
        train_changes={name: options[name] for name in _TRAIN_OPTIONS if name in given},
    )
    if distributed is None or distributed.is_main:
        for warning in plan.warnings:
            console.warn(warning)
    return plan.trainer(reporter, distributed, preview=preview_text, threads=ThreadGovernor())


def _given(options: dict[str, Any]) -> set[str]:
    """The options the user typed (or set in the environment), not their defaults."""
    ctx = click.get_current_context()
    return {name for name in options if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}


def _finetune_trainer(data: Corpus, choices: RunChoices, options: dict[str, Any], run_dir: Path,
                      distributed: DistributedContext | None, reporter: console.ConsoleTrainReporter) -> Trainer:
    """A new run on ``data`` that starts from --init-from's weights (training.finetune decides how)."""
    from ..base.errors import name_chars
    from ..base.runtime import ThreadGovernor
    from ..generation.generator import preview_text
    from ..training.finetune import finetune_train_config, plan_finetune
    from ..training.presets import PRESETS
    from ..training.trainer import Trainer

    given = _given(options)
    model_changes: dict[str, Any] = PRESETS[options["size"]].shape() if options["size"] is not None else {}
    model_changes.update({field: options[name] for name, field in _MODEL_OPTIONS.items() if name in given})
    plan = plan_finetune(options["init_from"], data, model_changes)
    train_config = finetune_train_config(choices, plan)
    _check_fits(plan.model_config, train_config)
    added = f"{len(plan.new_chars)} new character(s): {name_chars(plan.new_chars)}" if plan.new_chars else "no new characters"
    reporter.estimate = f"to start from {options['init_from']} ({plan.parent['vocab_size']} characters) with {added}"
    return Trainer(plan.corpus, plan.model_config, train_config, run_dir, reporter, model_state=plan.model_state,
                   distributed=distributed, preview=preview_text, threads=ThreadGovernor(), parent=plan.parent)


def _run_training(trainer: Trainer) -> None:
    """Train; a stop by signal saves the run, says how to resume, and exits 128 + the signal number.
    Under torchrun only rank 0 speaks."""
    from ..training.checkpoint import read_metrics
    from ..training.distributed import signals_arrive_twice
    from . import views

    speak = trainer.is_main

    def stop_after_this_step(signum: int) -> None:
        if speak:
            console.warn("stopping after this step and saving the run; press Ctrl-C again to stop at once")
        trainer.request_stop()

    def stop_now(signum: int) -> None:
        if speak:
            console.error(f"{signal.Signals(signum).name} again: stopped at once; the checkpoints already saved are intact")
        raise SystemExit(128 + signum)

    echo = ECHO_SECONDS if signals_arrive_twice() else 0.0
    with TwoStageStop(stop_after_this_step, stop_now, (signal.SIGINT, signal.SIGTERM), echo) as signals:
        result = trainer.train()
    if result.stopped_early:
        if trainer.is_main:
            console.note(
                f"stopped at step {result.steps}; the run is saved in {result.run_dir / 'last'}; "
                f"resume it with: charlstm train --resume {result.run_dir}"
            )
        raise SystemExit(128 + (signals.received[0] if signals.received else signal.SIGINT))
    if not trainer.is_main:
        return
    if result.skipped_batches:
        console.warn(f"{result.skipped_batches} batch(es) with a non-finite loss were skipped (--on-nan skip)")
    views.show_curves(read_metrics(result.run_dir))
    console.note(f"sample from it: charlstm sample -c {result.run_dir}")


def _run_stem(corpus: tuple[str, ...]) -> str:
    """A run name from the first corpus source: a file's stem, a folder's name, a pattern's folder."""
    if not corpus:
        return "pystdlib"
    first = Path(corpus[0])
    while any(c in first.name for c in "*?[") and first != first.parent:
        first = first.parent
    return first.stem or "corpus"


@cli.group()
@click.option("--catalogue", type=click.Path(dir_okay=False, path_type=Path), envvar="CHARLSTM_CATALOGUE",
              help="Catalogue file to use instead of the shipped corpora/catalogue.json (env: CHARLSTM_CATALOGUE).")
@click.pass_context
def corpus(ctx: click.Context, catalogue: Path | None) -> None:
    """Known corpora: list them, download one, look inside any text, or generate a synthetic one."""
    ctx.obj["catalogue"] = catalogue


@corpus.command("list")
@click.pass_context
def corpus_list(ctx: click.Context) -> None:
    """Show the corpora that 'charlstm corpus get' can download."""
    from ..data.catalogue import load_catalogue

    console.print_catalogue(load_catalogue(ctx.obj["catalogue"]))


@corpus.command("get")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("corpora"), show_default=True, help="Where to put the download.")
@click.option("--unverified", is_flag=True, help="Download a corpus whose catalogue entry has no known SHA-256.")
@click.pass_context
def corpus_get(ctx: click.Context, name: str, directory: Path, unverified: bool) -> None:
    """Download NAME (resuming a partial download), verify its SHA-256, unpack it, print the path to train on."""
    from ..data.catalogue import fetch, find_entry, load_catalogue

    entry = find_entry(load_catalogue(ctx.obj["catalogue"]), name)
    result = fetch(entry, directory, console.DownloadBar(), allow_unverified=unverified)
    if not result.verified:
        console.warn(f"{entry.name} was not verified (no published checksum); its sha256 is {result.sha256}")
    elif not result.downloaded:
        console.note(f"{entry.name} is already here and its checksum matches")
    console.write_text(f"{result.path}\n")


@corpus.command("stats")
@click.argument("sources", nargs=-1, required=True)
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of the files.")
@click.option("--rarest", type=click.IntRange(1, 1000), default=10, show_default=True, help="How many of the rarest characters to list.")
def corpus_stats_command(sources: tuple[str, ...], encoding: str, rarest: int) -> None:
    """Size, characters, oddities and a fitting model size for text files, folders or patterns."""
    from ..analysis.corpus_stats import corpus_stats
    from ..data.corpus import TextOptions

    stats = corpus_stats(sources, TextOptions(encoding=encoding), rarest)
    console.note_skipped(stats.skipped)
    console.print_corpus_stats(stats)


# Under torchrun, how soon after the first a signal still counts as the same Ctrl-C passed on: torchrun
# forwards it within milliseconds, but a worker inside a long tensor operation or a collective runs
# its handler only when that returns.
ECHO_SECONDS = 2.0


@cli.command()
@checkpoint_option
@click.option("--prime", default="", help="Text to start from; the sample continues it. '-' reads it from standard input.")
@click.option("--prime-file", type=click.Path(dir_okay=False, path_type=Path), help="Read the text to start from from this file (long ones are read at the model's sequence speed).")
@click.option("--length", type=click.IntRange(min=1), default=500, show_default=True, help="Characters to generate at most (a stop or --lines may end a sample sooner).")
@click.option("--stop", multiple=True, help=r"End a sample where it writes this string (escapes such as \n\n work); repeatable. Left out of the text unless --keep-stop.")
@click.option("--keep-stop", is_flag=True, help="Keep the stop string (or the last newline of --lines) at the end of the text.")
@click.option("--lines", type=click.IntRange(min=1), help="End a sample after this many newlines (one line per item: --lines 1).")
@click.option("--temp", "temperature", type=FiniteFloatRange(0, 100), default=1.0, show_default=True, help="Sampling temperature; 0 is greedy.")
@click.option("--top-k", type=click.IntRange(min=1), help="Draw only from the k most likely characters.")
@click.option("--top-p", type=FiniteFloatRange(0, 1, min_open=True), help="Draw only from the smallest set of characters whose probability reaches p.")
@click.option("--min-p", type=FiniteFloatRange(0, 1), help="Draw only from characters at least this many times as probable as the likeliest one.")
@click.option("--seed", type=SEED, help="Random seed: the same seed gives the same text (with or without --json).")
@click.option("-n", "--num-samples", type=click.IntRange(1, 4096), default=1, show_default=True, help="Number of samples, drawn as one batch; each ends on its own.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per sample: text, finish_reason, characters, seed, checkpoint, timing.")
@click.option("--logprobs", type=click.IntRange(0, 20), help="With --json: each character's log-probability and the K likeliest alternatives with theirs.")
@click.option("--beam", type=click.IntRange(1, 64), help="Instead of sampling, search W wide for the most probable continuation (deterministic; 1 is greedy).")
@click.option("--unknown", type=click.Choice(["error", "skip", "replace"]), default="error", show_default=True, help="What to do with prime characters the model never saw.")
@which_option
@device_option("cpu")
@precision_option(SAMPLING_PRECISIONS, "auto", SAMPLING_PRECISION_HELP)
@click.option("--adapt-to", type=click.Path(path_type=Path), help="First let the model learn from this text as dynamic "
              "evaluation does ('eval --dynamic', default rates), in memory only, then sample in its style.")
def sample(checkpoint: Path | None, prime: str, prime_file: Path | None, length: int, stop: tuple[str, ...],
           keep_stop: bool, lines: int | None, temperature: float, top_k: int | None, top_p: float | None,
           min_p: float | None, seed: int | None, num_samples: int, as_json: bool, logprobs: int | None,
           beam: int | None, unknown: str, which: str, device: str, precision: str,
           adapt_to: Path | None) -> None:
    """Generate text from a trained model and stream it to stdout."""
    import dataclasses
    import itertools

    from ..base.runtime import resolve_sampling_device
    from ..generation.controls import (
        GenerationRequest,
        SamplingOptions,
        TextDelta,
        read_prime,
    )
    from ..generation.generator import Generator
    from ..generation.session import unescape
    from ..training.checkpoint import load

    if prime_file is not None and prime:
        raise click.UsageError("give --prime or --prime-file, not both")
    if logprobs is not None and not as_json:
        raise click.UsageError("--logprobs is printed with --json; add --json")
    request = GenerationRequest(
        prime, length, SamplingOptions(temperature, top_k, top_p, min_p), num_samples, seed, unknown,  # type: ignore[arg-type]
        tuple(unescape(s) for s in stop), keep_stop, lines, logprobs, beam,
    )
    loaded = load(_or_base_model(checkpoint), device=resolve_sampling_device(device, num_samples), prefer=which)
    if adapt_to is not None:
        from ..analysis.dynamic import DynamicConfig, adapted
        from ..data.corpus import read_text

        loaded = adapted(loaded, read_text(adapt_to), DynamicConfig())
    generator = Generator(loaded.model, loaded.vocab, precision=precision)  # type: ignore[arg-type]
    generator.check_request(request)
    if prime_file is not None or prime == "-":
        text = read_prime(path=prime_file) if prime_file is not None else read_prime(sys.stdin.buffer.read())
        request = dataclasses.replace(request, prime=text)
    shown_prime = request.prime if unknown == "error" else loaded.vocab.decode(loaded.vocab.encode(request.prime, unknown))  # type: ignore[arg-type]
    if as_json:
        for result in generator.complete(request):
            console.write_json_line({**result.to_dict(), "checkpoint": str(loaded.path)})
        return
    if num_samples == 1:
        events = generator.run(request)
        first = next(events, None)  # validates the prime before anything is printed
        console.write_text(shown_prime)
        for event in itertools.chain([first], events):
            if isinstance(event, TextDelta):
                console.write_text(event.text)
        console.write_text("\n")
        return
    console.print_samples([result.text for result in generator.complete(request)], shown_prime)


def _or_base_model(checkpoint: Path | None) -> Path | None:
    """``checkpoint``; with none given and no run under ./checkpoints, the shipped base model, with a note."""
    from ..training.checkpoint import latest_run
    from ..training.shipped import BASE_MODEL, shipped_model

    if checkpoint is not None:
        return checkpoint
    try:
        latest_run(DEFAULT_ROOT)
    except CharlstmError:
        base = shipped_model(BASE_MODEL)
        if base is None:
            raise
        console.note(f"no run under {DEFAULT_ROOT}/ yet: using the shipped base model (charlstm info {BASE_MODEL})")
        return base
    return None


def _text_argument(text: str | None, file: Path | None) -> str:
    """TEXT or -f FILE, exactly one of them."""
    from ..data.corpus import read_text

    if (text is None) == (file is None):
        raise click.UsageError("give either TEXT or -f FILE")
    return read_text(file) if file is not None else text  # type: ignore[return-value]


@cli.command("eval")
@click.argument("file", type=click.Path(path_type=Path))
@checkpoint_option
@which_option
@click.option("--split", type=click.Choice(["all", "train", "val"]), default="all", show_default=True,
              help="Score the whole file, or only the part a run trained on with this file cut off for "
                   "training or validation (its --val-frac).")
@click.option("--streams", type=click.IntRange(min=1), help="Parallel streams to read the text in (default: the run's "
              "batch size, as the trainer evaluates; 1 reads the whole file as one stream).")
@precision_option(["bf16", "fp32"], None, "Arithmetic (default: what the run evaluated with).")
@click.option("--positions", is_flag=True, help="Score only the positions a synthetic corpus marks (from FILE.synth.json, "
              "written by 'charlstm corpus synth'), against its ideal and no-memory losses.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.option("--dynamic", is_flag=True, help="Dynamic evaluation (Krause et al. 2018): score each window, then learn from "
              "it before the next, on a copy in memory; shows the static and dynamic losses side by side.")
@click.option("--rule", type=click.Choice(["sgd", "rms"]), help="With --dynamic: the update, plain SGD or "
              "RMS-normalised, each decaying toward the trained weights (default: the one measured best).")
@click.option("--lr", type=FiniteFloatRange(0, 10), help="With --dynamic: the step size η (default: the rule's measured one).")
@click.option("--decay", type=FiniteFloatRange(0, 1), help="With --dynamic: the pull λ back toward the trained weights (default: the rule's measured one).")
@click.option("--window", type=click.IntRange(1, 65536), help="With --dynamic: characters per update (default: the measured one).")
def evaluate(file: Path, checkpoint: Path | None, which: str, split: str, streams: int | None,
             precision: str | None, positions: bool, as_json: bool, dynamic: bool, rule: str | None, lr: float | None,
             decay: float | None, window: int | None) -> None:
    """Loss, bits per character and perplexity of FILE under a model."""
    from ..analysis.longrange import position_report
    from ..analysis.scoring import evaluate_text, split_text
    from ..data.corpus import read_text
    from ..training.checkpoint import load
    from . import views

    dynamic_settings = {"rule": rule, "lr": lr, "decay": decay, "window": window}
    dynamic_only = [f"--{name}" for name, value in dynamic_settings.items() if value is not None]
    if dynamic_only and not dynamic:
        raise click.UsageError(f"{dynamic_only[0]} goes with --dynamic")
    if dynamic and positions:
        raise click.UsageError("--dynamic and --positions are separate measurements; give one")
    loaded = load(checkpoint, prefer=which)
    if dynamic:
        from ..analysis.dynamic import DynamicConfig, dynamic_evaluation

        given = {name: value for name, value in dynamic_settings.items() if value is not None}
        config = DynamicConfig(**given, streams=streams or 1)  # type: ignore[arg-type]
        text = split_text(read_text(file), float(loaded.config.get("train", {}).get("val_frac", 0.1)), split)  # type: ignore[arg-type]
        with console.counting_progress("dynamic evaluation", "windows") as advance:
            outcome = dynamic_evaluation(loaded, text, config, precision, on_window=advance)
        if as_json:
            console.write_json_line({"file": str(file), "split": split, **outcome.to_dict()})
        else:
            views.show_dynamic_eval(outcome, f"{file}" + ("" if split == "all" else f" ({split} split)"))
        return
    if positions:
        if split != "all":
            raise click.UsageError("--positions scores the whole file; leave out --split")
        figures = position_report(loaded.model, loaded.vocab, file)
        if as_json:
            console.write_json_line(figures)
        else:
            console.show_position_score(figures)
        return
    text = split_text(read_text(file), float(loaded.config.get("train", {}).get("val_frac", 0.1)), split)  # type: ignore[arg-type]
    result = evaluate_text(loaded, text, streams=streams, precision=precision)
    if as_json:
        console.write_json_line({"file": str(file), "split": split, **result.to_dict()})
    else:
        views.show_eval(result, f"{file}" + ("" if split == "all" else f" ({split} split)"))


@cli.command()
@click.argument("text", required=False)
@click.option("-f", "--file", type=click.Path(path_type=Path), help="Score this file instead of TEXT.")
@checkpoint_option
@which_option
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write the heat-map as a self-contained HTML page.")
@click.option("--spans", type=click.IntRange(0, 1000), default=5, show_default=True, help="How many of the most surprising words to list.")
@force_output_option
@click.option("--lines", "lines_file", type=click.Path(path_type=Path), help="Rank the lines of this file by how strange "
              "the model finds them (each line from a fresh state, many at once).")
@click.option("--top", type=click.IntRange(1, 100_000), default=10, show_default=True, help="With --lines: how many of the most surprising lines to show.")
@click.option("--by", "rank_by", type=click.Choice(["mean", "total", "peak"]), default="peak", show_default=True,
              help="With --lines: rank by the costliest character (best on benchmarks/anomaly.py), mean nats per "
                   "character, or total nats per line.")
@click.option("--jsonl", is_flag=True, help="With --lines: one JSON object per line of the file, in file order, instead of the table.")
@click.option("--carry", is_flag=True, help="With --lines: read the file as one stream, each line in the context of those before it.")
@click.option("--reference", type=click.Path(path_type=Path), help="With --lines: a file of normal lines; lines scoring above "
              "its --percentile are flagged, and the exit status is 3 when any is.")
@click.option("--percentile", type=FiniteFloatRange(0, 100), default=99.5, show_default=True, help="With --reference: the threshold's percentile.")
@click.option("--labels", type=click.Path(path_type=Path), help="With --lines: a file of 0/1, one per line (1 = anomaly); "
              "reports ROC AUC and precision among the top lines.")
def score(text: str | None, file: Path | None, checkpoint: Path | None, which: str, html_path: Path | None, spans: int,
          force: bool, lines_file: Path | None, top: int, rank_by: str, jsonl: bool, carry: bool, reference: Path | None,
          percentile: float, labels: Path | None) -> None:
    """Colour each character of TEXT by the model's surprise at it (-log2 p, in bits), or rank the
    lines of a file by it (--lines FILE; exit status 3 when --reference flags a line)."""
    from ..analysis.scoring import surprisal
    from ..base.fsutil import carries_marker, check_output, write_output
    from ..training.checkpoint import load
    from . import views

    if lines_file is not None:
        if text is not None or file is not None or html_path is not None:
            raise click.UsageError("--lines FILE scores a file of lines; leave out TEXT, -f and --html")
        _score_lines(load(checkpoint, prefer=which), lines_file, top, rank_by, jsonl, carry, reference, percentile, labels)
        return
    line_options = {"--jsonl": jsonl, "--carry": carry, "--reference": reference is not None, "--labels": labels is not None}
    if any(line_options.values()):
        raise click.UsageError(f"{next(name for name, given in line_options.items() if given)} goes with --lines FILE")
    ours = carries_marker(views.HTML_MARKER.encode())
    if html_path is not None:
        check_output(html_path, force, ours)  # refuse before the scoring work, not after it
    loaded = load(checkpoint, prefer=which)
    result = surprisal(loaded, _text_argument(text, file))
    views.show_surprisal(result, spans)
    if html_path is not None:
        title = f"charlstm score: {file.name if file else loaded.name}"
        write_output(html_path, views.surprisal_html(result, title), force, ours)
        console.note(f"wrote {html_path}")


# The exit status of `score --lines --reference` when a line scores above the threshold: apart from
# errors (1) and usage errors (2), so a cron job or CI step can tell "anomaly" from "broken".
FLAGGED_EXIT = 3


def _score_lines(loaded: Any, path: Path, top: int, rank_by: str, jsonl: bool, carry: bool, reference: Path | None,
                 percentile: float, labels: Path | None) -> None:
    """`score --lines`: score, judge, show; exit 3 when the reference's threshold flags a line."""
    from ..analysis.lines import judge_lines, read_labels, score_line_file
    from . import views

    scores = score_line_file(loaded, path, carry)
    judgement = judge_lines(
        scores, rank_by,  # type: ignore[arg-type]
        reference=score_line_file(loaded, reference, carry) if reference is not None else None,
        percentile=percentile,
        labels=read_labels(labels, len(scores.lines)) if labels is not None else None,
        top=top,
    )
    if jsonl:
        flagged = judgement.flagged
        for index, line in enumerate(scores.lines):
            console.write_json_line(line.to_dict(None if flagged is None else bool(flagged[index])))
        console.note(f"{len(scores.lines):,} lines, {scores.chars_per_sec:,.0f} chars/s; "
                     + ", ".join(f"{key} {value}" for key, value in judgement.to_dict().items()))
    else:
        views.show_line_ranking(scores, judgement, top, str(path))
    if judgement.flagged_count:
        sys.exit(FLAGGED_EXIT)


@cli.command("inspect")
@click.argument("text", required=False)
@click.option("-f", "--file", type=click.Path(path_type=Path), help="Inspect on this file instead of TEXT.")
@checkpoint_option
@which_option
@click.option("--layer", type=click.IntRange(min=0), help="Layer to look at (default: the last for --unit, all for --top).")
@click.option("--unit", type=click.IntRange(min=0), help="Show this unit of the layer.")
@click.option("--top", type=click.IntRange(1, 100), help="Rank units by how well they follow the features (default 8 when no --unit).")
@click.option("--gate", "signal", type=click.Choice(SIGNALS), default="cell", show_default=True,
              help="What to show: the cell (tanh of the cell state) or the input, forget or output gate.")
@click.option("--feature", "features", multiple=True, type=click.Choice(list(FEATURES)),
              help="Rank only by these features (repeatable; default: all).")
def inspect_command(text: str | None, file: Path | None, checkpoint: Path | None, which: str, layer: int | None,
            unit: int | None, top: int | None, signal: Signal, features: tuple[str, ...]) -> None:
    """Show what an LSTM's cells and gates do while reading TEXT."""
    from ..analysis import gates
    from ..training.checkpoint import load
    from . import views

    if unit is not None and top is not None:
        raise click.UsageError("give --unit or --top, not both")
    loaded = load(checkpoint, prefer=which)
    trace = gates.trace_lstm(loaded, _text_argument(text, file))
    if trace.unknown:
        console.warn(views.unknown_summary(trace.unknown))
    if unit is not None:
        chosen = gates.check_layer(trace, len(trace.layers) - 1 if layer is None else layer)
        views.show_unit(trace, chosen, gates.check_unit(trace, unit), signal)
    else:
        matches, constant = gates.top_units(trace, list(features) or None, top or 8, signal, layer)
        views.show_top_units(trace, matches, constant, signal)
    views.show_saturation(gates.saturation(trace))


@cli.command()
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("--which", type=click.Choice(["best", "last"]), default="last", show_default=True,
              help="Which checkpoint's settings and progress to show (the curves cover the whole run).")
def info(checkpoint: Path | None, which: str) -> None:
    """Model, vocabulary, training settings and loss curves of a run (default: the newest)."""
    from ..analysis.scoring import summarize_run
    from . import views

    views.show_info(summarize_run(checkpoint, which))


@cli.command()
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("curves.png"),
              show_default=True, help="PNG file to write.")
@force_output_option
def plot(checkpoint: Path | None, output: Path, force: bool) -> None:
    """Write a run's loss curves as a PNG (needs matplotlib: pip install 'charlstm[plot]')."""
    from ..analysis.scoring import summarize_run
    from ..base.fsutil import carries_marker, check_output, writing_output
    from . import views

    ours = carries_marker(views.PNG_MARKER)
    check_output(output, force, ours)  # refuse before matplotlib is loaded, not after the drawing
    summary = summarize_run(checkpoint)
    with writing_output(output, force, ours) as staging:
        views.save_curve_png(summary.records, staging, summary.checkpoint.parent.name)
    console.note(f"wrote {output}")


@cli.command("export")
@click.argument("run", required=False, type=click.Path(path_type=Path))
@click.option("--format", "export_format", type=click.Choice(["onnx", "html"]), required=True,
              help="onnx: step and priming graphs for onnxruntime and other runtimes (needs pip install 'charlstm[export]'); "
                   "html: one self-contained page that writes in any browser.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="File to write (default: RUN's name with .onnx or .html, here). ONNX puts the priming graph beside it, as NAME.sequence.onnx.")
@click.option("--weights", "weight_format", type=click.Choice(["float16", "int8", "float32"]), default="float16", show_default=True,
              help="html: how the page stores the weight matrices (int8 has a float32 scale per row).")
@which_option
@force_output_option
def export_command(run: Path | None, export_format: str, output: Path | None, weight_format: str, which: str, force: bool) -> None:
    """Take a model elsewhere: ONNX files for other runtimes, or one HTML page that writes offline in a browser."""
    from ..base.reading import format_size
    from ..training.checkpoint import load

    if export_format == "onnx":
        from ..export.onnx_model import export_onnx, require_onnx

        require_onnx()  # before the checkpoint is read: a missing extra should cost nothing
        loaded = load(run, prefer=which)
        done = export_onnx(loaded, output or Path(f"{loaded.name}.onnx"), force)
        parity = done.parity
        console.note(f"wrote {done.step_path} (one step, {format_size(done.step_bytes)}) and {done.sequence_path} "
                     f"(priming, {format_size(done.sequence_bytes)})")
        console.note(f"onnxruntime matches PyTorch on a random {parity.primed_chars}+{parity.stepped_chars}-character text "
                     f"in {parity.streams} streams: largest difference {parity.logits_difference:.1e} in the logits, "
                     f"{parity.state_difference:.1e} in the states (relative)")
        return
    from ..export.html_page import export_html

    loaded = load(run, prefer=which)
    page = export_html(loaded, output or Path(f"{loaded.name}.html"), weight_format, force)  # type: ignore[arg-type]
    console.note(f"wrote {page.path} ({format_size(page.size_bytes)}, {page.weight_format} weights); "
                 f"open it in a browser, no server needed")


@corpus.command("synth")
@click.argument("kind", type=click.Choice(list(SYNTH_KINDS)))
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Where to write the text (a .synth.json sidecar goes beside it).")
@click.option("--size", type=Size(), default="1MB", show_default=True, help="Characters to generate, e.g. 200k or 1MB.")
@click.option("--distance", "--depth", "--max-length", "param", type=click.IntRange(1, 100_000), help="recall: filler length; brackets: maximum depth; counting: maximum line length.")
@click.option("--seed", type=int, default=0, show_default=True)
@force_output_option
def corpus_synth(kind: str, out_path: Path, size: int, param: int | None, seed: int, force: bool) -> None:
    """Generate a synthetic corpus that needs long-range memory (recall, brackets, counting)."""
    from ..data.synth import make_synth

    made = make_synth(kind, size, param, seed)
    sidecar = made.save(out_path, force)
    console.show_synth(made, out_path, sidecar)


@cli.group()
def demo() -> None:
    """Demonstrations you can run on your own machine."""


@demo.command("long-range")
@click.option("--distance", "distances", default="20,50,100,200", show_default=True, help="Comma-separated recall distances.")
@click.option("--time", "time_budget", type=Duration(), default="6m", show_default=True, help="Total training time, shared by all runs.")
@click.option("--cells", default="rnn,gru,lstm", show_default=True, help="Comma-separated cell types to compare.")
@click.option("--hidden", type=click.IntRange(4, 1024), default=64, show_default=True, help="LSTM hidden size; the other cells are sized to the same parameter count.")
@click.option("--seed", type=int, default=0, show_default=True)
def demo_long_range(distances: str, time_budget: float, cells: str, hidden: int, seed: int) -> None:
    """Train RNN, GRU and LSTM cells of equal size on delayed recall and compare how far they remember."""
    from ..analysis.longrange import DemoConfig, run_long_range_demo

    try:
        distance_list = tuple(int(d) for d in distances.split(","))
    except ValueError:
        raise click.BadParameter(f"{distances!r} is not a comma-separated list of whole numbers", param_hint="--distance") from None
    if any(d < 1 or d > 5000 for d in distance_list):
        raise click.BadParameter("distances must be between 1 and 5000", param_hint="--distance")
    cell_list = tuple(c.strip() for c in cells.split(","))
    unknown = [c for c in cell_list if c not in ("rnn", "gru", "lstm")]
    if unknown:
        raise click.BadParameter(f"unknown cell(s) {', '.join(unknown)}; use rnn, gru, lstm", param_hint="--cells")
    config = DemoConfig(
        distances=distance_list,
        cells=cell_list,
        seconds_per_run=time_budget / (len(distance_list) * len(cell_list)),
        reference_hidden=hidden,
        seed=seed,
    )
    rows = run_long_range_demo(config, progress=console.show_demo_progress)
    console.show_demo_table(rows)
@cli.command("repl")
@checkpoint_option
@which_option
@click.option("--temp", "temperature", type=click.FloatRange(0, 100), default=1.0, show_default=True, help="Sampling temperature; 0 is greedy.")
@click.option("--len", "length", type=click.IntRange(1, 1_000_000), default=300, show_default=True, help="Characters to generate per turn.")
@click.option("--top-k", type=click.IntRange(min=1), help="Draw only from the k most likely characters.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), help="Draw only from the smallest set of characters whose probability reaches p.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), help="Seed every turn with this: the same text gets the same continuation.")
@click.option("-n", "--num-samples", type=click.IntRange(1, 64), default=1, show_default=True, help="Continuations per turn.")
@click.option("--stop", multiple=True, help=r'Stop a continuation once it ends with this (escapes such as \n work); repeatable.')
@click.option("--mode", type=click.Choice(["fresh", "continue"]), default="fresh", show_default=True, help="continue: the model's state carries across turns.")
@device_option("cpu")
def repl_command(checkpoint: Path | None, which: str, temperature: float, length: int, top_k: int | None,
                 top_p: float | None, seed: int | None, num_samples: int, stop: tuple[str, ...], mode: str, device: str) -> None:
    """Type a beginning, watch the model continue it.

    On a terminal: line editing, history, :help for settings. With stdin from a
    pipe or file: one continuation per input line on stdout, no prompts or colours.
    """
    from ..base.runtime import resolve_device
    from ..generation.session import ReplSettings, unescape
    from ..training.checkpoint import load
    from . import repl

    target = resolve_device(device)
    settings = ReplSettings(temperature, length, top_k, top_p, seed, num_samples,
                                 tuple(unescape(s) for s in stop), mode)  # type: ignore[arg-type]
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    status = repl.run(load(_or_base_model(checkpoint), device=target, prefer=which), settings, repl.ReplView(interactive),
                      lambda path: load(path, device=target, prefer=which), interactive=interactive)
    sys.exit(status)


@cli.command()
@click.option("-c", "--checkpoint", "checkpoints", multiple=True, type=click.Path(path_type=Path),
              help="Run or checkpoint directory to serve, named after its run; repeat for several (default: the newest run under ./checkpoints).")
@which_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on; anything but a loopback address is reachable from other machines.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on (0: any free port).")
@click.option("--api-key", envvar="CHARLSTM_API_KEY", help="Require 'Authorization: Bearer KEY' on every API route (env CHARLSTM_API_KEY).")
@click.option("--max-length", type=click.IntRange(1, 1_000_000), default=4096, show_default=True, help="Most characters one sample may ask for.")
@click.option("--max-body", type=Size(), default="1MB", show_default=True, help="Largest request body, in bytes (e.g. 200k, 1MB).")
@click.option("--max-samples", type=click.IntRange(1, 256), default=16, show_default=True, help="Most samples (n) one request may ask for.")
@device_option("cpu")
@precision_option(SAMPLING_PRECISIONS, "auto", SAMPLING_PRECISION_HELP)
def serve(checkpoints: tuple[Path, ...], which: str, host: str, port: int, api_key: str | None, max_length: int,
          max_body: int, max_samples: int, device: str, precision: str) -> None:
    """Serve models over HTTP: a playground page at / and a JSON API (Ollama-style /api/generate,
    OpenAI-style /v1/completions, /api/score). Needs the serve extra."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise CharlstmError("charlstm serve needs the serve extra: pip install 'charlstm[serve]'") from None
    from ..base.runtime import resolve_device
    from ..training.checkpoint import load
    from . import server

    listener = server.bind(host, port)  # a taken port is refused before any model loads
    target = resolve_device(device)
    loaded = [load(path, device=target, prefer=which) for path in checkpoints or (_or_base_model(None),)]
    limits = server.ServeLimits(max_length=max_length, max_body_bytes=max_body, max_samples=max_samples)
    models = server.serve_models(loaded, precision, limits.max_rows, server.serving_threads())
    app = server.create_app(models, limits, api_key or None)
    server.announce(models, host, listener.getsockname()[1], api_key or None)
    server.run_server(app, listener)


@cli.command()
@click.option("--size", type=click.Choice(list(ALL_PRESETS)), help="Model shape to measure (default: the one a default ten-minute run trains on a tiny-Shakespeare-sized text; xl at batch 256x128 on a GPU).")
@click.option("--steps", type=click.IntRange(min=1), help="Timed training steps for each of the two training loops (default 24; 240 on a GPU).")
@precision_option(PRECISIONS, "auto", "Training arithmetic: auto is bf16 on CPUs/GPUs that run it fast, else fp32 (sampling rows follow sample's rule).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True, help="Measure on the CPU or on the CUDA GPU.")
@click.option("--json", "as_json", is_flag=True, help="Print the measurements as JSON on stdout instead of a table.")
def bench(size: str | None, steps: int | None, precision: str, device: str, as_json: bool) -> None:
    """Measure training and sampling speed on this machine, against plain PyTorch in the same run."""
    from ..analysis.bench import BenchConfig, run_bench

    config = BenchConfig.for_device(device, size, steps, precision)  # type: ignore[arg-type]
    result = run_bench(config, on_phase=console.phase,
                       other_runtime=_onnxruntime_loop() if config.device == "cpu" else None)
    if as_json:
        console.write_json(result.to_dict())
    else:
        console.print_bench(result)


def _onnxruntime_loop() -> tuple[str, Callable[..., Any]] | None:
    """onnxruntime's batch-1 sampling loop for the bench, when the export extra is installed."""
    from ..export.onnx_model import onnx_sampling_loop, require_onnx

    try:
        require_onnx()
    except CharlstmError:
        return None
    return "onnxruntime", onnx_sampling_loop


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so Python's final flush of what could not be written says nothing more."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # stdout already closed, or not a real file (a test's StringIO)
        pass


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr; --debug shows the traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if hasattr(sys.stderr, "reconfigure"):
        sys.stderr.reconfigure(errors="backslashreplace")  # a message never fails on an ASCII-only terminal
    console.fit_width()
    try:
        cli.main(args=args, prog_name="charlstm", standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.Abort:
        console.error("aborted")
        sys.exit(130)
    except click.UsageError as usage:
        if debug:
            raise
        command = usage.ctx.command_path if usage.ctx is not None else "charlstm"
        console.error(f"{usage.format_message()} (see '{command} --help')")
        sys.exit(usage.exit_code)
    except click.ClickException as problem:
        if debug:
            raise
        console.error(problem.format_message())
        sys.exit(problem.exit_code)
    except CharlstmError as problem:
        if debug:
            raise
        console.error(str(problem))
        sys.exit(1)
    except KeyboardInterrupt:
        if debug:
            raise
        console.error("interrupted")
        sys.exit(130)
    except (BrokenPipeError, ReaderGone):
        # The reader went away (e.g. `| head`): not an error.
        _silence_stdout()
        sys.exit(0)
    except UnicodeEncodeError as problem:
        if debug:
            raise
        _silence_stdout()
        console.error(
            f"the output's encoding ({problem.encoding}) cannot show {problem.object[problem.start:problem.end]!a}; "
            "set PYTHONIOENCODING=utf-8 (or a UTF-8 locale) and run again"
        )
        sys.exit(1)
    except OSError as problem:
        if debug:
            raise
        if problem.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT) and problem.filename:
            console.error(f"{problem.filename}: {problem.strerror}; check the path and its folder's permissions, "
                          "or give another path")
            sys.exit(1)
        if problem.errno not in (errno.ENOSPC, errno.EDQUOT):
            _unexpected(problem)
        _silence_stdout()
        where = problem.filename or "the output"
        console.error(f"could not write {where} ({problem.strerror}); free some space or write elsewhere")
        sys.exit(1)
    except Exception as bug:  # noqa: BLE001 - the last line of defence keeps tracebacks behind --debug
        if debug:
            raise
        _unexpected(bug)


def _unexpected(bug: Exception) -> NoReturn:
    console.error(f"unexpected {type(bug).__name__}: {bug} (run with --debug for the traceback)")
    sys.exit(1)
