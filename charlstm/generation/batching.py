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
the server gets exactly the text ``charlstm sample --seed`` prints. A request is a
:class:`GenerationRequest` and ends as :meth:`Generator.run` ends one: stop strings
(:class:`StopMatcher`, held back while they may still match), a line count, the
length bound, each sample's :class:`SampleResult`; and "cancelled" when its client
went away.

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
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import torch

from ..base.errors import CharlstmError
from ..base.runtime import ThreadGovernor
from ..model.network import State
from ..model.stepper import LSTMStepper, ModelStepper, Stepper, forward_last
from .controls import (
    CharLogprob,
    GenerationRequest,
    SampleResult,
    StopMatcher,
    TextDelta,
)
from .generator import PRIME_CHUNK, Generator, InPlaceDraw, race_noise

# A request whose client went away ends its samples with this reason (nobody reads it but the server's log).
CANCELLED = "cancelled"

# Primes longer than this (in characters) are read beside the stepping instead of between two steps.
LONG_PRIME = 256


@dataclass
class Outcome:
    """How a request ended: every sample's :class:`SampleResult` (in sample order) and the request's timing.

    A cancelled request's samples end with finish reason ``"cancelled"``.
    """

    samples: list[SampleResult]
    prime_chars: int
    seconds: float
    first_char_seconds: float | None

    @property
    def generated_chars(self) -> int:
        return sum(sample.characters for sample in self.samples)


class _SampleText:
    """One sample as it grows: its characters (and log-probabilities), what was handed out, how it ended."""

    def __init__(self, index: int, logprobs: bool, lines: int | None):
        self.index = index
        self.chars: list[str] = []
        self.logprobs: list[CharLogprob] | None = [] if logprobs else None
        self.shown = 0
        self.end: int | None = None  # where its text ends, once it has ended
        self.finish: str | None = None
        self.stop: str | None = None
        self.lines_left = lines

    def add(self, char: str, logprob: CharLogprob | None) -> None:
        self.chars.append(char)
        if self.logprobs is not None and logprob is not None:
            self.logprobs.append(logprob)

    def finish_with(self, reason: str, cut: int, keep: bool) -> None:
        """End here; the last ``cut`` characters (a stop string, the last newline) are left out unless ``keep``."""
        self.finish = reason
        if reason == "stop":
            self.stop = "".join(self.chars[len(self.chars) - cut :])
        self.end = len(self.chars) - (0 if keep else cut)

    def release(self, held: int = 0) -> TextDelta | None:
        """The text that became final since the last call; ``held`` characters might still start a stop string."""
        end = self.end if self.end is not None else len(self.chars) - held
        if end <= self.shown:
            return None
        logprobs = tuple(self.logprobs[self.shown : end]) if self.logprobs is not None else None
        delta = TextDelta(self.index, "".join(self.chars[self.shown : end]), logprobs)
        self.shown = end
        return delta

    def result(self, seed: int, prime_chars: int, prime_seconds: float, seconds: float) -> SampleResult:
        end = self.end if self.end is not None else len(self.chars)
        logprobs = tuple(self.logprobs[:end]) if self.logprobs is not None else None
        return SampleResult(self.index, "".join(self.chars[:end]), self.finish or "length",  # type: ignore[arg-type]
                            len(self.chars), seed, prime_chars, prime_seconds, seconds, logprobs, self.stop)


class Ticket:
    """The waiting side of one request: what was drawn so far, how it ended, and a way to stop it."""

    def __init__(self, request: GenerationRequest, wake: Callable[[], None], submitted: float = 0.0):
        self.request = request
        self.submitted = submitted  # when it was queued: its timing includes the wait for a place
        self._wake = wake
        self._lock = threading.Lock()
        self._drawn: list[TextDelta] = []
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

    def take(self) -> list[TextDelta]:
        """What was released since the last call; check :attr:`outcome` / :attr:`error` after it."""
        with self._lock:
            drawn, self._drawn = self._drawn, []
            self._notified = False
        return drawn

    def _post(self, drawn: list[TextDelta] | None = None, outcome: Outcome | None = None,
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

    def __init__(self, ticket: Ticket, generator: Generator, prime_seconds: float):
        request = ticket.request
        vocab = generator.vocab
        self.ticket = ticket
        self.request = request
        self.seed = request.seed if request.seed is not None else secrets.randbelow(2**63)
        rng = torch.Generator(device="cpu").manual_seed(self.seed)
        # The unknown symbol stands for characters too rare to learn: never write it.
        never = vocab.unknown_id if len(vocab) > 1 else None
        self.draw = InPlaceDraw(request.sampling, request.num_samples, len(vocab), rng, never=never)
        self.texts = [_SampleText(i, request.logprobs is not None, request.lines) for i in range(request.num_samples)]
        self.stops = StopMatcher(request.stop, vocab)
        self.stop_states = self.stops.start(request.num_samples)
        self.prime_chars = len(generator.encode_prime(request.prime, request.unknown))
        self.prime_seconds = prime_seconds
        self.drawn = 0
        self.started = ticket.submitted
        self.first_char: float | None = None
        self.ids = torch.zeros(request.num_samples, dtype=torch.long)
        self.fresh_state: State | None = None  # the state after its prime, until it joins the batch
        self.row = 0  # its first row in the batch
        # Sampling from the whole distribution: its rows draw with the other such requests' rows, in one pass.
        self.racing = request.sampling.plain and not request.sampling.greedy

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

    def submit(self, request: GenerationRequest, wake: Callable[[], None] = lambda: None) -> Ticket:
        """Queue ``request`` (refused at once if the model cannot honour it); ``wake`` is called (from the
        worker thread) when there is something to take."""
        if self._closed:
            raise CharlstmError("the sampler is shut down")
        self.generator.check_request(request)
        if request.beam is not None:
            raise CharlstmError("beam search is not served; leave beam out")
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
        live = _Live(ticket, self.generator, self.clock() - ticket.submitted)
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
                        text.finish_with(CANCELLED if cancelled else "length", 0, True)
                drawn = [d for d in (text.release() for text in live.texts) if d is not None]
                seconds = self.clock() - live.started
                first = live.first_char - live.started if live.first_char is not None else None
                results = [text.result(live.seed, live.prime_chars, live.prime_seconds, seconds) for text in live.texts]
                outcome = Outcome(results, live.prime_chars, seconds, first)
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
                temperatures[row : row + samples] = live.request.sampling.temperature
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
        self._noise = torch.zeros(capacity, len(self.vocab))  # log E of every racing row, drawn each step
        self._racing = [live for live in self._live if live.racing]

    def _step(self) -> None:
        """Feed every live request's last characters and draw the next ones.

        Requests that sample from the whole distribution draw together, as :class:`InPlaceDraw`
        draws (the argmax of logits / T - log E), each row's noise log E from its own request's random
        generator (:func:`race_noise`): the same characters, in one pass over the batch instead of one
        per request.
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
                race_noise(self._noise[live.row : live.row + live.request.num_samples], live.draw.rng)
            torch.div(logits, self._temperatures, out=self._scores)
            self._scores.sub_(self._noise)
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
        """Add one drawn character to each sample of ``live``, end the samples that reached a stop
        string, their line count or their length, and hand out what became final."""
        live.drawn += 1
        live.ticket.steps = live.drawn
        if live.first_char is None:
            live.first_char = self.clock()
        request, chars = live.request, self.vocab.chars
        matched = held = None
        if live.stops.active:
            live.stop_states = live.stops.advance(live.stop_states, torch.tensor(ids))
            matched = live.stops.matched[live.stop_states].tolist()
            held = live.stops.depth[live.stop_states].tolist() if request.holds_back else None
        drawn: list[TextDelta] = []
        for row, (text, char_id) in enumerate(zip(live.texts, ids)):
            if text.finish is not None:
                continue
            entry = None
            if log_probs is not None:
                top: tuple[tuple[str, float], ...] = ()
                if request.logprobs:
                    values, indices = torch.topk(log_probs[row], request.logprobs)
                    top = tuple((chars[i], v) for i, v in zip(indices.tolist(), values.tolist()))
                entry = CharLogprob(chars[char_id], float(log_probs[row, char_id]), top)
            text.add(chars[char_id], entry)
            if matched is not None and matched[row] > 0:
                text.finish_with("stop", matched[row], request.keep_stop)
            elif text.lines_left is not None and chars[char_id] == "\n":
                text.lines_left -= 1
                if text.lines_left == 0:
                    text.finish_with("lines", 1, request.keep_stop)
            if text.finish is None and live.drawn >= request.length:
                text.finish_with("length", 0, True)
            released = text.release(held[row] if held is not None and text.finish is None else 0)
            if released is not None:
                drawn.append(released)
        if drawn:
            live.ticket._post(drawn)
