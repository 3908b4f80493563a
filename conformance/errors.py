"""The one error every ``kvspec`` surface raises for input it cannot use."""

from __future__ import annotations


class UsageError(ValueError):
    """Input that cannot be used (an option, a ``--target``, a trace file, a path): the
    message is one line that names the problem. The command line prints it and exits 2;
    nothing has run and nothing is written by then."""
