"""Errors a user can act on.

Anything raised as a :class:`CharlstmError` is the user's to fix (a bad file, an
out-of-range option, a checkpoint that does not load). The CLI prints its message
as one line on stderr and exits non-zero; everything else is a bug and keeps its
traceback behind ``--debug``.
"""


class CharlstmError(Exception):
    """A problem with the user's input, told in one line that says what to do."""


class CorpusError(CharlstmError):
    """The training or evaluation text cannot be used as given."""


class CheckpointError(CharlstmError):
    """A checkpoint is missing, damaged, or incompatible."""


def name_chars(chars: list[str], limit: int = 10) -> str:
    """Characters as a user can read them in one line: quoted, escaped, the first few only."""
    shown = ", ".join(repr(c) for c in chars[:limit])
    return shown + (f" and {len(chars) - limit} more" if len(chars) > limit else "")


class UnknownCharactersError(CharlstmError):
    """Text contains characters the model's vocabulary has never seen."""

    def __init__(self, unknown: list[str]):
        self.unknown = unknown
        super().__init__(
            f"text has {len(unknown)} character(s) the model never saw: {name_chars(unknown)}; "
            "use --unknown skip or --unknown replace, or remove them"
        )
