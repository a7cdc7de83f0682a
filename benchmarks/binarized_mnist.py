r"""Binarized MNIST: NADE and MADE (Bernoulli conditionals), test negative log-likelihood in nats
next to the published values.

Data (``../shared/data/README.md``): the 5,000 training digits (``mnist_train_5k.npz``; 4,500
for training and 500 held out for early stopping) and the official 10,000 test digits
(``mnist_test_10k.npz``), **stochastically binarized**: pixel :math:`x_i \sim
\mathrm{Bernoulli}(k_i / 255)`. The test digits are binarized once, with seed 1; the training
digits are binarized afresh every epoch (seed 1000 + epoch, "dynamic binarization"), which keeps
the networks from memorising one draw of 4,500 digits (``--fixed-binarization``: one draw,
seed 0); the validation digits are one fixed draw (seed 2).

The published numbers use the fixed binarization of Larochelle & Murray (AISTATS 2011: 50,000
training, 10,000 validation and 10,000 test digits, binarized once): NADE 88.86 nats (500
sigmoid hidden units, fixed ordering), MADE 86.64 nats (Germain et al., ICML 2015: one hidden
layer of 500 units, 32 masks averaged at test time; 88.40 with a single mask). Ours differ: 10x
fewer training digits, our own stochastic binarization of the same test digits, NADE with 100
hidden units, and time budgets of minutes on one CPU thread.

Models: ``nade`` (100 sigmoid hidden units, natural ordering: 500 units, the published size,
take about 2 minutes an epoch here), ``made`` (``made-bernoulli``: one hidden layer of 500 ReLU
units, natural ordering), ``made-8`` (the same network with 8 weight-tied random orderings,
trained and evaluated as their exact mixture; the published 32-mask MADE also resamples the
hidden connectivity), and the independent-pixel Bernoulli baseline
(closed form, smoothed pixel frequencies). The networks' output biases start at the logits of
the pixel frequencies; Adam, batches of 100, a time budget per model and early stopping on the
validation digits.

Usage::

    python benchmarks/binarized_mnist.py            # about 10 minutes on one loaded CPU thread
    python benchmarks/binarized_mnist.py --quick    # smoke run

Results: ``benchmarks/results/binarized_mnist.json`` (table and per-epoch history).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, count_parameters, machine_info, print_table, save_json, set_threads  # noqa: E402

import pyroflows  # noqa: E402
from pyroflows.data.mnist import MNISTNotFoundError, load_mnist  # noqa: E402
from pyroflows.density import NADE  # noqa: E402
from pyroflows.infer import Callback, FitState, FreshData, StepBudget, fit  # noqa: E402

#: Published test NLL (nats) on Larochelle & Murray's binarized MNIST, and their source.
PUBLISHED = {
    "bernoulli": (
        None,
        "independent pixels: no published value (a mixture of Bernoullis: 137.64, "
        "Larochelle & Murray 2011)",
    ),
    "nade": (88.86, "Larochelle & Murray 2011, 500 hidden units"),
    "made": (88.40, "Germain et al. 2015, 1 hidden layer of 500, 1 mask"),
    "made-8": (
        86.64,
        "Germain et al. 2015, 1 hidden layer of 500, 32 masks (orderings and connectivities)",
    ),
}
#: Model, options, Adam learning rate and minutes (one loaded CPU thread).
MODELS = {
    "nade": {"preset": "nade", "options": {"hidden": 100}, "lr": 1e-2, "minutes": 5.0},
    "made": {"preset": "made-bernoulli", "options": {"hidden": (500,)}, "lr": 1e-3, "minutes": 1.5},
    "made-8": {
        "preset": "made-bernoulli",
        "options": {"hidden": (500,), "order": "random", "orderings": 8},
        "lr": 1e-3,
        "minutes": 3.5,
    },
}


def binarize(images: np.ndarray | torch.Tensor, seed: int) -> torch.Tensor:
    """Stochastic binarization: (n, 28, 28) uint8 -> (n, 784) float32 of 0/1, pixel ``i`` equal
    to 1 with probability ``k_i / 255`` (seeded)."""
    p = torch.as_tensor(np.asarray(images)).reshape(len(images), -1).double() / 255
    return (
        torch.rand(p.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) < p
    ).float()


@torch.no_grad()
def init_marginal_logits(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Start every conditional's output bias at the logit of its pixel's (smoothed) frequency,
    so training starts from the independent-pixel model instead of p = 1/2."""
    logits = ((x.sum(0) + 1) / (len(x) + 2)).logit()
    if isinstance(model, NADE):  # parameters by position in the ordering
        model.b.copy_(logits[model.order.argsort()].unsqueeze(-1))
    else:  # MADEDensity: one (d * 1) output bias per ordering, feature order
        for net in model.nets:
            net.output.bias.copy_(logits)


class Progress(Callback):
    """Starts the output biases at the pixel frequencies of the first epoch's training digits,
    prints one line per epoch and counts the optimizer steps."""

    def __init__(self, name: str) -> None:
        self.name, self.steps = name, 0

    def on_epoch_start(self, state: FitState) -> None:
        if state.epoch == 1:
            init_marginal_logits(state.model, state.data[state.train_index])

    def on_epoch_end(self, state: FitState) -> bool:
        self.steps = state.step
        h = state.history[-1]
        print(
            f"  [{self.name}] epoch {h['epoch']}: train {-h['train_loglik']:.2f}, val {-h['val_loglik']:.2f} "
            f"nats ({state.elapsed:.0f} s)",
            flush=True,
        )
        return False


def fit_model(
    name: str, spec: dict, images: torch.Tensor, args: argparse.Namespace
) -> tuple[torch.nn.Module, dict]:
    """Train one model with ``fit``: a time budget, early stopping on the held-out digits (one
    binarization, seed 2), the training digits binarized afresh every epoch (seed 0 first)."""
    torch.manual_seed(0)
    start = time.perf_counter()
    options = dict(spec["options"])
    if args.quick:
        options["hidden"] = 16 if name == "nade" else (16,)
        options.update({"orderings": 2} if "orderings" in options else {})
    model = pyroflows.density.build(spec["preset"], images[0].numel(), **options)
    minutes = 0.2 if args.quick else spec["minutes"] * args.minutes_scale

    def draw(epoch: int, index: torch.Tensor) -> torch.Tensor | None:
        if args.fixed_binarization and epoch > 1:
            return None
        return binarize(
            images[index.cpu()], seed=0 if args.fixed_binarization or epoch == 1 else 1000 + epoch
        )

    progress = Progress(name)
    result = fit(
        model,
        binarize(images, seed=2),
        epochs=args.epochs,
        batch_size=100,
        lr=spec["lr"],
        validation=0.1,
        patience=args.patience,
        clip_grad=5.0,
        seed=0,
        max_time=60 * minutes,
        callbacks=[FreshData(draw), progress, *([StepBudget(5)] if args.quick else [])],
        progress=False,
    )
    history = [
        {
            "epoch": h["epoch"],
            "train_nll": -h["train_loglik"],
            "val_nll": -h["val_loglik"],
            "seconds": h["seconds"],
        }
        for h in result.history
    ]
    return model, {
        "fit_seconds": time.perf_counter() - start,
        "epochs_run": len(history),
        "best_epoch": result.best_epoch,
        "steps": progress.steps,
        "stopped_by": result.stop_reason,
        "params": count_parameters(model),
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
        "lr": spec["lr"],
        "time_budget_minutes": minutes,
        "history": history,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=None, help="directory with the MNIST .npz files"
    )
    parser.add_argument(
        "--models", nargs="+", default=["bernoulli", *MODELS], choices=["bernoulli", *MODELS]
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1,000/1,000 digits, tiny budgets"
    )
    parser.add_argument(
        "--fixed-binarization",
        action="store_true",
        help="train on one binarization of the training digits (default: a fresh one per epoch)",
    )
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument(
        "--nade-hidden", type=int, default=None, help="override NADE's hidden units"
    )
    parser.add_argument(
        "--made-hidden", type=int, nargs="+", default=None, help="override MADE's hidden widths"
    )
    parser.add_argument(
        "--lr", type=float, default=None, help="override every model's learning rate"
    )
    parser.add_argument(
        "--minutes-scale", type=float, default=1.0, help="multiplies every model's time budget"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "binarized_mnist.json")
    args = parser.parse_args(argv)
    args.specs = copy.deepcopy(MODELS)
    if args.nade_hidden is not None:
        args.specs["nade"]["options"]["hidden"] = args.nade_hidden
    if args.made_hidden is not None:
        for name in ("made", "made-8"):
            args.specs[name]["options"]["hidden"] = tuple(args.made_hidden)
    for spec in args.specs.values():
        spec["lr"] = spec["lr"] if args.lr is None else args.lr
    threads = set_threads(args.threads)
    try:
        train_images, _ = load_mnist("train", args.data)
        test_images, _ = load_mnist("test", args.data)
    except MNISTNotFoundError as error:
        print(f"skipping the binarized MNIST benchmark: {error}")
        return {}
    if args.quick:
        train_images, test_images = train_images[:1000], test_images[:1000]
    images = torch.as_tensor(train_images)
    x_test = binarize(test_images, seed=1)
    payload: dict = {
        "benchmark": "binarized_mnist",
        "machine": machine_info(),
        "settings": {
            "train_digits": len(images) - round(0.1 * len(images)),
            "validation_digits": round(0.1 * len(images)),
            "test_digits": len(x_test),
            "split": "train: mnist_train_5k; test: mnist_test_10k",
            "binarization": "stochastic, Bernoulli(k / 255); test seed 1, validation seed 2, training "
            + (
                "seed 0 (fixed)"
                if args.fixed_binarization
                else "fresh each epoch (seed 1000 + epoch)"
            ),
            "batch_size": 100,
            "epochs": args.epochs,
            "patience": args.patience,
            "threads": threads,
            "models": {name: args.specs[name] for name in args.models if name in MODELS},
        },
        "published": {k: {"test_nll": v[0], "source": v[1]} for k, v in PUBLISHED.items()},
        "results": {},
    }
    print(
        f"binarized mnist: {payload['settings']['train_digits']} train / {len(x_test)} test digits, "
        f"{threads} thread(s)",
        flush=True,
    )

    for name in args.models:
        if name == "bernoulli":
            start = time.perf_counter()
            x = binarize(images, seed=0)
            p = ((x.sum(0) + 1) / (len(x) + 2)).double()  # Laplace-smoothed pixel frequencies
            nll = -(x_test.double() * p.log() + (1 - x_test.double()) * (1 - p).log()).sum(-1)
            info = {"fit_seconds": time.perf_counter() - start, "params": p.numel()}
        else:
            model, info = fit_model(name, args.specs[name], images, args)
            with torch.no_grad():
                nll = -torch.cat([model().log_prob(chunk).double() for chunk in x_test.split(1000)])
        payload["results"][name] = {
            "test_nll": float(nll.mean()),
            "test_nll_sem": float(nll.std() / math.sqrt(len(nll))),
            **info,
        }
        print(
            f"[{name}] test NLL {float(nll.mean()):.2f} nats, {info['fit_seconds']:.1f} s",
            flush=True,
        )
        save_json(args.out, payload)

    rows = [
        [
            name,
            r["test_nll"],
            r["test_nll_sem"],
            "" if PUBLISHED[name][0] is None else PUBLISHED[name][0],
            r.get("epochs_run", ""),
            r["fit_seconds"],
        ]
        for name, r in payload["results"].items()
    ]
    print(
        f"\nBinarized MNIST test NLL in nats (lower is better): ours on {payload['settings']['train_digits']:,} "
        f"training digits, {len(x_test):,} test digits; published on 50,000 training digits"
    )
    payload["table"] = print_table(
        ["model", "ours (nats)", "± s.e.", "published (nats)", "epochs", "fit s"],
        rows,
        floatfmt=".2f",
    )
    save_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
