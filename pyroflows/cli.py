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

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from . import __version__, flows
from .core import Flow
from .data.files import ARRAY_EXTENSIONS, load_array, save_array
from .data.toy import TOY_DATASETS, toy
from .infer import fit as fit_flow

__all__ = ["main"]

_OUTPUT_EXTENSIONS = (".npy", ".csv", ".tsv", ".txt")
_CHUNK = 65536


class CommandError(Exception):
    """A problem with the user's input, reported as ``pyroflows: error: ...`` (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """Argument errors as one ``pyroflows: error:`` line (no usage dump), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = " ".join(self.prog.split()[1:])
        hint = f" (see 'pyroflows {command} --help')" if command else " (see 'pyroflows --help')"
        self.exit(2, f"pyroflows: error: {message}{hint}\n")


# -- argument types --------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


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
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} (try cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} was asked for but torch sees no CUDA device")
    return device


# -- shared steps ------------------------------------------------------------------------------


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch inside the block and restore the global RNG state after it."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_flow_name(name: str) -> None:
    if name in flows.available("image"):
        raise CommandError(f"{name!r} is an image flow (features=(C, H, W)); the CLI fits tabular "
                           f"data: use one of {', '.join(flows.available('vector'))}")
    if name not in flows.available("vector"):
        raise CommandError(f"unknown flow {name!r}; available: {', '.join(flows.available('vector'))}")


def _check_output(path: str, extensions: Sequence[str] | None = None) -> None:
    """Fail before any work when the output could not be written."""
    p = Path(path)
    if extensions is not None and p.suffix.lower() not in extensions:
        raise CommandError(f"{path}: cannot write {p.suffix or 'a file without extension'}; "
                           f"use one of {', '.join(extensions)}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise CommandError(f"{path}: the folder {os.fspath(parent)!r} does not exist")
    if p.is_dir():
        raise CommandError(f"{path}: is a directory")


def _load_model(path: str, device: torch.device) -> Flow:
    if not Path(path).is_file():
        raise CommandError(f"{path}: no such model file")
    try:
        flow = flows.load(path, map_location=device)
    except ValueError as error:
        message = str(error).splitlines()[0]
        if "Weights only load failed" in message:  # torch's long advice does not apply here
            message = message.split(": Weights only")[0] + ": not a file written by pyroflows"
        raise CommandError(message) from None
    if flow.context_features:
        raise CommandError(f"{path}: a conditional flow (context of {flow.context_features}); "
                           "the command line handles unconditional flows only")
    return flow.to(device).eval()


def _dtype_of(flow: torch.nn.Module) -> torch.dtype:
    return next(p for p in flow.state_dict().values() if p.is_floating_point()).dtype


def _write_table(array: np.ndarray, out: str | None, dtype: torch.dtype) -> None:
    """Write ``array`` with the precision of the model's ``dtype`` to ``out`` or stdout (CSV)."""
    if dtype != torch.float64:
        array = array.astype(np.float32)
    if out is not None:
        save_array(out, array)
        return
    fmt = "%.17g" if dtype == torch.float64 else "%.9g"
    np.savetxt(sys.stdout, array, fmt=fmt, delimiter=",")


@torch.no_grad()
def _log_prob(flow: Flow, x: np.ndarray, batch_size: int = _CHUNK) -> np.ndarray:
    device, dtype = next(iter(flow.state_dict().values())).device, _dtype_of(flow)
    tensor = torch.as_tensor(x, dtype=dtype)
    distribution = flow()
    return torch.cat([distribution.log_prob(chunk.to(device)).double().cpu()
                      for chunk in tensor.split(batch_size)]).numpy()


def _gaussian_loglik(train: np.ndarray, *others: np.ndarray) -> list[float]:
    """Mean log-likelihood of each array under the full-covariance Gaussian MLE of ``train``."""
    mean = train.mean(0)
    cov = np.atleast_2d(np.cov(train, rowvar=False, bias=True))
    chol = np.linalg.cholesky(cov)
    half_logdet = np.log(np.diag(chol)).sum()
    d = train.shape[1]
    results = []
    for x in (train, *others):
        z = np.linalg.solve(chol, (x - mean).T)
        results.append(float(np.mean(-0.5 * (z**2).sum(0)) - half_logdet - 0.5 * d * math.log(2 * math.pi)))
    return results


def _build_options(args: argparse.Namespace) -> dict:
    options = {}
    for key in ("transforms", "hidden", "bins", "bound"):
        value = getattr(args, key, None)
        if value is not None:
            options[key] = value
    return options


def _build(name: str, features: int, data: np.ndarray | None, options: dict) -> Flow:
    try:
        return flows.build(name, features, standardize=data, **options)
    except TypeError as error:  # unknown options for this preset
        raise CommandError(str(error)) from None


# -- commands -----------------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    names = flows.available()
    width = max(len(n) for n in names)
    for name in names:
        doc = flows.preset(name).__doc__ or ""
        summary = " ".join(doc.strip().split("\n\n")[0].split())
        if flows.kind(name) == "image":
            summary = f"[images, features=(C, H, W); not for the CLI's tabular commands] {summary}"
        print(f"{name:<{width}}  {summary}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    _check_flow_name(args.flow)
    _check_output(args.out, (".png", ".pdf", ".svg", ".jpg"))
    start = time.perf_counter()
    dtype = getattr(torch, args.dtype)
    with _threads(args.threads), _seeded(args.seed, args.device):
        train = toy(args.dataset, args.n_train, seed=args.seed).double()
        test = toy(args.dataset, args.n_test, seed=args.seed + 10**6).double()
        print(f"pyroflows demo: {args.flow} flow on {args.dataset} "
              f"({args.n_train} train / {args.n_test} test points, seed {args.seed})")
        flow = _build(args.flow, 2, None, {}).to(args.device, dtype)
        parameters = sum(p.numel() for p in flow.parameters())
        print(f"fitting {parameters:,} parameters for at most {args.epochs} epochs ...")
        result = fit_flow(flow, train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          seed=args.seed, progress=not args.quiet)
        flow.eval()
        train_ll = float(np.mean(_log_prob(flow, train.numpy())))
        test_ll = float(np.mean(_log_prob(flow, test.numpy())))
        gauss_train, gauss_test = _gaussian_loglik(train.numpy(), test.numpy())
        label = f"{args.flow} flow"
        width = max(len(label), len("Gaussian (full covariance)"))
        print(f"log-likelihood, nats per point (higher is better), best epoch "
              f"{result.best_epoch} of {len(result.history)}:")
        print(f"  {'':<{width}}  {'train':>8}  {'test':>8}")
        print(f"  {label:<{width}}  {train_ll:8.3f}  {test_ll:8.3f}")
        print(f"  {'Gaussian (full covariance)':<{width}}  {gauss_train:8.3f}  {gauss_test:8.3f}")
        _demo_figure(flow, test.numpy(), args, test_ll, gauss_test)
    print(f"wrote {args.out} (data, flow density, flow samples) in {time.perf_counter() - start:.1f} s")
    return 0


def _demo_figure(flow: Flow, test: np.ndarray, args: argparse.Namespace, test_ll: float,
                 gauss_ll: float) -> None:
    from matplotlib.figure import Figure  # no pyplot: no backend, no global state

    from .plots import _limits, plot_density, plot_samples

    limits = _limits(test, pad=0.08)
    ratio = (limits[1][1] - limits[1][0]) / (limits[0][1] - limits[0][0])
    fig = Figure(figsize=(12, min(max(4 * ratio, 2.0), 6.0) + 1.0), layout="constrained")
    axes = fig.subplots(1, 3)
    bounds = (*limits[0], *limits[1])
    shown = test[: min(len(test), 5000)]
    axes[0].scatter(shown[:, 0], shown[:, 1], s=1.5, alpha=0.5, linewidths=0, rasterized=True)
    axes[0].set_title(f"{args.dataset}: test data")
    plot_density(flow, bounds=bounds, resolution=200, ax=axes[1])
    axes[1].set_title(f"{args.flow} density (test log-lik {test_ll:.3f})")
    plot_samples(flow, n=len(shown), ax=axes[2], seed=args.seed)
    axes[2].set_title(f"{args.flow} samples")
    for ax in axes:
        ax.set_xlim(*limits[0])
        ax.set_ylim(*limits[1])
        ax.set_aspect("equal", adjustable="box")
    fig.suptitle(f"pyroflows demo: {args.flow} on {args.dataset}; test log-likelihood "
                 f"{test_ll:.3f} nats vs {gauss_ll:.3f} for a Gaussian")
    fig.savefig(args.out, dpi=110)


def _fit(args: argparse.Namespace) -> int:
    _check_flow_name(args.flow)
    _check_output(args.out)
    data = load_array(args.data, args.key)
    n, d = data.shape
    dtype = getattr(torch, args.dtype)
    with _seeded(args.seed, args.device):
        flow = _build(args.flow, d, data, _build_options(args)).to(args.device, dtype)
        print(f"data: {args.data}, {n} rows x {d} features")
        parameters = sum(p.numel() for p in flow.parameters())
        print(f"fitting a {args.flow} flow ({parameters:,} parameters) for at most {args.epochs} epochs")
        result = fit_flow(flow, data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          validation=args.validation, patience=args.patience, seed=args.seed,
                          progress=None if not args.quiet else False)
    best = result.history[result.best_epoch - 1]
    stop = ", stopped early" if result.stopped_early else ""
    print(f"best epoch {result.best_epoch} of {len(result.history)}{stop}")
    print(f"train log-likelihood      {best['train_loglik']:.4f} nats/point (epoch average)")
    if args.validation > 0:
        print(f"validation log-likelihood {best['val_loglik']:.4f} nats/point")
    flows.save(flow, args.out)
    print(f"saved {args.out}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    if args.out is not None:
        _check_output(args.out, _OUTPUT_EXTENSIONS)
    flow = _load_model(args.model, args.device)
    with _seeded(args.seed, args.device), torch.no_grad():
        distribution = flow()
        chunks = [distribution.sample((min(_CHUNK, args.n - start),)).double().cpu()
                  for start in range(0, args.n, _CHUNK)]
    samples = torch.cat(chunks).numpy()
    _write_table(samples, args.out, _dtype_of(flow))
    if args.out is not None:
        print(f"wrote {args.n} samples of {samples.shape[1]} features to {args.out}", file=sys.stderr)
    return 0


def _score(args: argparse.Namespace) -> int:
    if args.out is not None:
        _check_output(args.out, _OUTPUT_EXTENSIONS)
    flow = _load_model(args.model, args.device)
    data = load_array(args.data, args.key)
    if data.shape[1] != flow.features:
        raise CommandError(f"{args.data} has {data.shape[1]} columns but the model "
                           f"{args.model} takes {flow.features} features")
    scores = _log_prob(flow, data, args.batch_size)
    _write_table(scores[:, None], args.out, _dtype_of(flow))
    finite = np.isfinite(scores)
    mean = float(np.mean(scores[finite])) if finite.any() else math.nan
    note = "" if finite.all() else f" ({int((~finite).sum())} rows without a finite value left out)"
    print(f"mean log-likelihood {mean:.4f} nats over {len(scores)} rows{note}", file=sys.stderr)
    return 0


# -- the parser ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pyroflows", description="Normalizing flows for Pyro, from the command line.")
    parser.add_argument("--version", action="version", version=f"pyroflows {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="fit a flow to a 2-D toy data set and plot it",
                               description="Fit a flow to a 2-D toy data set, compare its test "
                               "log-likelihood with a Gaussian's, and plot data, density and samples.")
    demo.add_argument("--flow", default="nsf", metavar="NAME", help="registry name (default: nsf; see 'pyroflows list')")
    demo.add_argument("--dataset", default="moons", choices=sorted(TOY_DATASETS), help="toy data set (default: moons)")
    demo.add_argument("--out", default="demo_density.png", metavar="FILE", help="figure file (default: demo_density.png)")
    demo.add_argument("--epochs", type=_positive_int, metavar="N", default=30, help="maximum epochs (default: 30)")
    demo.add_argument("--seed", type=int, metavar="S", default=0, help="seed of data, initialisation and training")
    demo.add_argument("--n-train", type=_positive_int, metavar="N", default=10_000, help="training points (default: 10000)")
    demo.add_argument("--n-test", type=_positive_int, metavar="N", default=5_000, help="test points (default: 5000)")
    demo.add_argument("--batch-size", type=_positive_int, metavar="N", default=256, help="default: 256")
    demo.add_argument("--lr", type=_positive_float, default=3e-3, help="Adam learning rate (default: 3e-3)")
    demo.add_argument("--threads", type=_positive_int, metavar="N", default=1,
                      help="torch CPU threads (default: 1, fastest for these small networks)")
    demo.add_argument("--device", type=_device, default=torch.device("cpu"), metavar="DEVICE",
                      help="torch device (default: cpu)")
    demo.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(run=_demo)

    listing = commands.add_parser("list", help="list the flows and what they are",
                                  description="Print the registered flow presets, each with its paper.")
    listing.set_defaults(run=_list)

    fit = commands.add_parser("fit", help="fit a flow to a data file and save it",
                              description="Fit a flow by maximum likelihood to the rows of a data file "
                              "(.npy, .npz, .csv, .tsv, .txt); the data are standardised by a fixed "
                              "first layer, so raw-scale data work.")
    fit.add_argument("data", metavar="DATA", help="data file, one sample per row")
    fit.add_argument("--flow", default="nsf", metavar="NAME", help="registry name (default: nsf; see 'pyroflows list')")
    fit.add_argument("--out", required=True, metavar="MODEL.pt", help="model file to write (e.g. model.pt)")
    fit.add_argument("--key", metavar="NAME", help="array name inside an .npz archive")
    fit.add_argument("--epochs", type=_positive_int, metavar="N", default=100, help="maximum epochs (default: 100)")
    fit.add_argument("--batch-size", type=_positive_int, metavar="N", default=256, help="default: 256")
    fit.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    fit.add_argument("--validation", type=_fraction, metavar="FRACTION", default=0.1, help="held-out fraction for early stopping (default: 0.1)")
    fit.add_argument("--patience", type=_positive_int, metavar="N", default=10, help="epochs without improvement before stopping")
    fit.add_argument("--hidden", type=_widths, metavar="W1,W2,...", help="conditioner widths, e.g. 64,64")
    fit.add_argument("--transforms", type=_positive_int, metavar="N", help="number of layers")
    fit.add_argument("--bins", type=_positive_int, metavar="K", help="spline bins (spline flows)")
    fit.add_argument("--bound", type=_positive_float, metavar="B", help="spline interval half-width (spline flows)")
    fit.add_argument("--seed", type=int, metavar="S", default=0, help="seed of initialisation, split and shuffling")
    fit.add_argument("--device", type=_device, default=torch.device("cpu"), metavar="DEVICE",
                     help="torch device (default: cpu)")
    fit.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    fit.set_defaults(run=_fit)

    sample = commands.add_parser("sample", help="draw samples from a saved model",
                                 description="Draw N samples from a model saved by 'pyroflows fit'.")
    sample.add_argument("model", metavar="MODEL.pt", help="model file written by 'pyroflows fit'")
    sample.add_argument("-n", type=_positive_int, required=True, help="number of samples")
    sample.add_argument("--out", metavar="FILE", help="output file (.npy, .csv, .tsv, .txt); default: CSV on stdout")
    sample.add_argument("--seed", type=int, metavar="S", help="seed (default: random)")
    sample.add_argument("--device", type=_device, default=torch.device("cpu"), metavar="DEVICE",
                        help="torch device (default: cpu)")
    sample.set_defaults(run=_sample)

    score = commands.add_parser("score", help="log-likelihood of each row of a data file",
                                description="The log-density of every row of DATA under a saved model; "
                                "the mean goes to standard error.")
    score.add_argument("model", metavar="MODEL.pt", help="model file written by 'pyroflows fit'")
    score.add_argument("data", metavar="DATA", help=f"data file ({', '.join(ARRAY_EXTENSIONS)})")
    score.add_argument("--out", metavar="FILE", help="output file (.npy, .csv, .tsv, .txt); default: one value per line on stdout")
    score.add_argument("--key", metavar="NAME", help="array name inside an .npz archive")
    score.add_argument("--batch-size", type=_positive_int, metavar="N", default=_CHUNK, help="rows per pass")
    score.add_argument("--device", type=_device, default=torch.device("cpu"), metavar="DEVICE",
                       help="torch device (default: cpu)")
    score.set_defaults(run=_score)
    return parser


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
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or an argument error already reported
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    try:
        return args.run(args)
    except (CommandError, ValueError, OSError) as error:
        message = (str(error).strip().splitlines() or [type(error).__name__])[0]
        print(f"pyroflows: error: {message[:500]}", file=sys.stderr)
        return 2
    except FloatingPointError as error:
        print(f"pyroflows: error: training diverged: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pyroflows: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
