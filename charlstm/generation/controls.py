"""What a generation asks for and what it gives back: the one place the CLI, the REPL and the server map onto.

A :class:`GenerationRequest` holds every control (length bound, stop strings, line count, sampling
rules, log-probabilities, beam width); :class:`SampleResult` is what one sample ends with; a stream
yields :class:`TextDelta` pieces and then each sample's result. The stop strings are matched by
:class:`StopMatcher`, an Aho-Corasick automaton over character ids held as one tensor, so that all
the rows of a batch advance with one indexing operation per step whatever the number of stops.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ..base.errors import CharlstmError
from ..base.reading import FileRefused, memory_available, read_bytes
from ..data.corpus import UnknownPolicy, Vocab, decode_bytes

FinishReason = Literal["stop", "lines", "length"]

MAX_LENGTH = 10_000_000
MAX_STOPS = 16
MAX_STOP_CHARS = 256
MAX_LOGPROBS = 20
MAX_BEAM = 64
# Below this temperature logits / T overflows float32 and the draw would be NaN-driven, not greedy.
GREEDY_BELOW = 1e-6


@dataclass(frozen=True)
class SamplingOptions:
    """How the next character is drawn from the model's distribution.

    ``temperature`` 0 means greedy (always the most likely character);
    ``top_k``, ``top_p`` and ``min_p`` cut the tail of the distribution before drawing:
    ``min_p`` keeps the characters whose probability (after temperature) is at least
    ``min_p`` times the likeliest one's, a cut that follows the model's confidence.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None

    @property
    def greedy(self) -> bool:
        """Temperatures this small are greedy in all but rounding: dividing by them overflows to inf."""
        return self.temperature < GREEDY_BELOW

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 100.0:
            raise CharlstmError(f"temperature must be between 0 and 100, not {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise CharlstmError(f"top-k must be at least 1, not {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise CharlstmError(f"top-p must be in (0, 1], not {self.top_p}")
        if self.min_p is not None and not 0.0 <= self.min_p <= 1.0:
            raise CharlstmError(f"min-p must be between 0 and 1, not {self.min_p}")

    @property
    def plain(self) -> bool:
        """No cut of the tail: the whole tempered distribution is drawn from."""
        return (self.top_k is None and (self.top_p is None or self.top_p >= 1.0)
                and (self.min_p is None or self.min_p <= 0.0))


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: what to continue, when to end, how to draw, what to report.

    ``length`` is the upper bound on generated characters. A sample ends earlier at the first of
    its ``stop`` strings (left out of the text unless ``keep_stop``) or after ``lines`` newlines
    (the last newline counts as the stop). ``logprobs`` K asks for every generated character's
    log-probability under the model and the K likeliest characters with theirs (0: only the
    chosen one). ``beam`` W replaces sampling with a W-wide beam search for the most probable
    continuation (deterministic; sampling options other than the stops do not apply).
    """

    prime: str = ""
    length: int = 500
    sampling: SamplingOptions = SamplingOptions()
    num_samples: int = 1
    seed: int | None = None
    unknown: UnknownPolicy = "error"
    stop: tuple[str, ...] = ()
    keep_stop: bool = False
    lines: int | None = None
    logprobs: int | None = None
    beam: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.length <= MAX_LENGTH:
            raise CharlstmError(f"length must be between 1 and {MAX_LENGTH:,}, not {self.length}")
        if self.num_samples < 1:
            raise CharlstmError(f"the number of samples must be at least 1, not {self.num_samples}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise CharlstmError(f"the seed must be between 0 and 2**63-1, not {self.seed}")
        if self.unknown not in ("error", "skip", "replace"):
            raise CharlstmError(f"unknown must be error, skip or replace, not {self.unknown!r}")
        if len(self.stop) > MAX_STOPS:
            raise CharlstmError(f"at most {MAX_STOPS} stop strings, not {len(self.stop)}")
        for stop in self.stop:
            if not stop:
                raise CharlstmError("a stop string cannot be empty")
            if len(stop) > MAX_STOP_CHARS:
                raise CharlstmError(f"a stop string can be at most {MAX_STOP_CHARS} characters, not {len(stop)}")
        if self.lines is not None and self.lines < 1:
            raise CharlstmError(f"lines must be at least 1, not {self.lines}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise CharlstmError(f"logprobs must be between 0 and {MAX_LOGPROBS}, not {self.logprobs}")
        if self.beam is not None:
            if not 1 <= self.beam <= MAX_BEAM:
                raise CharlstmError(f"the beam width must be between 1 and {MAX_BEAM}, not {self.beam}")
            if self.num_samples != 1:
                raise CharlstmError("beam search returns the one most probable continuation; leave the number of samples at 1")

    @property
    def holds_back(self) -> bool:
        """Whether streamed text must wait until it cannot be the start of a stop string that is left out."""
        return bool(self.stop) and not self.keep_stop


@dataclass(frozen=True)
class CharLogprob:
    """A generated character, its log-probability (natural log) under the model, and the likeliest alternatives."""

    char: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"char": self.char, "logprob": self.logprob, "top": [{"char": c, "logprob": lp} for c, lp in self.top]}


@dataclass(frozen=True)
class TextDelta:
    """New text of sample ``sample`` in a stream; every delta is final (never retracted), with its log-probabilities if asked."""

    sample: int
    text: str
    logprobs: tuple[CharLogprob, ...] | None = None


@dataclass(frozen=True)
class SampleResult:
    """One finished sample.

    ``characters`` is the length of ``text``; ``generated`` counts every character drawn, a
    left-out stop string included. ``seconds`` runs from the request to this sample's end,
    ``prime_seconds`` is the part spent reading the prime.
    """

    index: int
    text: str
    finish_reason: FinishReason
    generated: int
    seed: int
    prime_chars: int
    prime_seconds: float
    seconds: float
    logprobs: tuple[CharLogprob, ...] | None = None
    stop: str | None = field(default=None)

    @property
    def characters(self) -> int:
        return len(self.text)

    @property
    def chars_per_second(self) -> float:
        drawing = self.seconds - self.prime_seconds
        return self.generated / drawing if drawing > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("logprobs")
        data["characters"] = self.characters
        data["timing"] = {"prime_seconds": data.pop("prime_seconds"), "seconds": data.pop("seconds"),
                          "chars_per_second": self.chars_per_second}
        if self.logprobs is not None:
            data["logprobs"] = [entry.to_dict() for entry in self.logprobs]
        return data


class StopMatcher:
    """Aho-Corasick over character ids: one state per row, advanced for the whole batch in one lookup.

    A state is the longest suffix of the text so far that begins some stop string; ``matched``
    says how long a stop string ends at it (0: none) and ``depth`` how many characters the state
    holds, which is exactly what a stream must hold back. A stop with a character outside the
    vocabulary can never be written, so it never matches.
    """

    def __init__(self, stops: tuple[str, ...], vocab: Vocab, device: torch.device | str = "cpu"):
        ids_of = {char: char_id for char_id, char in enumerate(vocab.chars)}
        encoded = [[ids_of[c] for c in stop] for stop in stops if all(c in ids_of for c in stop)]
        children: list[dict[int, int]] = [{}]
        depth, matched = [0], [0]
        for ids in encoded:
            node = 0
            for char_id in ids:
                if char_id not in children[node]:
                    children.append({})
                    depth.append(depth[node] + 1)
                    matched.append(0)
                    children[node][char_id] = len(children) - 1
                node = children[node][char_id]
            matched[node] = max(matched[node], len(ids))
        size, vocab_size = len(children), len(vocab)
        table = [[0] * vocab_size for _ in range(size)]
        fail = [0] * size
        order = [0]
        for node in order:  # breadth first: a node's fail link is settled before its children need it
            for char_id in range(vocab_size):
                child = children[node].get(char_id)
                if child is None:
                    table[node][char_id] = table[fail[node]][char_id] if node else 0
                    continue
                table[node][char_id] = child
                fail[child] = table[fail[node]][char_id] if node else 0
                matched[child] = max(matched[child], matched[fail[child]])
                order.append(child)
        self.active = size > 1
        self.table = torch.tensor(table, dtype=torch.long, device=device)
        self.depth = torch.tensor(depth, dtype=torch.long, device=device)
        self.matched = torch.tensor(matched, dtype=torch.long, device=device)

    def start(self, rows: int) -> torch.Tensor:
        return torch.zeros(rows, dtype=torch.long, device=self.table.device)

    def advance(self, states: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.table[states, ids]


def read_prime(data: bytes | None = None, path: Path | None = None) -> str:
    """A prime from a file (``path``) or from bytes already read (standard input), prepared like a corpus:
    BOM dropped, CRLF as LF, NFC; binary data refused. An empty one is allowed, like ``--prime ""``."""
    source = "standard input" if path is None else str(path)
    if path is not None:
        try:
            data = read_bytes(path, memory_available() // 8)
        except FileRefused as refused:
            raise CharlstmError(f"{refused}; give a text file to read the prime from") from None
    return decode_bytes(data or b"", source) if data else ""
