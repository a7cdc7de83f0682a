"""How the ``pyroflows`` command fails: one ``pyroflows: error: ...`` line on stderr and an exit
status (2 for bad input, 1 for a diverged training run)."""

from __future__ import annotations

__all__ = ["CommandError", "one_line"]


class CommandError(Exception):
    """A problem with the user's input, reported as ``pyroflows: error: ...`` (exit status 2)."""


def one_line(error: BaseException, limit: int = 500) -> str:
    """The first line of ``error``'s message (its class name when it has none), at most
    ``limit`` characters, as the command prints it.

    Example:
        >>> one_line(ValueError("bad data\\nmore detail"))
        'bad data'
    """
    message = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return message[:limit]
