"""What is in a corpus before training on it: size, characters, oddities, and a model size to match.

Characters are counted as the files decode, with nothing normalised (a BOM and
every CR count), so the figures can be checked against any other tool.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..base.errors import CorpusError
from ..data.corpus import TextOptions, Vocab, char_counts
from ..data.sources import (
    SkippedFile,
    corpus_budget,
    read_candidate,
    resolve_sources,
    why_not_text,
)
from ..model.network import CharLSTM
from ..training.presets import PRESETS

_ALLOWED_CONTROLS = frozenset("\n\r\t")
# Memory per corpus byte, beyond the ids, while a corpus is first read and encoded
# (raw bytes and decoded text overlap briefly): benchmarks/corpus_scale.py measured
# 215 MB above the no-corpus floor for 101 MB of text, of which 101 MB are the ids.
_ENCODE_PEAK_PER_BYTE = 1.2


@dataclass
class CorpusStats:
    files: int
    bytes: int
    chars: int
    distinct: int
    rarest: list[tuple[str, int]]
    line_endings: dict[str, int]
    files_with_bom: int
    controls: dict[str, int]  # control characters other than LF, CR and tab
    invisible: dict[str, int]  # other characters that print nothing (format, unassigned, private use)
    ids_bytes: int
    encode_peak_bytes: int
    suggested_parameters: int
    preset_parameters: dict[str, int]
    skipped: list[SkippedFile] = field(default_factory=list)

    @property
    def line_ending_style(self) -> str:
        used = [name for name, count in self.line_endings.items() if count]
        if not used:
            return "none"
        return used[0] if len(used) == 1 else "mixed (" + ", ".join(f"{n} {self.line_endings[n]:,}" for n in used) + ")"

    @property
    def closest_preset(self) -> str:
        """The preset whose parameter count is nearest the rule of thumb, on a log scale."""
        target = np.log(max(1, self.suggested_parameters))
        return min(self.preset_parameters, key=lambda name: abs(np.log(self.preset_parameters[name]) - target))


def _parameters(vocab_size: int) -> dict[str, int]:
    with torch.device("meta"):
        return {
            name: CharLSTM(preset.model_config(vocab_size)).num_parameters()
            for name, preset in PRESETS.items()
        }


def corpus_stats(sources: Sequence[str | Path], options: TextOptions = TextOptions(), rarest: int = 10) -> CorpusStats:
    """Statistics of the text files ``sources`` name (files, folders, patterns)."""
    counts = np.zeros(256, dtype=np.int64)
    endings = {"LF": 0, "CRLF": 0, "CR": 0}
    total_bytes = files = with_bom = 0
    skipped: list[SkippedFile] = []
    budget = corpus_budget()
    for candidate in resolve_sources(sources):
        data = read_candidate(candidate, budget)
        if isinstance(data, SkippedFile):
            skipped.append(data)
            continue
        reason = why_not_text(data)
        if reason == "empty" and candidate.named:
            raise CorpusError(f"{candidate.path} is empty; give a file with some text in it")
        if reason is not None and not candidate.named:
            skipped.append(SkippedFile(candidate.path, reason))
            continue
        try:
            text = data.decode(options.encoding, options.errors)
        except UnicodeDecodeError as error:
            raise CorpusError(
                f"{candidate.path} is not valid {options.encoding} (byte 0x{data[error.start]:02x} at offset "
                f"{error.start}); pass --encoding with the file's real encoding"
            ) from None
        found = char_counts(text)
        if len(found) > len(counts):
            found[: len(counts)] += counts
            counts = found
        else:
            counts[: len(found)] += found
        crlf = data.count(b"\r\n")
        endings["CRLF"] += crlf
        endings["CR"] += data.count(b"\r") - crlf
        endings["LF"] += data.count(b"\n") - crlf
        with_bom += text.startswith("\ufeff")
        total_bytes += len(data)
        files += 1
    if files == 0:
        raise CorpusError(f"no text files in {', '.join(map(str, sources))} ({len(skipped)} skipped)")
    present = np.flatnonzero(counts)
    chars = Vocab.from_counts(counts).chars
    by_count = sorted(zip(chars, counts[present].tolist()), key=lambda pair: (pair[1], pair[0]))
    controls = {c: n for c, n in by_count if unicodedata.category(c) == "Cc" and c not in _ALLOWED_CONTROLS}
    invisible = {c: n for c, n in by_count if unicodedata.category(c) in ("Cf", "Cn", "Co", "Cs")}
    total_chars = int(counts.sum())
    ids_bytes = total_chars * Vocab(chars).dtype.itemsize
    return CorpusStats(
        files=files,
        bytes=total_bytes,
        chars=total_chars,
        distinct=len(chars),
        rarest=by_count[:rarest],
        line_endings=endings,
        files_with_bom=with_bom,
        controls=controls,
        invisible=invisible,
        ids_bytes=ids_bytes,
        encode_peak_bytes=int(total_bytes * _ENCODE_PEAK_PER_BYTE) + ids_bytes,
        suggested_parameters=total_chars,
        preset_parameters=_parameters(len(chars)),
        skipped=skipped,
    )
