"""Generating text: prime the hidden state on a beginning, then step one character at a time.

An LSTM's whole memory of the text so far is its (h, c) state, so each new
character costs one step whatever came before: the Generator keeps that state
and hands it back, which is what lets the REPL continue a conversation.
"""

from __future__ import annotations

import math
import secrets
import time
from typing import Callable, Iterator, Literal

import torch
import torch.nn.functional as F

from ..base.errors import CharlstmError
from ..base.runtime import autocast, cpu_has_amx, resolve_precision
from ..data.corpus import UnknownPolicy, Vocab
from ..model.network import CharLSTM, State
from ..model.stepper import (
    LSTMStepper,
    ModelStepper,
    Stepper,
    forward_last,
    int8_available,
    int8_compiled,
)
from .controls import (
    CharLogprob,
    FinishReason,
    GenerationRequest,
    SampleResult,
    SamplingOptions,
    StopMatcher,
    TextDelta,
)

__all__ = ["Generator", "InPlaceDraw", "SamplingOptions", "pick_next", "preview_text", "race_noise"]

# Characters read in one forward call: a megabyte-long prime in one call fails inside oneDNN.
PRIME_CHUNK = 16384


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
    if options.min_p is not None and options.min_p > 0.0:
        scores = scores.masked_fill(scores < scores.amax(dim=-1, keepdim=True) + math.log(options.min_p), float("-inf"))
    return torch.argmax(scores - race_noise(torch.empty_like(scores), rng), dim=-1)


def race_noise(noise: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
    """Fill ``noise`` with log E, E ~ Exp(1) per element, and return it: the argmax of scores - log E
    is a draw from softmax(scores) (the exponential race, which ``torch.multinomial`` also runs).

    E is taken as -log U from uniforms: on a CPU ``exponential_`` costs about four times as much per
    number (32 x 65 of them: 37 µs against 9 µs), a tenth of a batch-32 int8 sampling step. A U of 0
    gives E = inf, a score of -inf: that character is not drawn, as with probability 2^-24 it should not be.
    """
    return noise.uniform_(generator=rng).log_().neg_().log_()


class InPlaceDraw:
    """``pick_next`` for N streams, drawing into buffers allocated once.

    Both draw by the exponential race: the argmax of logits / T - log E with
    E ~ Exp(1) per character (:func:`race_noise`), so no softmax, and from the
    same random numbers of ``rng`` the same characters. A min-p cut is one
    in-place mask; top-k and top-p cuts go through ``pick_next`` itself. The id
    ``never`` (if any) is never drawn. Fewer rows than ``num_streams`` (streams
    that finished) use the first rows of the buffers.
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
        self.log_min_p = math.log(options.min_p) if options.min_p else None

    def __call__(self, logits: torch.Tensor, streams: torch.Tensor | None = None) -> torch.Tensor:
        """Ids drawn from CPU logits (rows, V), which it may change; the result is a buffer the next draw overwrites.

        ``streams`` names the stream of each row when some have finished: the random numbers are
        still drawn for every stream, so a stream draws the same characters whether or not the
        others have stopped (with top-k or top-p, which go through ``pick_next``, it does not).
        """
        rows = logits.shape[0]
        if self.never is not None:
            logits[:, self.never] = float("-inf")
        if self.options.greedy:
            return torch.argmax(logits, dim=-1, out=self.ids[:rows])
        if not self.plain:
            return pick_next(logits, self.options, self.rng)
        # At temperature 1 (the default) the logits are the scores: no pass to divide them.
        scores = logits if self.options.temperature == 1.0 else torch.div(logits, self.options.temperature, out=self.scores[:rows])
        if self.log_min_p is not None:
            floor = scores.amax(dim=-1, keepdim=True).add_(self.log_min_p)
            scores.masked_fill_(scores < floor, float("-inf"))
        race_noise(self.noise, self.rng)
        noise = self.noise if streams is None or rows == len(self.noise) else self.noise.index_select(0, streams)
        scores.sub_(noise)
        return torch.argmax(scores, dim=-1, out=self.ids[:rows])


SamplingPrecision = Literal["auto", "bf16", "fp32", "int8"]


# Without the compiled layer step, below this hidden size fbgemm's per-call quantisation costs more than int8
# saves (bench on AVX2: 1x128 ran batch 32 at 1.57x the plain loop in int8 against 1.96x in fp32; 2x384 at
# 2.28x against 1.51x). The compiled step has no such cost: int8 led fp32 at every size from 1x32 to 2x512.
INT8_FROM_HIDDEN = 256


def sampling_precision(precision: SamplingPrecision, device: torch.device, hidden_size: int = INT8_FROM_HIDDEN) -> str:
    """The arithmetic of sampling steps: as :func:`resolve_precision` for training, except that ``auto`` on a
    CPU without AMX takes int8 weights: at any size where the compiled layer step is built, else (fbgemm's
    products) for layers of at least ``INT8_FROM_HIDDEN`` units and fp32 for narrower ones. Without AMX the
    products are bound by multiply-adds: int8 beats fp32 (and emulated bf16) on an AVX2-only CPU, and beats
    oneDNN's bf16 on one with AVX512-bf16 and VNNI, where fp32 beats bf16 below 256 units
    (benchmarks/RESULTS.md has the figures). With AMX, oneDNN's bf16 products run on the tile unit."""
    if precision == "int8":
        if not int8_available(device):
            raise CharlstmError("int8 sampling needs a CPU with PyTorch's fbgemm engine; use --precision fp32")
        return "int8"
    resolved = resolve_precision(precision, device)
    if precision == "auto" and device.type == "cpu" and not cpu_has_amx():
        if int8_available(device) and (hidden_size >= INT8_FROM_HIDDEN or int8_compiled()):
            return "int8"
        return "fp32"
    return resolved


def _room(buffer: torch.Tensor, step: int) -> torch.Tensor:
    """``buffer`` (samples, steps, ...) with a column for ``step``: doubled when full, so growth costs O(length) in all."""
    if step < buffer.shape[1]:
        return buffer
    grown = buffer.new_zeros(buffer.shape[0], 2 * buffer.shape[1], *buffer.shape[2:])
    grown[:, : buffer.shape[1]] = buffer
    return grown


class _Book:
    """What every sample of a request has drawn so far, by step: ids and, when asked, log-probabilities.

    Rows of the batch come and go as samples finish; ``alive`` maps each row to its sample.
    """

    def __init__(self, vocab: Vocab, samples: int, length: int, logprobs: int | None):
        self.vocab = vocab
        first = min(length, 256)
        self.ids = torch.zeros(samples, first, dtype=torch.int32)
        self.top_k = logprobs
        if logprobs is not None:
            self.chosen = torch.zeros(samples, first)
            self.top_values = torch.zeros(samples, first, logprobs)
            self.top_ids = torch.zeros(samples, first, logprobs, dtype=torch.int32)

    def write(self, alive: torch.Tensor, step: int, ids: torch.Tensor, logprobs: torch.Tensor | None) -> None:
        self.ids = _room(self.ids, step)
        self.ids[alive, step] = ids.to(torch.int32)
        if logprobs is None or self.top_k is None:
            return
        self.chosen = _room(self.chosen, step)
        self.chosen[alive, step] = logprobs.gather(1, ids.unsqueeze(1)).squeeze(1)
        if self.top_k:
            self.top_values, self.top_ids = _room(self.top_values, step), _room(self.top_ids, step)
            values, indices = torch.topk(logprobs, self.top_k, dim=-1)
            self.top_values[alive, step] = values
            self.top_ids[alive, step] = indices.to(torch.int32)

    def text(self, sample: int, start: int, end: int) -> str:
        return self.vocab.decode(self.ids[sample, start:end].numpy())

    def logprobs(self, sample: int, start: int, end: int) -> tuple[CharLogprob, ...] | None:
        if self.top_k is None:
            return None
        chars = self.vocab.chars
        ids = self.ids[sample, start:end].tolist()
        chosen = self.chosen[sample, start:end].tolist()
        top_values = self.top_values[sample, start:end].tolist() if self.top_k else [[]] * len(ids)
        top_ids = self.top_ids[sample, start:end].tolist() if self.top_k else [[]] * len(ids)
        return tuple(
            CharLogprob(chars[i], value, tuple((chars[t], v) for t, v in zip(tids, tvalues)))
            for i, value, tids, tvalues in zip(ids, chosen, top_ids, top_values)
        )


class Generator:
    """Primes a model on text and streams characters from it.

    Priming runs the model's own forward over the whole prime (one fused
    sequence kernel); the characters after the first come from a fused
    one-step LSTM (:class:`LSTMStepper`), several times faster than calling
    the model once per character; GRU and vanilla-RNN models step through the
    model's forward (:class:`ModelStepper`). ``precision`` "fp32" (the
    default) holds states and logits to the model's own forward within fp32
    rounding, which exact continuations rely on; "bf16" runs the matrix
    products with bf16 weights, about twice as fast again; "int8" runs them
    with int8 weights (one scale per row) through fbgemm, which pays on CPUs
    without AMX; "auto" picks int8 on CPUs without AMX for layers of 256 units and
    up (fp32 below), and bf16 on CPUs with AMX (``charlstm sample`` does this by default; see
    :func:`sampling_precision`). The prime is read in fp32 unless bf16 is chosen.
    The fast step copies the weights when first used: make a new Generator after
    changing the model.
    """

    def __init__(
        self,
        model: CharLSTM,
        vocab: Vocab,
        device: torch.device | str | None = None,
        precision: SamplingPrecision = "fp32",
    ):
        self.model = model
        self.vocab = vocab
        self.device = torch.device(device) if device is not None else model.head.weight.device
        self.precision = sampling_precision(precision, self.device, model.config.hidden_size)
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

    def check_request(self, request: GenerationRequest) -> None:
        """Refuse what this model cannot honour (a top-k or logprobs wider than its vocabulary) before any work."""
        size = len(self.vocab)
        top_k = request.sampling.top_k
        if top_k is not None and top_k > size:
            raise CharlstmError(f"top-k {top_k} is larger than the vocabulary ({size} characters); use at most {size}")
        if request.logprobs is not None and request.logprobs > size:
            raise CharlstmError(f"logprobs {request.logprobs} is larger than the vocabulary ({size} characters); use at most {size}")

    def complete(self, request: GenerationRequest, clock: Callable[[], float] = time.perf_counter) -> list[SampleResult]:
        """Every sample of ``request``, finished, in sample order."""
        results = [event for event in self.run(request, deltas=False, clock=clock) if isinstance(event, SampleResult)]
        return sorted(results, key=lambda result: result.index)

    @torch.inference_mode()
    def run(
        self,
        request: GenerationRequest,
        state: State | None = None,
        deltas: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> Iterator[TextDelta | SampleResult]:
        """Generate ``request``: :class:`TextDelta` pieces as text becomes final, and each sample's
        :class:`SampleResult` when it ends (samples end on their own; the rest go on).

        The batch shrinks as samples finish: their rows leave the stepper, so a finished sample costs
        nothing. Text that might be the beginning of a left-out stop string is held back until it is
        not, so the deltas of a sample always add up to its result's text. ``deltas=False`` skips
        them (for callers that want only the results). ``state`` continues from a state instead of
        priming from a fresh one.
        """
        self.check_request(request)
        if request.beam is not None:
            result = self._beam_search(request, state, clock)
            if deltas and result.text:
                yield TextDelta(0, result.text, result.logprobs)
            yield result
            return
        started = clock()
        seed = request.seed if request.seed is not None else secrets.randbelow(2**63)
        samples, vocab = request.num_samples, self.vocab
        rng = torch.Generator(device="cpu").manual_seed(seed)
        # The unknown symbol stands for characters too rare to learn: never write it.
        unknown_id = vocab.unknown_id if len(vocab) > 1 else None
        draw = InPlaceDraw(request.sampling, samples, len(vocab), rng, never=unknown_id)
        prime_chars = len(self.encode_prime(request.prime, request.unknown))
        logits, state = self.prime(request.prime, samples, request.unknown, state)
        prime_seconds = clock() - started
        book = _Book(vocab, samples, request.length, request.logprobs)
        matcher = StopMatcher(request.stop, vocab)
        stop_states = matcher.start(samples)
        hold = matcher.depth if request.holds_back else None
        newline = vocab.chars.index("\n") if request.lines is not None and "\n" in vocab else None
        lines_left = torch.full((samples,), request.lines or 0)
        alive = torch.arange(samples)
        shown = [0] * samples  # characters of each sample already handed out as deltas
        stepper: Stepper | None = None
        ids = torch.zeros(samples, dtype=torch.long)  # what the last step drew, fed by the next
        try:
            for step in range(request.length):
                if step:
                    if stepper is None:  # built only once a second character is needed
                        stepper = self._take_stepper(samples)
                        stepper.load_state(state)
                    logits = stepper.step(ids.to(self.device))
                logits = logits.cpu()
                logprobs = F.log_softmax(logits, dim=-1) if request.logprobs is not None else None
                ids = draw(logits, alive)
                book.write(alive, step, ids, logprobs)
                ends = torch.zeros(len(ids), dtype=torch.bool) if step + 1 < request.length else torch.ones(len(ids), dtype=torch.bool)
                matched = None
                if matcher.active:
                    stop_states = matcher.advance(stop_states, ids)
                    matched = matcher.matched[stop_states]
                    ends |= matched > 0
                if newline is not None:
                    lines_left -= (ids == newline).long()
                    ends |= lines_left == 0
                if deltas:
                    held = hold[stop_states] if hold is not None else None
                    for row, sample in enumerate(alive.tolist()):
                        safe = step + 1 - (int(held[row]) if held is not None else 0)
                        if safe > shown[sample] and not ends[row]:
                            yield TextDelta(sample, book.text(sample, shown[sample], safe), book.logprobs(sample, shown[sample], safe))
                            shown[sample] = safe
                if not bool(ends.any()):
                    continue
                now = clock()
                for row in ends.nonzero().squeeze(1).tolist():
                    sample = int(alive[row])
                    reason: FinishReason = "length"
                    cut, stop_text = 0, None
                    if matched is not None and matched[row] > 0:
                        reason, cut = "stop", int(matched[row])
                        stop_text = book.text(sample, step + 1 - cut, step + 1)
                    elif newline is not None and lines_left[row] == 0:
                        reason, cut = "lines", 1
                    end = step + 1 - (0 if request.keep_stop else cut)
                    if deltas and end > shown[sample]:
                        yield TextDelta(sample, book.text(sample, shown[sample], end), book.logprobs(sample, shown[sample], end))
                    yield SampleResult(sample, book.text(sample, 0, end), reason, step + 1, seed, prime_chars,
                                       prime_seconds, now - started, book.logprobs(sample, 0, end), stop_text)
                going = (~ends).nonzero().squeeze(1)
                if len(going) == 0:
                    break
                alive, ids = alive[going], ids[going]
                stop_states, lines_left = stop_states[going], lines_left[going]
                if stepper is None:
                    state = tuple(part.index_select(1, going.to(part.device)) for part in state)
                    logits = logits[going]
                else:
                    stepper.keep_rows(going.to(self.device))
        finally:
            if stepper is not None:
                self._release_stepper(stepper)

    def _beam_search(self, request: GenerationRequest, state: State | None, clock: Callable[[], float]) -> SampleResult:
        """The most probable continuation under the model, searched ``request.beam`` wide: the opposite of sampling.

        Each step extends every live hypothesis by every character and keeps the ``beam`` best by
        total log-probability. One that reaches a stop string or the line count is set aside as
        finished (the beam narrows by one); the search ends when no live one can beat the best
        finished one (a log-probability only falls as text grows) or at ``length``. The answer is
        the finished text of highest total log-probability, so a short text that ends on a stop
        can beat a long one. Width 1 is greedy decoding, stops included.
        """
        started = clock()
        width, vocab, size = request.beam or 1, self.vocab, len(self.vocab)
        prime_chars = len(self.encode_prime(request.prime, request.unknown))
        state_before = state
        logits, state = self.prime(request.prime, 1, request.unknown, state)
        prime_seconds = clock() - started
        matcher = StopMatcher(request.stop, vocab)
        newline = vocab.chars.index("\n") if request.lines is not None and "\n" in vocab else None
        never = vocab.unknown_id if size > 1 else None
        scores = torch.zeros(1)
        stop_states, lines_left = matcher.start(1), torch.full((1,), request.lines or 0)
        # Per step, over that step's candidates: the row each extends, the character it adds; and which were kept.
        parents: list[torch.Tensor] = []
        chars: list[torch.Tensor] = []
        kept: list[torch.Tensor] = []
        finished: list[tuple[float, int, int, FinishReason, int]] = []  # (score, step, candidate, reason, cut)
        stepper: Stepper | None = None
        rows = ids = torch.zeros(1, dtype=torch.long)
        try:
            for step in range(request.length):
                if step:
                    if stepper is None:
                        stepper = self._take_stepper(width)
                        stepper.load_state(tuple(part.index_select(1, rows.to(part.device)) for part in state))
                    else:
                        stepper.keep_rows(rows.to(self.device))
                    logits = stepper.step(ids.to(self.device))
                logprobs = F.log_softmax(logits.cpu().float(), dim=-1)
                if never is not None:
                    logprobs[:, never] = float("-inf")
                totals = (scores.unsqueeze(1) + logprobs).flatten()
                best, flat = torch.topk(totals, min(width, totals.numel()))
                parent, candidate_ids = flat // size, flat % size
                candidate_states = matcher.advance(stop_states[parent], candidate_ids)
                candidate_lines = lines_left[parent]
                if newline is not None:
                    candidate_lines = candidate_lines - (candidate_ids == newline).long()
                stopping = matcher.matched[candidate_states] > 0
                ending = stopping | (candidate_lines == 0) if newline is not None else stopping
                parents.append(parent)
                chars.append(candidate_ids)
                for index in ending.nonzero().squeeze(1).tolist():
                    reason: FinishReason = "stop" if stopping[index] else "lines"
                    cut = int(matcher.matched[candidate_states[index]]) if reason == "stop" else 1
                    finished.append((float(best[index]), step, index, reason, cut))
                going = (~ending).nonzero().squeeze(1)[:width]
                best_finished = max((entry[0] for entry in finished), default=float("-inf"))
                if len(going) == 0 or float(best[going[0]]) <= best_finished:
                    break  # nothing still growing can beat what has finished
                if step + 1 == request.length:
                    finished.append((float(best[going[0]]), step, int(going[0]), "length", 0))
                    break
                kept.append(going)
                rows, ids, scores = parent[going], candidate_ids[going], best[going]
                stop_states, lines_left = candidate_states[going], candidate_lines[going]
        finally:
            if stepper is not None:
                self._release_stepper(stepper)
        _, step, candidate, reason, cut = max(finished, key=lambda entry: entry[0])
        path: list[int] = []
        for back in range(step, -1, -1):  # from the chosen candidate back to the first step
            path.append(int(chars[back][candidate]))
            if back:
                candidate = int(kept[back - 1][parents[back][candidate]])
        path.reverse()
        end = len(path) - (0 if request.keep_stop else cut)
        stop_text = vocab.decode(path[len(path) - cut :]) if reason == "stop" else None
        logprobs_out = None
        if request.logprobs is not None:
            logprobs_out = self.continuation_logprobs(request.prime, vocab.decode(path[:end]), request.logprobs,
                                                      state_before, request.unknown)
        return SampleResult(0, vocab.decode(path[:end]), reason, len(path), request.seed or 0, prime_chars,
                            prime_seconds, clock() - started, logprobs_out, stop_text)

    @torch.inference_mode()
    def continuation_logprobs(self, prime: str, text: str, top: int, state: State | None = None,
                              unknown: UnknownPolicy = "error") -> tuple[CharLogprob, ...]:
        """How likely the model finds each character of ``text`` after ``prime`` (from ``state``): one forward pass."""
        ids = self.encode_prime(text)
        book = _Book(self.vocab, 1, max(1, len(ids)), top)
        if len(ids) == 0:
            return ()
        first, after_prime = self.prime(prime, 1, unknown, state)
        rows = [first.cpu()]
        if len(ids) > 1:
            with autocast(self.device, self.precision):
                rest, _ = self.model(ids[:-1].unsqueeze(0).to(self.device), after_prime)
            rows.append(rest[0].float().cpu())
        logprobs = F.log_softmax(torch.cat(rows), dim=-1)
        for step in range(len(ids)):
            book.write(torch.zeros(1, dtype=torch.long), step, ids[step : step + 1], logprobs[step : step + 1])
        return book.logprobs(0, 0, len(ids)) or ()

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
