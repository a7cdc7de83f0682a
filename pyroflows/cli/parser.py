"""The command line's grammar: argument types, a parser whose errors are one line, and each
command's options."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import torch

from .. import __version__
from ..data.files import ARRAY_EXTENSIONS
from ..data.toy import TOY_DATASETS
from .models import CHUNK

__all__ = ["build_parser"]


class _Parser(argparse.ArgumentParser):
    """Argument errors as one ``pyroflows: error:`` line (no usage dump), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = " ".join(self.prog.split()[1:])
        hint = f" (see 'pyroflows {command} --help')" if command else " (see 'pyroflows --help')"
        self.exit(2, f"pyroflows: error: {message}{hint}\n")


# -- argument types --------------------------------------------------------------------------


def _number(
    parse: Callable[[str], float], valid: Callable[[float], bool], expected: str
) -> Callable[[str], float]:
    """An argparse type: ``parse`` the text and accept it when ``valid``, else say ``expected``."""

    def convert(text: str) -> float:
        try:
            value = parse(text)
        except ValueError:
            value = math.nan
        if not valid(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return convert


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_positive_float = _number(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
_fraction = _number(float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers such as 64,64, got {text!r}"
        )
    return widths


def _device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"not a torch device: {text!r} (try cpu or cuda)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} was asked for but torch sees no CUDA device")
    return device


# -- options several commands share -------------------------------------------------------------


def _add_device(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--device",
        type=_device,
        default=torch.device("cpu"),
        metavar="DEVICE",
        help="torch device (default: cpu)",
    )


def _add_training(command: argparse.ArgumentParser, epochs: int, lr: float, seed_of: str) -> None:
    """The options of a training run: epochs, batch size, learning rate, time budget, seed,
    device, dtype."""
    command.add_argument(
        "--epochs",
        type=_positive_int,
        metavar="N",
        default=epochs,
        help=f"maximum epochs (default: {epochs})",
    )
    command.add_argument(
        "--batch-size", type=_positive_int, metavar="N", default=256, help="default: 256"
    )
    command.add_argument(
        "--lr", type=_positive_float, default=lr, help=f"Adam learning rate (default: {lr:g})"
    )
    command.add_argument(
        "--max-time",
        type=_positive_float,
        metavar="SECONDS",
        default=None,
        help="time budget of the training: stop after the step at which it runs out, keeping "
        "the best state (default: none)",
    )
    command.add_argument("--seed", type=int, metavar="S", default=0, help=f"seed of {seed_of}")
    _add_device(command)
    command.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    command.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_flow(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--flow",
        default="nsf",
        metavar="NAME",
        help="registry name (default: nsf; see 'pyroflows list')",
    )


# -- the commands --------------------------------------------------------------------------------


def build_parser(run: dict[str, Callable[[argparse.Namespace], int]]) -> argparse.ArgumentParser:
    """The ``pyroflows`` parser; ``run[name]`` is the function each command calls with its
    parsed arguments (``demo``, ``list``, ``fit``, ``sample``, ``score``)."""
    parser = _Parser(
        prog="pyroflows", description="Normalizing flows for Pyro, from the command line."
    )
    parser.add_argument("--version", action="version", version=f"pyroflows {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="fit a flow to a 2-D toy data set and plot it",
        description="Fit a flow to a 2-D toy data set, compare its test "
        "log-likelihood with a Gaussian's, and plot data, density and samples.",
    )
    _add_flow(demo)
    demo.add_argument(
        "--dataset",
        default="moons",
        choices=sorted(TOY_DATASETS),
        help="toy data set (default: moons)",
    )
    demo.add_argument(
        "--out",
        default="demo_density.png",
        metavar="FILE",
        help="figure file (default: demo_density.png)",
    )
    demo.add_argument(
        "--n-train",
        type=_positive_int,
        metavar="N",
        default=10_000,
        help="training points (default: 10000)",
    )
    demo.add_argument(
        "--n-test",
        type=_positive_int,
        metavar="N",
        default=5_000,
        help="test points (default: 5000)",
    )
    demo.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        default=1,
        help="torch CPU threads (default: 1, fastest for these small networks)",
    )
    _add_training(demo, epochs=30, lr=3e-3, seed_of="data, initialisation and training")
    demo.set_defaults(run=run["demo"])

    listing = commands.add_parser(
        "list",
        help="list the flows and what they are",
        description="Print the registered flow presets, each with its paper.",
    )
    listing.set_defaults(run=run["list"])

    fit = commands.add_parser(
        "fit",
        help="fit a flow to a data file and save it",
        description="Fit a flow by maximum likelihood to the rows of a data file "
        "(.npy, .npz, .csv, .tsv, .txt); the data are standardised by a fixed "
        "first layer, so raw-scale data work.",
    )
    fit.add_argument("data", metavar="DATA", help="data file, one sample per row")
    _add_flow(fit)
    fit.add_argument(
        "--out", required=True, metavar="MODEL.pt", help="model file to write (e.g. model.pt)"
    )
    fit.add_argument("--key", metavar="NAME", help="array name inside an .npz archive")
    fit.add_argument(
        "--validation",
        type=_fraction,
        metavar="FRACTION",
        default=0.1,
        help="held-out fraction for early stopping (default: 0.1)",
    )
    fit.add_argument(
        "--patience",
        type=_positive_int,
        metavar="N",
        default=10,
        help="epochs without improvement before stopping",
    )
    fit.add_argument(
        "--hidden", type=_widths, metavar="W1,W2,...", help="conditioner widths, e.g. 64,64"
    )
    fit.add_argument("--transforms", type=_positive_int, metavar="N", help="number of layers")
    fit.add_argument("--bins", type=_positive_int, metavar="K", help="spline bins (spline flows)")
    fit.add_argument(
        "--bound",
        type=_positive_float,
        metavar="B",
        help="spline interval half-width (spline flows)",
    )
    _add_training(fit, epochs=100, lr=1e-3, seed_of="initialisation, split and shuffling")
    fit.set_defaults(run=run["fit"])

    sample = commands.add_parser(
        "sample",
        help="draw samples from a saved model",
        description="Draw N samples from a model saved by 'pyroflows fit'.",
    )
    sample.add_argument("model", metavar="MODEL.pt", help="model file written by 'pyroflows fit'")
    sample.add_argument("-n", type=_positive_int, required=True, help="number of samples")
    sample.add_argument(
        "--out", metavar="FILE", help="output file (.npy, .csv, .tsv, .txt); default: CSV on stdout"
    )
    sample.add_argument("--seed", type=int, metavar="S", help="seed (default: random)")
    _add_device(sample)
    sample.set_defaults(run=run["sample"])

    score = commands.add_parser(
        "score",
        help="log-likelihood of each row of a data file",
        description="The log-density of every row of DATA under a saved model; "
        "the mean goes to standard error.",
    )
    score.add_argument("model", metavar="MODEL.pt", help="model file written by 'pyroflows fit'")
    score.add_argument("data", metavar="DATA", help=f"data file ({', '.join(ARRAY_EXTENSIONS)})")
    score.add_argument(
        "--out",
        metavar="FILE",
        help="output file (.npy, .csv, .tsv, .txt); default: one value per line on stdout",
    )
    score.add_argument("--key", metavar="NAME", help="array name inside an .npz archive")
    score.add_argument(
        "--batch-size", type=_positive_int, metavar="N", default=CHUNK, help="rows per pass"
    )
    _add_device(score)
    score.set_defaults(run=run["score"])
    return parser
