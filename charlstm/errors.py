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


class UnknownCharactersError(CharlstmError):
    """Text contains characters the model's vocabulary has never seen."""

    def __init__(self, unknown: list[str]):
        self.unknown = unknown
        shown = ", ".join(repr(c) for c in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        super().__init__(
            f"text has {len(unknown)} character(s) the model never saw: {shown}{more}; "
            "use --unknown skip or --unknown replace, or remove them"
        )
