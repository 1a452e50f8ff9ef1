"""Synthetic corpora that need long-range memory, with the loss an ideal model gets.

Each generator marks the positions where memory matters (the recalled key, the
closing bracket, the end of a counted line) and computes, while it generates,
the probability its own process gave to each marked character. That gives two
yardsticks for a trained model scored on those positions: the ideal loss (the
model knows everything the process knew) and the chance loss (the model has
forgotten the long-range fact). The sidecar file ``<corpus>.synth.json`` carries
them, so ``charlstm eval --positions`` can score the same positions.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..base.errors import CharlstmError
from ..base.fsutil import carries_marker, check_output, write_output

RECALL_KEYS = "ABCDEFGH"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
BRACKETS = {"(": ")", "[": "]", "{": "}"}


@dataclass
class SynthCorpus:
    """Generated text, the positions that test memory, and how well they can be predicted."""

    kind: str
    text: str
    positions: list[int]
    ideal_loss: float
    chance_loss: float
    params: dict[str, int] = field(default_factory=dict)

    @property
    def description(self) -> str:
        return SYNTH_KINDS[self.kind].description

    def save(self, path: Path, force: bool = False) -> Path:
        """Write the text and its sidecar; returns the sidecar's path.

        Both destinations are checked before either is written, so a refusal leaves nothing half
        done. An earlier ``corpus synth`` output is replaced without ``--force``: its sidecar carries
        :data:`SIDECAR_MARKER` and the SHA-256 of the text it was written with, so an edited text is
        the user's and is kept.
        """
        data = self.text.encode("utf-8")
        sidecar = sidecar_path(path)
        meta = {"generator": SIDECAR_GENERATOR, "text_sha256": hashlib.sha256(data).hexdigest(), **asdict(self)}
        del meta["text"]
        meta["description"] = self.description
        check_output(path, force, ours=_our_text)
        check_output(sidecar, force, ours=carries_marker(SIDECAR_MARKER.encode()))
        write_output(path, data, force=True)
        write_output(sidecar, json.dumps(meta), force=True)
        return sidecar


SIDECAR_GENERATOR = "charlstm synth"
SIDECAR_MARKER = f'"generator": "{SIDECAR_GENERATOR}"'


def _our_text(path: Path) -> bool:
    """Whether ``path`` is the text an earlier ``corpus synth`` wrote, unchanged since."""
    sidecar = sidecar_path(path)
    if not carries_marker(SIDECAR_MARKER.encode())(sidecar):
        return False
    with open(sidecar, "rb") as handle:
        recorded = re.search(rb'"text_sha256": "([0-9a-f]{64})"', handle.read(4096))
    if recorded is None:
        return False
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() == recorded.group(1).decode()


def sidecar_path(corpus: Path) -> Path:
    return corpus.with_name(corpus.name + ".synth.json")


def load_positions(path: Path) -> tuple[list[int], dict[str, object]]:
    """Marked positions and metadata of a synthetic corpus, from its sidecar file (or the file itself)."""
    sidecar = path if path.name.endswith(".synth.json") else sidecar_path(path)
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        positions = [int(p) for p in meta["positions"]]
    except FileNotFoundError:
        raise CharlstmError(f"no positions file {sidecar}; make the corpus with 'charlstm corpus synth'") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise CharlstmError(f"{sidecar} is not a positions file written by 'charlstm corpus synth'") from None
    return positions, meta


def delayed_recall(size: int, distance: int, seed: int = 0) -> SynthCorpus:
    """Records ``^K<filler>=K``: a key, ``distance`` random letters, then the key again.

    The filler is uniform and independent of the key, so the only way to predict
    the recalled key is to have kept it in memory across the filler.
    """
    if distance < 1:
        raise CharlstmError("the recall distance must be at least 1")
    rng = random.Random(seed)
    pieces: list[str] = []
    positions: list[int] = []
    length = 0
    while length < size:
        key = rng.choice(RECALL_KEYS)
        filler = "".join(rng.choices(LETTERS, k=distance))
        record = f"^{key}{filler}={key}\n"
        positions.append(length + len(record) - 2)
        pieces.append(record)
        length += len(record)
    return SynthCorpus(
        kind="recall",
        text="".join(pieces),
        positions=positions,
        ideal_loss=0.0,
        chance_loss=math.log(len(RECALL_KEYS)),
        params={"distance": distance, "seed": seed},
    )


def nested_brackets(size: int, max_depth: int = 4, seed: int = 0) -> SynthCorpus:
    """Letters with nested (), [] and {} up to ``max_depth``: each closer must match its opener.

    At every step the process opens a random bracket with probability 0.15 (if
    not at the maximum depth), closes the innermost one with probability 0.15
    (if any is open), and otherwise writes a letter. Whether to close is a coin
    flip no model can foresee; which bracket closes is fixed by memory.
    """
    if max_depth < 1:
        raise CharlstmError("the bracket depth must be at least 1")
    rng = random.Random(seed)
    letters = LETTERS[:8]
    stack: list[str] = []
    chars: list[str] = []
    positions: list[int] = []
    ideal = 0.0
    chance = 0.0
    while len(chars) < size:
        p_open = 0.15 if len(stack) < max_depth else 0.0
        p_close = 0.15 if stack else 0.0
        roll = rng.random() * (p_open + p_close + 0.7)
        if roll < p_open:
            opener = rng.choice(list(BRACKETS))
            stack.append(opener)
            chars.append(opener)
        elif roll < p_open + p_close:
            probability = p_close / (p_open + p_close + 0.7)
            positions.append(len(chars))
            ideal -= math.log(probability)
            chance -= math.log(probability / len(BRACKETS))
            chars.append(BRACKETS[stack.pop()])
        else:
            chars.append(rng.choice(letters))
    return SynthCorpus(
        kind="brackets",
        text="".join(chars),
        positions=positions,
        ideal_loss=ideal / len(positions),
        chance_loss=chance / len(positions),
        params={"max_depth": max_depth, "seed": seed},
    )


def counted_lines(size: int, max_length: int = 30, seed: int = 0) -> SynthCorpus:
    """Lines ``NN:letters`` whose length NN is announced at the start: the newline must come on time.

    An ideal model counts and predicts each newline with certainty. One that
    cannot count knows only the length distribution: the chance that a line
    ends here given it has not ended yet (the hazard of the uniform length).
    """
    if not 1 <= max_length <= 99:
        raise CharlstmError("the maximum line length must be between 1 and 99")
    rng = random.Random(seed)
    pieces: list[str] = []
    positions: list[int] = []
    chance = 0.0
    length = 0
    while length < size:
        count = rng.randint(1, max_length)
        line = f"{count:02d}:" + "".join(rng.choices(LETTERS, k=count)) + "\n"
        positions.append(length + len(line) - 1)
        # Lengths are uniform on 1..max_length: having reached `count`, the line
        # ends now with probability 1 / (max_length - count + 1).
        chance += math.log(max_length - count + 1)
        pieces.append(line)
        length += len(line)
    return SynthCorpus(
        kind="counting",
        text="".join(pieces),
        positions=positions,
        ideal_loss=0.0,
        chance_loss=chance / len(positions),
        params={"max_length": max_length, "seed": seed},
    )


@dataclass(frozen=True)
class SynthKind:
    description: str
    make: Callable[[int, int, int], SynthCorpus]
    default_param: int


SYNTH_KINDS: dict[str, SynthKind] = {
    "recall": SynthKind("delayed recall: a key, N filler letters, the key again", delayed_recall, 50),
    "brackets": SynthKind("nested brackets of bounded depth: each closer matches its opener", nested_brackets, 4),
    "counting": SynthKind("lines whose length is announced at their start", counted_lines, 30),
}


def make_synth(kind: str, size: int, param: int | None = None, seed: int = 0) -> SynthCorpus:
    """Generate a corpus of ``kind``; ``param`` is the distance, depth or maximum line length."""
    if kind not in SYNTH_KINDS:
        raise CharlstmError(f"unknown synthetic corpus {kind!r}; choose one of {', '.join(SYNTH_KINDS)}")
    if size < 1:
        raise CharlstmError("the corpus size must be at least 1 character")
    spec = SYNTH_KINDS[kind]
    return spec.make(size, spec.default_param if param is None else param, seed)
