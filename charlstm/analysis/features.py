"""Named features of a text, one value per character, that `charlstm inspect --top` ranks LSTM units by
(Karpathy, Johnson and Fei-Fei 2015: cells that track quotes, brackets, line length). Plain text
functions, light enough for the command line to list their names without loading torch."""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np

# What `inspect` can show of a layer: the cell (tanh of the cell state) or one of its gates.
Signal = Literal["cell", "input", "forget", "output"]

SIGNALS: tuple[Signal, ...] = ("cell", "input", "forget", "output")
GATES: tuple[Signal, ...] = ("input", "forget", "output")

OPENING_QUOTES, CLOSING_QUOTES = "\u201c", "\u201d"
OPEN_BRACKETS, CLOSE_BRACKETS = "([{", ")]}"


def inside_quotes(text: str) -> np.ndarray:
    """1 while inside "double" or “curly” quotes, after reading each character (the opening
    quote counts as inside, the closing one as outside)."""
    values, inside = np.zeros(len(text)), False
    for index, char in enumerate(text):
        if char == '"':
            inside = not inside
        elif char in OPENING_QUOTES:
            inside = True
        elif char in CLOSING_QUOTES:
            inside = False
        values[index] = inside
    return values


def inside_brackets(text: str) -> np.ndarray:
    """1 while any (, [ or { is open; line breaks do not close them."""
    values, depth = np.zeros(len(text)), 0
    for index, char in enumerate(text):
        if char in OPEN_BRACKETS:
            depth += 1
        elif char in CLOSE_BRACKETS:
            depth = max(0, depth - 1)
        values[index] = depth > 0
    return values


def _position_since(text: str, is_break: Callable[[str], bool]) -> np.ndarray:
    values, position = np.zeros(len(text)), 0
    for index, char in enumerate(text):
        position = 0 if is_break(char) else position + 1
        values[index] = position
    return values


def line_position(text: str) -> np.ndarray:
    """Characters read since the last newline: what a cell that counts towards a line break tracks."""
    return _position_since(text, lambda char: char == "\n")


def word_position(text: str) -> np.ndarray:
    """Characters read since the last space or newline."""
    return _position_since(text, str.isspace)


def after_newline(text: str) -> np.ndarray:
    """1 right after a newline was read (where a new line, a speaker's name or an indent starts)."""
    return np.array([char == "\n" for char in text], dtype=float)


FEATURES: dict[str, Callable[[str], np.ndarray]] = {
    "in_quotes": inside_quotes,
    "in_brackets": inside_brackets,
    "line_position": line_position,
    "after_newline": after_newline,
    "word_position": word_position,
}
