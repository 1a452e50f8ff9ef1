"""Load on `charlstm serve`: 1, 8 and 32 concurrent streaming requests against a local server.

Starts `charlstm serve` in its own process on 127.0.0.1 (a free port), on a checkpoint you name or on
an untrained model of the default ten-minute shape (the speed of a step does not depend on what the
weights learned), and drives it from this process with httpx: for each level, ``--rounds`` rounds of
that many simultaneous ``POST /api/generate`` streams of ``--length`` characters. Bounded in count
(rounds x levels requests) and in time (``--time-limit`` seconds per round; a stream past it is an
error). Prints, per level: characters per second per stream (after its first character) and in total
(all characters over the round's wall time), time to the first character (median, p95), errors, and
the server's peak RSS; then total throughput at the highest level over the single-stream figure.
Both figures come from this one run on this machine. On a shared machine the server gets a share of
the CPU that changes with the other programs' load, so it also prints characters per CPU second the
server process used: a figure the others' load changes much less.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

from charlstm.analysis.bench import default_size
from charlstm.data.corpus import Vocab
from charlstm.model.network import CharLSTM
from charlstm.training.checkpoint import FORMAT_VERSION, write_checkpoint
from charlstm.training.presets import PRESETS

# The 65 characters of a typical English play corpus.
VOCAB = Vocab(sorted(set(string.ascii_letters + " \n!$&',-.3:;?")))
PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?\n"


@dataclass
class StreamResult:
    first_char: float | None  # seconds from sending the request
    seconds: float  # from sending to the last line
    chars: int
    error: str | None


def untrained_run(folder: Path, size: str) -> Path:
    """A checkpoint of an untrained model of preset ``size`` (random weights, seeded)."""
    torch.manual_seed(0)
    config = PRESETS[size].model_config(len(VOCAB))
    model = CharLSTM(config)
    run = folder / f"untrained-{size}"
    write_checkpoint(run, "best", model, {"format_version": FORMAT_VERSION, "model": config.to_dict(),
                                          "vocab": VOCAB.chars, "metrics": {"parameters": model.num_parameters()}})
    return run


def start_server(run: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "charlstm", "serve", "-c", str(run), "--port", "0",
                                "--max-samples", "1"], stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    line = process.stderr.readline()
    found = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
    if not found:
        process.kill()
        raise SystemExit(f"the server did not start: {line}{process.stderr.read()}")
    return process, found.group(1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one_stream(client: httpx.AsyncClient, length: int, seed: int) -> StreamResult:
    started = time.perf_counter()
    first, chars = None, 0
    try:
        body = {"prompt": PROMPT, "length": length, "seed": seed, "temperature": 0.8}
        async with client.stream("POST", "/api/generate", json=body) as response:
            if response.status_code != 200:
                return StreamResult(None, time.perf_counter() - started, 0, f"HTTP {response.status_code}")
            async for line in response.aiter_lines():
                if not line:
                    continue
                message = json.loads(line)
                if "error" in message:
                    return StreamResult(first, time.perf_counter() - started, chars, message["error"]["message"])
                if message.get("done"):
                    break
                if first is None:
                    first = time.perf_counter() - started
                chars += len(message["text"])
    except httpx.HTTPError as error:
        return StreamResult(first, time.perf_counter() - started, chars, repr(error))
    error = None if chars == length else f"{chars} of {length} characters"
    return StreamResult(first, time.perf_counter() - started, chars, error)


async def one_round(url: str, streams: int, length: int, time_limit: float, seed: int) -> tuple[list[StreamResult], float]:
    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4)
    async with httpx.AsyncClient(base_url=url, timeout=time_limit, limits=limits) as client:
        started = time.perf_counter()
        tasks = [asyncio.create_task(one_stream(client, length, seed + i)) for i in range(streams)]
        done, pending = await asyncio.wait(tasks, timeout=time_limit)
        for task in pending:
            task.cancel()
        wall = time.perf_counter() - started
        results = [task.result() for task in done]
        results += [StreamResult(None, wall, 0, "over the time limit") for _ in pending]
        return results, wall


def sampler_alone(run: Path, levels: list[int], length: int) -> dict[int, float]:
    """Total characters per second of the BatchedSampler itself, in this process, at each level: the
    batching without HTTP, JSON or a second process."""
    from charlstm.generation.batching import BatchedSampler
    from charlstm.generation.controls import GenerationRequest, SamplingOptions
    from charlstm.generation.generator import Generator
    from charlstm.training.checkpoint import load

    torch.set_num_threads(max(1, (os.cpu_count() or 1) - 1))  # as `charlstm serve` does
    loaded = load(run)
    sampler = BatchedSampler(Generator(loaded.model, loaded.vocab))
    totals = {}
    try:
        for streams in [1, *levels]:  # the first pass at 1 is a warm-up
            started = time.perf_counter()
            tickets = [sampler.submit(GenerationRequest(PROMPT, length, SamplingOptions(0.8), seed=i)) for i in range(streams)]
            while not all(ticket.done for ticket in tickets):
                time.sleep(0.005)
            totals[streams] = streams * length / (time.perf_counter() - started)
    finally:
        sampler.close()
    return totals


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--checkpoint", type=Path, help="run to serve (default: an untrained model of the default shape)")
    parser.add_argument("--levels", default="1,8,32", help="concurrent streams per level, comma-separated")
    parser.add_argument("--length", type=int, default=500, help="characters per stream")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per level")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds one round may take")
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]

    with tempfile.TemporaryDirectory() as folder:
        run = args.checkpoint or untrained_run(Path(folder), default_size())
        alone = sampler_alone(run, levels, args.length)
        print("the sampler alone, in this process (no HTTP): total chars/s " + ", ".join(
            f"{alone[streams]:,.0f} at {streams}" for streams in levels)
            + (f"; {alone[levels[-1]] / alone[1]:.1f}x at {levels[-1]} streams" if levels[0] == 1 else ""))
        process, url = start_server(run)
        try:
            model = httpx.get(f"{url}/api/models").json()["models"][0]
            print(f"model: {model['cell'].upper()} {model['layers']}x{model['hidden_size']}, {model['vocab_size']} characters, "
                  f"{model['parameters']:,} parameters; {os.cpu_count()} CPU(s), torch {torch.__version__}; "
                  f"{args.length} characters per stream, {args.rounds} round(s) per level")
            asyncio.run(one_round(url, 1, 50, args.time_limit, 0))  # warm-up: first-use costs are not load
            print(f"{'streams':>7} {'chars/s per stream':>19} {'chars/s total':>14} {'first char median':>18} "
                  f"{'p95':>8} {'errors':>7} {'server CPU s':>13} {'chars per server CPU s':>23} {'server peak RSS':>16}")
            totals: dict[int, float] = {}
            per_cpu: dict[int, float] = {}
            for streams in levels:
                results, walls = [], []
                server_cpu = cpu_seconds(process.pid)
                for round_number in range(args.rounds):
                    found, wall = asyncio.run(one_round(url, streams, args.length, args.time_limit, 1000 * round_number))
                    results += found
                    walls.append(sum(r.chars for r in found) / wall)
                rates = [(r.chars - 1) / (r.seconds - r.first_char) for r in results if r.first_char is not None
                         and r.seconds > r.first_char and r.chars > 1]
                firsts = [r.first_char * 1000 for r in results if r.first_char is not None]
                errors = [r.error for r in results if r.error]
                totals[streams] = statistics.median(walls)
                used = cpu_seconds(process.pid) - server_cpu
                per_cpu[streams] = sum(r.chars for r in results) / used if used > 0 else float("nan")
                print(f"{streams:>7} {statistics.median(rates) if rates else float('nan'):>19,.0f} {totals[streams]:>14,.0f} "
                      f"{statistics.median(firsts) if firsts else float('nan'):>15.0f} ms {percentile(firsts, 0.95) if firsts else float('nan'):>5.0f} ms "
                      f"{len(errors):>7} {used:>13.1f} {per_cpu[streams]:>23,.0f} {peak_rss_mb(process.pid):>13.0f} MB")
                for error in sorted(set(errors))[:3]:
                    print(f"        error: {error}")
            if len(levels) > 1 and levels[0] == 1:
                top = levels[-1]
                print(f"total throughput at {top} streams: {totals[top] / totals[1]:.1f}x the single-stream figure; "
                      f"characters per server CPU second: {per_cpu[top] / per_cpu[1]:.1f}x")
            print(f"load average during the run (other programs included): {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPU(s)")
        finally:
            process.terminate()
            process.wait(timeout=20)


if __name__ == "__main__":
    main()
