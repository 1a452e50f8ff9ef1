"""What the exported model costs and how closely it follows PyTorch, measured side by side in one run.

For a run (default: a 2x384 model of `charlstm bench`'s shape with fresh weights), this writes the
ONNX files and the HTML page in each weight format, then measures:

- sizes of the files;
- parity: the largest absolute difference of the next-character probabilities after a 200-character
  prime (the model's own sample), page in headless Chromium against PyTorch fp32, and onnxruntime's
  logits and states against PyTorch (the export's own check);
- batch-1 sampling speed, in alternating rounds so a shared machine's load falls on every side:
  the page in headless Chromium, charlstm's `Generator` (fused step, fp32), onnxruntime's step graph,
  and the plain per-character `nn.LSTM` loop.

    python benchmarks/export.py [RUN] [--chars 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from playwright.sync_api import sync_playwright

from charlstm import Generator, LoadedModel, load
from charlstm.analysis.bench import (
    bench_vocab,
    charlstm_sampling_loop,
    naive_sampling_loop,
)
from charlstm.export.html_page import WEIGHT_FORMATS, export_html
from charlstm.export.onnx_model import export_onnx, onnx_sampling_loop
from charlstm.model.network import CharLSTM
from charlstm.training.presets import PRESETS

CHROMIUM = "/usr/bin/chromium"


def bench_model() -> LoadedModel:
    torch.manual_seed(0)
    vocab = bench_vocab()
    model = CharLSTM(PRESETS["medium"].model_config(len(vocab))).eval()
    return LoadedModel(model=model, vocab=vocab, config={}, path=Path("bench-2x384/best"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", help="run directory (default: a fresh 2x384 model)")
    parser.add_argument("--chars", type=int, default=2000, help="characters per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the page runs on one thread: so does every Python side
    loaded = load(args.run) if args.run else bench_model()
    config = loaded.model.config
    print(f"model {loaded.name}: {config.cell} {config.num_layers}x{config.hidden_size}, emb {config.emb_size}, "
          f"vocab {config.vocab_size}, {loaded.model.num_parameters():,} parameters; torch threads 1, onnxruntime threads 1")
    generator = Generator(loaded.model, loaded.vocab, precision="fp32")
    prime = generator.generate("", 200, temperature=0.8, seed=0)[0]
    logits, _ = generator.prime(prime)
    expected = torch.softmax(logits[0].double(), -1).numpy()

    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        onnx = export_onnx(loaded, Path(folder) / "model.onnx")
        print(f"ONNX: step {onnx.step_bytes / 1e6:.2f} MB + sequence {onnx.sequence_bytes / 1e6:.2f} MB; onnxruntime vs "
              f"PyTorch: logits {onnx.parity.logits_difference:.1e}, states {onnx.parity.state_difference:.1e} (relative)")
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        pages = {}
        print("\n| weights | HTML size | max abs prob. difference vs PyTorch (200-char prime) |\n| --- | ---: | ---: |")
        for weight_format in WEIGHT_FORMATS:
            exported = export_html(loaded, Path(folder) / f"{weight_format}.html", weight_format)
            page = browser.new_page()
            page.goto(exported.path.as_uri())
            page.wait_for_function("() => window.charlstm !== undefined")
            got = np.array(page.evaluate("p => charlstm.distribution(p)", prime))
            assert page.evaluate("charlstm.checkReference()"), f"{weight_format}: the page's seeded text differs"
            print(f"| {weight_format} | {exported.size_bytes / 1e6:.2f} MB | {np.abs(got - expected).max():.1e} |")
            pages[weight_format] = page

        def page_loop(length: int) -> float:
            script = f"() => {{ const t = performance.now(); charlstm.generate('', {length}, 1.0, 1); return performance.now() - t; }}"
            return pages["float16"].evaluate(script) / 1000

        loops = {
            "browser page (float16, JS)": page_loop,
            "charlstm Generator (fp32)": charlstm_sampling_loop(generator, 1),
            "onnxruntime step graph": onnx_sampling_loop(loaded.model, 1, threads=1),
            "plain nn.LSTM loop": naive_sampling_loop(loaded.model, 1),
        }
        for run in loops.values():
            run(max(2, args.chars // 10))
        seconds = dict.fromkeys(loops, 0.0)
        for _ in range(args.rounds):
            for name, run in loops.items():
                seconds[name] += run(args.chars)
        rates = {name: args.rounds * args.chars / spent for name, spent in seconds.items()}
        print(f"\nbatch-1 sampling, {args.rounds} alternating rounds of {args.chars} characters:\n")
        print("| sampler | chars/s | vs the page |\n| --- | ---: | ---: |")
        page_rate = rates["browser page (float16, JS)"]
        for name, rate in rates.items():
            print(f"| {name} | {rate:,.0f} | {rate / page_rate:.2f}x |")
        browser.close()
    print(f"\nmeasured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


if __name__ == "__main__":
    main()
