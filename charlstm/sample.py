"""Generating text: prime the hidden state on a beginning, then step one character at a time.

An LSTM's whole memory of the text so far is its (h, c) state, so each new
character costs one step whatever came before: the Generator keeps that state
and hands it back, which is what lets the REPL continue a conversation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from .corpus import UnknownPolicy, Vocab
from .errors import CharlstmError
from .model import CharLSTM, State


@dataclass(frozen=True)
class SamplingOptions:
    """How the next character is drawn from the model's distribution.

    ``temperature`` 0 means greedy (always the most likely character);
    ``top_k`` and ``top_p`` cut the tail of the distribution before drawing.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 100.0:
            raise CharlstmError(f"temperature must be between 0 and 100, not {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise CharlstmError(f"top-k must be at least 1, not {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise CharlstmError(f"top-p must be in (0, 1], not {self.top_p}")


def pick_next(logits: torch.Tensor, options: SamplingOptions, rng: torch.Generator | None) -> torch.Tensor:
    """Draw one id per row of ``logits`` (N, V) under ``options``."""
    if options.temperature == 0.0:
        return logits.argmax(dim=-1)
    scores = logits.float() / options.temperature
    if options.top_k is not None and options.top_k < scores.shape[-1]:
        kth = torch.topk(scores, options.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if options.top_p is not None and options.top_p < 1.0:
        ordered, order = torch.sort(scores, dim=-1, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        # Drop a character once the ones before it already cover top_p; the first always stays.
        drop = (torch.cumsum(probs, dim=-1) - probs) >= options.top_p
        ordered = ordered.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(-1, order, ordered)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=rng).squeeze(-1)


class Generator:
    """Primes a model on text and streams characters from it."""

    def __init__(self, model: CharLSTM, vocab: Vocab, device: torch.device | str | None = None):
        self.model = model
        self.vocab = vocab
        self.device = torch.device(device) if device is not None else model.head.weight.device
        self.model.to(self.device).eval()

    @property
    def start_char(self) -> str:
        """What an empty prime feeds: a newline, the usual place a text begins."""
        for candidate in ("\n", " "):
            if candidate in self.vocab:
                return candidate
        return self.vocab.chars[0]

    def encode_prime(self, text: str, unknown: UnknownPolicy = "error") -> torch.Tensor:
        if unknown == "error" and self.vocab.unknown_id is not None:
            unknown = "replace"  # the model learned the unknown symbol for exactly these characters
        ids = self.vocab.encode(text, unknown=unknown)
        return torch.from_numpy(ids.astype("int64"))

    @torch.inference_mode()
    def feed(self, ids: torch.Tensor, state: State | None, num_streams: int = 1) -> tuple[torch.Tensor, State]:
        """Run ``ids`` (1-D) through the model for every stream; logits of the last step and the state."""
        batch = ids.to(self.device).unsqueeze(0).expand(num_streams, -1)
        logits, state = self.model(batch, state)
        return logits[:, -1, :], state

    def prime(
        self, text: str, num_streams: int = 1, unknown: UnknownPolicy = "error", state: State | None = None
    ) -> tuple[torch.Tensor, State]:
        """The state after reading ``text`` (or the start character when it is empty)."""
        ids = self.encode_prime(text, unknown)
        if len(ids) == 0:
            if state is not None:
                raise CharlstmError("nothing to feed: the prime text is empty after removing unknown characters")
            ids = self.encode_prime(self.start_char)
        return self.feed(ids, state, num_streams)

    @torch.inference_mode()
    def stream(
        self,
        prime: str = "",
        length: int = 500,
        options: SamplingOptions = SamplingOptions(),
        num_samples: int = 1,
        seed: int | None = None,
        unknown: UnknownPolicy = "error",
        state: State | None = None,
    ) -> Iterator[list[str]]:
        """Yield one character per sample at each step, ``length`` times.

        The final state is left in ``self.last_state`` so a caller can continue.
        """
        if length < 0:
            raise CharlstmError(f"length must be at least 0, not {length}")
        if options.top_k is not None and options.top_k > len(self.vocab):
            raise CharlstmError(
                f"top-k {options.top_k} is larger than the vocabulary ({len(self.vocab)} characters); "
                f"use at most {len(self.vocab)}"
            )
        rng = torch.Generator(device="cpu")
        rng.manual_seed(seed if seed is not None else int(torch.seed() % (2**63)))
        logits, state = self.prime(prime, num_samples, unknown, state)
        self.last_state = state
        # The unknown symbol stands for characters too rare to learn: never write it.
        unknown_id = self.vocab.unknown_id if len(self.vocab) > 1 else None
        for _ in range(length):
            scores = logits.cpu()
            if unknown_id is not None:
                scores[:, unknown_id] = float("-inf")
            ids = pick_next(scores, options, rng)
            yield [self.vocab.chars[i] for i in ids.tolist()]
            logits, state = self.feed_step(ids, state)
            self.last_state = state

    @torch.inference_mode()
    def feed_step(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One step for N streams: ids (N,) in, logits (N, V) and the new state out."""
        logits, state = self.model(ids.to(self.device).unsqueeze(1), state)
        return logits[:, -1, :], state

    def generate(
        self,
        prime: str = "",
        length: int = 500,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        num_samples: int = 1,
        seed: int | None = None,
        unknown: UnknownPolicy = "error",
    ) -> list[str]:
        """``num_samples`` continuations of ``prime``, each ``length`` characters (prime not included)."""
        options = SamplingOptions(temperature, top_k, top_p)
        pieces: list[list[str]] = [[] for _ in range(num_samples)]
        for step in self.stream(prime, length, options, num_samples, seed, unknown):
            for piece, char in zip(pieces, step):
                piece.append(char)
        return ["".join(piece) for piece in pieces]
