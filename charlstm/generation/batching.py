"""Many generation requests on one model at once, stepped together as one batch.

A server answers many people at once. Stepping each request on its own costs a
matrix product per request per character, and with a model of any size those
products read the whole weight matrix every time: at batch 32 the fused step
(:class:`~charlstm.model.stepper.LSTMStepper`, the one ``charlstm sample``
uses) costs little more than at batch 1. So one worker thread per model owns a
stepper whose rows are the samples of every live request; each step feeds all
of them, and each request then draws its own characters from its rows of the
logits with its own options and its own random generator (the draw
``charlstm sample`` makes, :class:`InPlaceDraw`), so a seeded request alone on
the server gets exactly the text ``charlstm sample --seed`` prints.

Requests join and leave between steps; a request that is cancelled (its
client went away, or pressed stop) leaves at the next step, so no work is done
for nobody. The batch is padded to a power of two, so at most a handful of
stepper sizes (each a copy of the weights) ever exist.

The thread hands characters to whoever waits for them through a
:class:`Ticket`: it buffers what was drawn and calls ``wake`` only when the
buffer goes from empty to non-empty, so a fast model does not flood an event
loop with one call per character.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

from ..base.errors import CharlstmError
from ..base.runtime import ThreadGovernor
from ..data.corpus import UnknownPolicy
from ..model.network import State
from ..model.stepper import LSTMStepper, ModelStepper, Stepper, forward_last
from .generator import PRIME_CHUNK, Generator, InPlaceDraw, SamplingOptions

FinishReason = Literal["length", "stop", "cancelled"]

# Primes longer than this (in characters) are read beside the stepping instead of between two steps.
LONG_PRIME = 256


@dataclass(frozen=True)
class SampleRequest:
    """One request: ``num_samples`` continuations of ``prime``, each at most ``length`` characters.

    A continuation ends early, with finish reason ``stop``, once it ends with one of
    ``stop``; the stop string itself is not part of its text. ``logprobs`` K asks for
    each drawn character's log-probability under the model (in nats, before
    temperature) and the K most likely characters at that step (K may be 0).
    """

    prime: str = ""
    length: int = 500
    options: SamplingOptions = SamplingOptions()
    num_samples: int = 1
    seed: int | None = None
    unknown: UnknownPolicy = "error"
    stop: tuple[str, ...] = ()
    logprobs: int | None = None

    def __post_init__(self) -> None:
        if self.length < 1:
            raise CharlstmError(f"length must be at least 1, not {self.length}")
        if self.num_samples < 1:
            raise CharlstmError(f"the number of samples must be at least 1, not {self.num_samples}")
        if any(not stop for stop in self.stop):
            raise CharlstmError("a stop string cannot be empty")
        if self.logprobs is not None and self.logprobs < 0:
            raise CharlstmError(f"logprobs must be at least 0, not {self.logprobs}")


@dataclass(frozen=True)
class CharLogprob:
    """A drawn character, its log-probability (nats) and the most likely characters at that step."""

    char: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass
class Drawn:
    """The characters one sample released since the waiter last looked (stop-string prefixes held back)."""

    index: int
    text: str
    logprobs: list[CharLogprob] = field(default_factory=list)


@dataclass
class SampleOutcome:
    index: int
    text: str
    finish_reason: FinishReason
    chars: int  # characters in ``text`` (a stop string that ended it is not counted)
    logprobs: list[CharLogprob] = field(default_factory=list)


@dataclass
class Outcome:
    """How a request ended: every sample's whole text, why it ended, and the request's timing."""

    samples: list[SampleOutcome]
    prime_chars: int
    seconds: float
    first_char_seconds: float | None

    @property
    def generated_chars(self) -> int:
        return sum(sample.chars for sample in self.samples)


class _SampleText:
    """One continuation as it grows: releases text only once no stop string could still begin in it."""

    def __init__(self, index: int, stops: tuple[str, ...], logprobs: bool):
        self.index = index
        self.stops = stops
        self.chars: list[str] = []
        self.logprobs: list[CharLogprob] | None = [] if logprobs else None
        self.released = 0
        self.finish: FinishReason | None = None
        self.tail = ""  # the last characters, as long as the longest stop string
        self.tail_size = max((len(stop) for stop in stops), default=0)

    def add(self, char: str, logprob: CharLogprob | None) -> None:
        self.chars.append(char)
        if self.logprobs is not None and logprob is not None:
            self.logprobs.append(logprob)
        if not self.stops:
            return
        self.tail = (self.tail + char)[-self.tail_size :]
        for stop in self.stops:
            if self.tail.endswith(stop):
                del self.chars[len(self.chars) - len(stop) :]
                if self.logprobs is not None:
                    del self.logprobs[len(self.chars) :]
                self.finish = "stop"
                return

    def _held_back(self) -> int:
        """How many of the last characters might be the start of a stop string."""
        held = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.tail)), held, -1):
                if self.tail.endswith(stop[:size]):
                    held = size
                    break
        return held

    def release(self) -> Drawn | None:
        end = len(self.chars) if self.finish is not None else len(self.chars) - self._held_back()
        if end <= self.released:
            return None
        drawn = Drawn(self.index, "".join(self.chars[self.released : end]),
                      self.logprobs[self.released : end] if self.logprobs is not None else [])
        self.released = end
        return drawn

    def outcome(self) -> SampleOutcome:
        return SampleOutcome(self.index, "".join(self.chars), self.finish or "length", len(self.chars),
                             self.logprobs or [])


class Ticket:
    """The waiting side of one request: what was drawn so far, how it ended, and a way to stop it."""

    def __init__(self, request: SampleRequest, wake: Callable[[], None], submitted: float = 0.0):
        self.request = request
        self.submitted = submitted  # when it was queued: its timing includes the wait for a place
        self._wake = wake
        self._lock = threading.Lock()
        self._drawn: list[Drawn] = []
        self._notified = False
        self.outcome: Outcome | None = None
        self.error: CharlstmError | None = None
        self.cancelled = threading.Event()
        self.steps = 0  # characters drawn per sample so far (the worker's count, for tests and stats)

    @property
    def done(self) -> bool:
        return self.outcome is not None or self.error is not None

    def cancel(self) -> None:
        """Stop drawing for this request at the next step (nothing happens if it already ended)."""
        self.cancelled.set()

    def take(self) -> list[Drawn]:
        """What was released since the last call; check :attr:`outcome` / :attr:`error` after it."""
        with self._lock:
            drawn, self._drawn = self._drawn, []
            self._notified = False
        return drawn

    def _post(self, drawn: list[Drawn] | None = None, outcome: Outcome | None = None,
              error: CharlstmError | None = None) -> None:
        with self._lock:
            self._drawn.extend(drawn or [])
            if outcome is not None:
                self.outcome = outcome
            if error is not None:
                self.error = error
            notify = not self._notified
            self._notified = True
        if notify:
            self._wake()


class _Live:
    """A request the worker is stepping: its ticket, rows, draw and texts."""

    def __init__(self, ticket: Ticket, vocab_size: int, never: int | None):
        request = ticket.request
        self.ticket = ticket
        self.request = request
        rng = torch.Generator(device="cpu")
        rng.manual_seed(request.seed if request.seed is not None else int(torch.seed() % (2**63)))
        self.draw = InPlaceDraw(request.options, request.num_samples, vocab_size, rng, never=never)
        self.texts = [_SampleText(i, request.stop, request.logprobs is not None) for i in range(request.num_samples)]
        self.drawn = 0
        self.started = ticket.submitted
        self.first_char: float | None = None
        self.ids = torch.zeros(request.num_samples, dtype=torch.long)
        self.fresh_state: State | None = None  # the state after its prime, until it joins the batch
        self.row = 0  # its first row in the batch
        # Sampling from the whole distribution: its rows draw with the other such requests' rows, in one pass.
        self.racing = self.draw.plain and not request.options.greedy

    @property
    def finished(self) -> bool:
        return self.drawn >= self.request.length or all(text.finish is not None for text in self.texts)


class BatchedSampler:
    """Steps every live request of one model together, in one worker thread.

    ``max_rows`` caps the samples stepped at once; requests beyond it wait in
    line, in the order they came.
    """

    def __init__(self, generator: Generator, max_rows: int = 64, clock: Callable[[], float] = time.perf_counter,
                 threads: ThreadGovernor | None = None):
        self.generator = generator
        self.threads = threads
        self.vocab = generator.vocab
        self.max_rows = max_rows
        self.clock = clock
        self._inbox: queue.Queue[Ticket | None] = queue.Queue()
        self._waiting: list[Ticket] = []
        self._live: list[_Live] = []
        self._steppers: dict[int, Stepper] = {}
        self._stepper: Stepper | None = None
        self._ids = torch.zeros(0, dtype=torch.long)  # every row's last character, fed at the next step
        self._temperatures = torch.ones(0, 1)  # each row's temperature, for the draw made together
        self._scores = torch.empty(0)
        self._noise = torch.empty(0)
        self._racing: list[_Live] = []  # the requests whose rows draw together
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="charlstm-prime")
        self._reading: list[tuple[Ticket, Future[tuple[torch.Tensor, State]]]] = []  # long primes being read
        self._closed = False
        self.steps_taken = 0  # batched steps since the start: how busy the worker has been
        self._thread = threading.Thread(target=self._run, name="charlstm-sampler", daemon=True)
        self._thread.start()

    @property
    def live_requests(self) -> int:
        """Requests being stepped or waiting for a place (what a health check reports)."""
        return len(self._live) + len(self._reading) + len(self._waiting) + self._inbox.qsize()

    def submit(self, request: SampleRequest, wake: Callable[[], None] = lambda: None) -> Ticket:
        """Queue ``request``; ``wake`` is called (from the worker thread) when there is something to take."""
        if self._closed:
            raise CharlstmError("the sampler is shut down")
        if request.num_samples > self.max_rows:
            raise CharlstmError(f"at most {self.max_rows} samples can be drawn at once, not {request.num_samples}")
        ticket = Ticket(request, wake, self.clock())
        self._inbox.put(ticket)
        return ticket

    def close(self) -> None:
        """Cancel everything and stop the worker."""
        self._closed = True
        self._inbox.put(None)
        self._thread.join(timeout=10)
        self._reader.shutdown(wait=False, cancel_futures=True)

    # -- the worker ---------------------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while not self._closed:
                try:
                    self._collect(block=not self._live)
                    changed = self._admit()
                    changed |= self._retire()
                    if changed:
                        self._rebatch()
                    if self._live:
                        if self.threads is not None:
                            self.threads.tick()
                        self._step()
                except Exception as bug:  # noqa: BLE001 - a bug must end these requests, not hang them
                    self._fail_all(CharlstmError(f"generation failed ({type(bug).__name__}: {bug}); "
                                                 "this is a bug in charlstm, please report it"))
        self._collect(block=False)
        self._fail_all(CharlstmError("the server is shutting down"))

    def _fail_all(self, error: CharlstmError) -> None:
        for ticket in [live.ticket for live in self._live] + [ticket for ticket, _ in self._reading] + self._waiting:
            ticket._post(error=error)
        self._live, self._reading, self._waiting, self._stepper = [], [], [], None

    def _collect(self, block: bool) -> None:
        try:
            ticket = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            while True:
                if ticket is not None:
                    self._waiting.append(ticket)
                ticket = self._inbox.get_nowait()
        except queue.Empty:
            pass
        for ticket in [t for t in self._waiting if t.cancelled.is_set()]:
            self._waiting.remove(ticket)
            ticket._post(outcome=Outcome([], len(ticket.request.prime), 0.0, None))

    def _rows(self) -> int:
        return sum(live.request.num_samples for live in self._live) + sum(
            ticket.request.num_samples for ticket, _ in self._reading)

    def _admit(self) -> bool:
        """Start the waiting requests there is room for, and let in those whose long primes were read.

        Short primes are read here, together, in one forward per distinct length; a prime longer
        than :data:`LONG_PRIME` would hold every stream up while it is read, so the reader thread
        reads it beside the stepping (torch lets go of the GIL while it computes).
        """
        admitted = False
        for ticket, reading in [entry for entry in self._reading if entry[1].done()]:
            self._reading.remove((ticket, reading))
            try:
                logits, state = reading.result()
            except Exception as bug:  # noqa: BLE001 - that request fails; the others go on
                ticket._post(error=CharlstmError(f"reading the prompt failed ({type(bug).__name__}: {bug})"))
                continue
            self._make_live(ticket, logits, state)
            admitted = True
        taken: list[Ticket] = []
        rows = self._rows()
        while self._waiting and rows + self._waiting[0].request.num_samples <= self.max_rows:
            taken.append(self._waiting.pop(0))
            rows += taken[-1].request.num_samples
        short: list[tuple[Ticket, torch.Tensor]] = []
        for ticket in taken:
            try:
                ids = self.generator.encode_prime(ticket.request.prime, ticket.request.unknown)
            except CharlstmError as problem:
                ticket._post(error=problem)
                continue
            ids = torch.cat([self.generator.encode_prime(self.generator.lead_in), ids])
            if len(ids) > LONG_PRIME:
                reading = self._reader.submit(self._prime_alone, ids)
                reading.add_done_callback(lambda _: self._inbox.put(None))  # wake the worker if it waits
                self._reading.append((ticket, reading))
            else:
                short.append((ticket, ids))
        for (ticket, _), (logits, state) in zip(short, self._prime_together([ids for _, ids in short])):
            self._make_live(ticket, logits, state)
        return admitted or bool(short)

    def _make_live(self, ticket: Ticket, logits: torch.Tensor, state: State) -> None:
        """A primed request joins the batch (at the next rebatch), with its first characters drawn."""
        samples = ticket.request.num_samples
        never = self.vocab.unknown_id if len(self.vocab) > 1 else None
        live = _Live(ticket, len(self.vocab), never)
        live.fresh_state = tuple(part.expand(-1, samples, -1).contiguous() for part in state)  # type: ignore[assignment]
        self._draw(live, logits.expand(samples, -1).contiguous())
        self._live.append(live)

    def _prime_alone(self, ids: torch.Tensor) -> tuple[torch.Tensor, State]:
        with torch.inference_mode():
            return self._prime_together([ids])[0]

    def _prime_together(self, primes: list[torch.Tensor]) -> list[tuple[torch.Tensor, State]]:
        """The logits (1, V) after each of ``primes`` and the state (one row) it leaves, all read at once.

        Rows read position by position in one batch, shortest first: the model's forward runs over
        columns [done, end) of every prime still going, carrying their states, and each prime whose
        length is ``end`` takes its logits there. One forward per distinct length instead of one per
        request, and each row's arithmetic is what :meth:`Generator.prime` does for it alone.
        """
        results: list[tuple[torch.Tensor, State] | None] = [None] * len(primes)
        going = sorted(range(len(primes)), key=lambda i: len(primes[i]))
        state: State | None = None
        done = 0
        device, model, precision = self.generator.device, self.generator.model, self.generator.precision
        while going:
            end = len(primes[going[0]])
            batch = torch.stack([primes[i][done:end] for i in going]).to(device)
            for piece in batch.split(max(1, PRIME_CHUNK // len(going)), dim=1):
                logits, state = forward_last(model, piece, state, precision)
            assert state is not None
            finished = [row for row, i in enumerate(going) if len(primes[i]) == end]
            for row in finished:
                results[going[row]] = (logits[row : row + 1], tuple(part[:, row : row + 1] for part in state))
            kept = [row for row in range(len(going)) if len(primes[going[row]]) > end]
            index = torch.tensor(kept, dtype=torch.long, device=device)
            state = tuple(part.index_select(1, index) for part in state)  # type: ignore[assignment]
            going = [going[row] for row in kept]
            done = end
        return results  # type: ignore[return-value]

    def _retire(self) -> bool:
        """Take out requests that ended or were cancelled, and tell their waiters."""
        kept, changed = [], False
        for live in self._live:
            if live.ticket.cancelled.is_set() or live.finished:
                cancelled = live.ticket.cancelled.is_set() and not live.finished
                for text in live.texts:
                    if text.finish is None:
                        text.finish = "cancelled" if cancelled else "length"
                drawn = [d for d in (text.release() for text in live.texts) if d is not None]
                seconds = self.clock() - live.started
                first = live.first_char - live.started if live.first_char is not None else None
                outcome = Outcome([text.outcome() for text in live.texts], len(live.request.prime), seconds, first)
                live.ticket._post(drawn, outcome=outcome)
                changed = True
            else:
                kept.append(live)
        self._live = kept
        return changed

    def _rebatch(self) -> None:
        """Gather the live requests' states and last characters into one stepper, padded to a power of two rows."""
        if not self._live:
            self._stepper = None
            return
        rows = self._rows()
        capacity = 1 << math.ceil(math.log2(rows))
        old = self._stepper.state() if self._stepper is not None else None
        parts: list[State] = []
        ids = torch.zeros(capacity, dtype=torch.long)
        temperatures = torch.ones(capacity, 1)
        row = 0
        for live in self._live:
            samples = live.request.num_samples
            if live.fresh_state is not None:
                parts.append(live.fresh_state)
                ids[row : row + samples] = live.ids
                live.fresh_state = None
            else:
                assert old is not None
                index = torch.arange(live.row, live.row + samples, device=old[0].device)
                parts.append(tuple(part.index_select(1, index) for part in old))  # type: ignore[arg-type]
                ids[row : row + samples] = self._ids[live.row : live.row + samples]
            if live.racing:
                temperatures[row : row + samples] = live.request.options.temperature
            live.row = row
            row += samples
        state = tuple(torch.cat([part[i] for part in parts], dim=1) for i in range(len(parts[0])))
        if capacity > rows:
            state = tuple(torch.cat([s, s.new_zeros(s.shape[0], capacity - rows, s.shape[2])], dim=1) for s in state)
        stepper = self._steppers.get(capacity)
        if stepper is None:
            model, precision = self.generator.model, self.generator.precision
            stepper = LSTMStepper(model, capacity, precision) if model.is_lstm else ModelStepper(model, capacity, precision)
            self._steppers[capacity] = stepper
        stepper.load_state(state)  # type: ignore[arg-type]
        self._stepper = stepper
        self._ids, self._temperatures = ids, temperatures
        self._scores = torch.empty(capacity, len(self.vocab))
        self._noise = torch.ones(capacity, len(self.vocab))
        self._racing = [live for live in self._live if live.racing]

    def _step(self) -> None:
        """Feed every live request's last characters and draw the next ones.

        Requests that sample from the whole distribution draw together, as :class:`InPlaceDraw`
        draws (the argmax of logits / T - log E), each row's noise E from its own request's random
        generator: the same characters, in one pass over the batch instead of one per request.
        Requests with a greedy or cut (top-k, top-p) draw use their own.
        """
        assert self._stepper is not None
        logits = self._stepper.step(self._ids.to(self.generator.device)).cpu()
        self.steps_taken += 1
        log_probs = {id(live): torch.log_softmax(logits[live.row : live.row + live.request.num_samples], dim=-1)
                     for live in self._live if live.request.logprobs is not None}
        never = self.vocab.unknown_id if len(self.vocab) > 1 else None
        if never is not None:
            logits[:, never] = float("-inf")
        if self._racing:
            for live in self._racing:
                self._noise[live.row : live.row + live.request.num_samples].exponential_(generator=live.draw.rng)
            torch.div(logits, self._temperatures, out=self._scores)
            self._scores.sub_(self._noise.log_())
            torch.argmax(self._scores, dim=-1, out=self._ids)
        for live in self._live:
            end = live.row + live.request.num_samples
            if not live.racing:
                self._ids[live.row : end] = live.draw(logits[live.row : end])
            self._accept(live, self._ids[live.row : end].tolist(), log_probs.get(id(live)))

    def _draw(self, live: _Live, logits: torch.Tensor) -> None:
        """A new request's first characters, from the logits after its prime."""
        log_probs = torch.log_softmax(logits.float(), dim=-1) if live.request.logprobs is not None else None
        live.ids.copy_(live.draw(logits))
        self._accept(live, live.ids.tolist(), log_probs)

    def _accept(self, live: _Live, ids: list[int], log_probs: torch.Tensor | None) -> None:
        """Add one drawn character to each sample of ``live`` and release what can be shown."""
        live.drawn += 1
        live.ticket.steps = live.drawn
        if live.first_char is None:
            live.first_char = self.clock()
        chars = self.vocab.chars
        k = live.request.logprobs
        drawn: list[Drawn] = []
        for row, (text, char_id) in enumerate(zip(live.texts, ids)):
            if text.finish is not None:
                continue
            entry = None
            if log_probs is not None:
                top: tuple[tuple[str, float], ...] = ()
                if k:
                    values, indices = torch.topk(log_probs[row], min(k, len(chars)))
                    top = tuple((chars[i], v) for i, v in zip(indices.tolist(), values.tolist()))
                entry = CharLogprob(chars[char_id], float(log_probs[row, char_id]), top)
            text.add(chars[char_id], entry)
            released = text.release()
            if released is not None:
                drawn.append(released)
        if drawn:
            live.ticket._post(drawn)
