"""The ``pyroflows`` command: a quick tour, and fitting, sampling and scoring flows on data files.

::

    pyroflows demo [--flow nsf] [--dataset moons] [--out demo_density.png] [--epochs N]
    pyroflows list
    pyroflows fit DATA.{npy,npz,csv} --flow NAME --out MODEL.pt [--epochs N] [--hidden 64,64] ...
    pyroflows sample MODEL.pt -n N [--out FILE.{npy,csv}] [--seed S]
    pyroflows score MODEL.pt DATA [--out FILE]

Bad input (an unknown flow, an unreadable or mis-shaped file, data whose dimension does not
match the model, an invalid option value) prints one ``pyroflows: error: ...`` line on stderr
and exits with status 2; a training run that diverges exits with status 1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .commands import fit_command, list_command, sample_command, score_command
from .demo import demo_command
from .errors import CommandError, one_line
from .parser import build_parser

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pyroflows`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit
    status: 0 on success, 2 for bad input (with one ``pyroflows: error:`` line on stderr), 1 if
    training diverges.

    Example:
        >>> import contextlib, io
        >>> with contextlib.redirect_stdout(io.StringIO()) as out:
        ...     status = main(["list"])
        >>> status, "nsf-coupling" in out.getvalue()
        (0, True)
    """
    parser = build_parser(
        {
            "demo": demo_command,
            "list": list_command,
            "fit": fit_command,
            "sample": sample_command,
            "score": score_command,
        }
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or an argument error already reported
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    try:
        return args.run(args)
    except (CommandError, ValueError, OSError) as error:
        print(f"pyroflows: error: {one_line(error)}", file=sys.stderr)
        return 2
    except FloatingPointError as error:
        print(f"pyroflows: error: training diverged: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pyroflows: interrupted", file=sys.stderr)
        return 130
