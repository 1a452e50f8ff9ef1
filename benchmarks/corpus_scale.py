"""How charlstm copes with a 100 MB corpus: encoding speed, start-up time and peak memory.

Builds a ~100 MB file by repeating War and Peace (UTF-8 with a BOM and CRLF line
endings, a few non-ASCII letters) in a temporary folder, then:

1. in this process, times reading + normalising, counting + encoding (MB/s);
2. in a fresh subprocess with an empty cache, times start-up to the end of the
   first training step and reads the peak RSS;
3. runs the same subprocess again, now served by the cache;
4. reports a subprocess that only imports charlstm and builds the model and its
   optimiser (the floor any run pays), so the corpus's own share can be read off.

Usage: python benchmarks/corpus_scale.py [--source warpeace.txt] [--mb 100]
The figures come from a shared 2-core machine: read them as orders of magnitude.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_SOURCE = Path("/work/shared/corpora/warpeace.txt")
CHILD = r"""
import json, sys, time
start = time.perf_counter()
from pathlib import Path
from charlstm import ModelConfig, TrainConfig, Trainer
from charlstm.data.cache import CorpusCache
from charlstm.data.sources import load_corpus


def peak_rss_mb():
    # VmHWM belongs to this process image; ru_maxrss would carry over the parent's peak through fork and exec.
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


corpus_path, cache_dir, run_dir, load = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "load"
imported = time.perf_counter()
vocab_size, from_cache, loaded_at = 90, None, imported
if load:
    loaded = load_corpus([corpus_path], cache=CorpusCache(Path(cache_dir)))
    corpus, from_cache = loaded.corpus, loaded.from_cache
    vocab_size = len(corpus.vocab)
    loaded_at = time.perf_counter()
model = ModelConfig(vocab_size=vocab_size, emb_size=16, hidden_size=64, num_layers=1)
config = TrainConfig(batch_size=16, seq_len=64, steps=1, device="cpu", precision="fp32", preview_chars=0, val_frac=0.0)
if load:
    Trainer(corpus, model, config, Path(run_dir)).train()
else:
    import torch
    from charlstm.model.network import CharLSTM
    torch.optim.AdamW(CharLSTM(model).parameters())
print(json.dumps({"import": imported - start, "load": loaded_at - imported, "total": time.perf_counter() - start,
                  "from_cache": from_cache, "peak_rss_mb": peak_rss_mb()}))
"""

def build_corpus(source: Path, target: Path, megabytes: float) -> int:
    raw = source.read_bytes()
    bom = b"\xef\xbb\xbf" if raw.startswith(b"\xef\xbb\xbf") else b""
    body = raw[len(bom):]
    copies = -(-int(megabytes * 1e6) // len(body))
    with open(target, "wb") as handle:
        handle.write(bom)
        for _ in range(copies):
            handle.write(body)
    return target.stat().st_size


def in_process_rates(path: Path) -> dict[str, float]:
    from charlstm.data.corpus import Vocab, char_counts, prepare_text, sha256_hex

    size = path.stat().st_size
    started = time.perf_counter()
    data = path.read_bytes()
    sha256_hex(data)
    hashed = time.perf_counter()
    text = prepare_text(data, str(path))
    del data
    prepared = time.perf_counter()
    vocab = Vocab.from_counts(char_counts(text))
    counted = time.perf_counter()
    ids = vocab.encode(text)
    encoded = time.perf_counter()
    assert len(ids) == len(text)
    mb = size / 1e6
    return {
        "read_and_hash_mb_s": mb / (hashed - started),
        "decode_and_normalise_mb_s": mb / (prepared - hashed),
        "vocab_count_mb_s": mb / (counted - prepared),
        "encode_mb_s": mb / (encoded - counted),
        "count_and_encode_mb_s": mb / (encoded - prepared),
        "whole_load_mb_s": mb / (encoded - started),
    }


def child(args: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="text file to repeat")
    parser.add_argument("--mb", type=float, default=100.0, help="size of the corpus to build, in MB")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="charlstm-scale-") as scratch:
        folder = Path(scratch)
        corpus = folder / "corpus.txt"
        size = build_corpus(options.source, corpus, options.mb)
        print(f"corpus: {size:,} bytes ({size / 1e6:.1f} MB), {options.source.name} repeated")
        floor = child([str(corpus), str(folder / "cache"), str(folder / "run0"), "model-only"])
        first = child([str(corpus), str(folder / "cache"), str(folder / "run1"), "load"])
        second = child([str(corpus), str(folder / "cache"), str(folder / "run2"), "load"])
        assert first["from_cache"] is False and second["from_cache"] is True
        print("in-process rates, MB/s:")
        for name, value in in_process_rates(corpus).items():
            print(f"  {name:28s} {value:8.1f}")
        print(f"floor (imports, model, optimiser, no corpus): {floor['total']:.2f} s, peak RSS {floor['peak_rss_mb']:.0f} MB")
        for label, run in (("first run (encodes)", first), ("second run (cached)", second)):
            print(
                f"{label:21s} corpus load {run['load']:5.2f} s; start-up to first step {run['total']:5.2f} s "
                f"(imports {run['import']:.2f} s); peak RSS {run['peak_rss_mb']:5.0f} MB "
                f"({run['peak_rss_mb'] - floor['peak_rss_mb']:.0f} MB above the floor)"
            )


if __name__ == "__main__":
    main()
