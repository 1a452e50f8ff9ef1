"""Generating text: prime the hidden state on a beginning, then step one character at a time.

An LSTM's whole memory of the text so far is its (h, c) state, so each new
character costs one step whatever came before: the Generator keeps that state
and hands it back, which is what lets the REPL continue a conversation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from ..base.errors import CharlstmError
from ..base.runtime import Precision, resolve_precision
from ..data.corpus import UnknownPolicy, Vocab
from ..model.network import CharLSTM, State
from ..model.stepper import LSTMStepper, ModelStepper, Stepper, forward_last

# Characters read in one forward call: a megabyte-long prime in one call fails inside oneDNN.
PRIME_CHUNK = 16384
# Below this temperature logits / T overflows float32 and the draw would be NaN-driven, not greedy.
GREEDY_BELOW = 1e-6


@dataclass(frozen=True)
class SamplingOptions:
    """How the next character is drawn from the model's distribution.

    ``temperature`` 0 means greedy (always the most likely character);
    ``top_k`` and ``top_p`` cut the tail of the distribution before drawing.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

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


def pick_next(logits: torch.Tensor, options: SamplingOptions, rng: torch.Generator | None) -> torch.Tensor:
    """Draw one id per row of ``logits`` (N, V) under ``options``."""
    if options.greedy:
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
        drop[..., 0] = False  # a top_p below float32's smallest number compares as 0
        ordered = ordered.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(-1, order, ordered)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=rng).squeeze(-1)


class InPlaceDraw:
    """``pick_next`` for N streams, drawing into buffers allocated once.

    ``torch.multinomial`` draws one sample as the argmax of p / E with E ~ Exp(1)
    per character (the exponential race). In logs that is the argmax of
    logits / T - log E: no softmax, the same random numbers from ``rng``, so the
    same characters as ``pick_next`` up to float rounding. Top-k and top-p cuts
    go through ``pick_next`` itself. The id ``never`` (if any) is never drawn.
    """

    def __init__(
        self, options: SamplingOptions, num_streams: int, vocab_size: int, rng: torch.Generator, never: int | None = None
    ):
        self.options = options
        self.rng = rng
        self.never = never
        self.scores = torch.empty(num_streams, vocab_size)
        self.noise = torch.empty(num_streams, vocab_size)
        self.ids = torch.empty(num_streams, dtype=torch.long)
        self.plain = options.top_k is None and (options.top_p is None or options.top_p >= 1.0)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Ids (N,) drawn from CPU logits (N, V), which it may change; the result is a buffer the next draw overwrites."""
        if self.never is not None:
            logits[:, self.never] = float("-inf")
        if self.options.greedy:
            return torch.argmax(logits, dim=-1, out=self.ids)
        if not self.plain:
            return pick_next(logits, self.options, self.rng)
        torch.div(logits, self.options.temperature, out=self.scores)
        self.scores.sub_(self.noise.exponential_(generator=self.rng).log_())
        return torch.argmax(self.scores, dim=-1, out=self.ids)


class Generator:
    """Primes a model on text and streams characters from it.

    Priming runs the model's own forward over the whole prime (one fused
    sequence kernel); the characters after the first come from a fused
    one-step LSTM (:class:`LSTMStepper`), several times faster than calling
    the model once per character; GRU and vanilla-RNN models step through the
    model's forward (:class:`ModelStepper`). ``precision`` "fp32" (the
    default) holds states and logits to the model's own forward within fp32
    rounding, which exact continuations rely on; "bf16" runs the matrix
    products with bf16 weights, about twice as fast again; "auto" picks bf16
    on CPUs that have fast bf16 (``charlstm sample`` does this by default). The fast step copies the weights when first
    used: make a new Generator after changing the model.
    """

    def __init__(
        self,
        model: CharLSTM,
        vocab: Vocab,
        device: torch.device | str | None = None,
        precision: Precision = "fp32",
    ):
        self.model = model
        self.vocab = vocab
        self.device = torch.device(device) if device is not None else model.head.weight.device
        self.precision = resolve_precision(precision, self.device)
        self.model.to(self.device).eval()
        self._idle_steppers: dict[int, list[Stepper]] = {}
        self._live_stepper: Stepper | None = None
        self._last_state: State | None = None

    @property
    def last_state(self) -> State | None:
        """The state after everything the latest stream has fed so far: continue from it with ``state=``."""
        if self._live_stepper is not None:
            return self._live_stepper.state()
        return self._last_state

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
        """Run ``ids`` (1-D) through the model for every stream; logits of the last step and the state.

        From a fresh state every stream reads the same text, so it is read once
        and the result copied to each stream.
        """
        shared = state is None
        batch = ids.to(self.device).unsqueeze(0).expand(1 if shared else num_streams, -1)
        for piece in batch.split(PRIME_CHUNK, dim=1):
            logits, state = forward_last(self.model, piece, state, self.precision)
        assert state is not None, "feed needs at least one id"
        if shared and num_streams > 1:
            logits = logits.expand(num_streams, -1).contiguous()
            state = tuple(s.expand(-1, num_streams, -1).contiguous() for s in state)
        return logits, state

    def prime(
        self, text: str, num_streams: int = 1, unknown: UnknownPolicy = "error", state: State | None = None
    ) -> tuple[torch.Tensor, State]:
        """The state after reading ``text``, preceded from a fresh state by :attr:`lead_in`.

        Training carries the state from window to window, so a model meets the
        all-zero state only at the start of each epoch: primed from it directly,
        a trained model can be far off ("ROMEO:" drew "Z333&&&" from a 10-minute
        tiny-Shakespeare model). Reading two start characters first puts it where
        texts begin, after a blank line.
        """
        ids = self.encode_prime(text, unknown)
        if state is None:
            ids = torch.cat([self.encode_prime(self.lead_in), ids])
        elif len(ids) == 0:
            raise CharlstmError("nothing to feed: the prime text is empty after removing unknown characters")
        return self.feed(ids, state, num_streams)

    @property
    def lead_in(self) -> str:
        return self.start_char * 2

    def _take_stepper(self, num_streams: int) -> Stepper:
        """A stepper for ``num_streams`` streams, reused across streams but never shared by two at once."""
        idle = self._idle_steppers.get(num_streams)
        if idle:
            return idle.pop()
        if self.model.is_lstm:
            return LSTMStepper(self.model, num_streams, self.precision)
        return ModelStepper(self.model, num_streams, self.precision)

    def _release_stepper(self, stepper: Stepper) -> None:
        self._idle_steppers.setdefault(stepper.batch_size, []).append(stepper)

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

        ``self.last_state`` is the state after the characters fed so far, so a
        caller can continue from where it stopped.
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
        # The unknown symbol stands for characters too rare to learn: never write it.
        unknown_id = self.vocab.unknown_id if len(self.vocab) > 1 else None
        draw = InPlaceDraw(options, num_samples, len(self.vocab), rng, never=unknown_id)
        logits, state = self.prime(prime, num_samples, unknown, state)
        self._live_stepper, self._last_state = None, state
        if length == 0:
            return
        ids = draw(logits.cpu())
        yield [self.vocab.chars[i] for i in ids.tolist()]
        # The first character is out; only now build (or reuse) the stepper for the rest.
        stepper = self._take_stepper(num_samples)
        stepper.load_state(state)
        self._live_stepper = stepper
        try:
            for _ in range(length - 1):
                ids = draw(stepper.step(ids.to(self.device)).cpu())
                yield [self.vocab.chars[i] for i in ids.tolist()]
            stepper.step(ids.to(self.device))
        finally:
            if self._live_stepper is stepper:
                self._last_state, self._live_stepper = stepper.state(), None
            self._release_stepper(stepper)

    @torch.inference_mode()
    def feed_step(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One step for N streams: ids (N,) in, logits (N, V) and the new state out."""
        stepper = self._take_stepper(len(ids))
        try:
            stepper.load_state(state)
            return stepper.step(ids.to(self.device)).clone(), stepper.state()
        finally:
            self._release_stepper(stepper)

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


def preview_text(model: CharLSTM, vocab: Vocab, step: int, length: int = 160) -> str:
    """A sample shown at a training run's evaluations (the trainer's preview hook): seeded by the step, so
    it never touches the training RNG and a resumed run shows the same text; the model is left in training mode."""
    text = Generator(model, vocab).generate("", length, temperature=0.8, seed=step)[0]
    model.train()
    return text
