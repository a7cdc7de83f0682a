"""MNIST density estimation: Gaussian, deep copula destructor (greedy and fine-tuned), MAF, NSF.

Protocol (``../shared/data/README.md``): train on the 5,000 training digits
(``mnist_train_5k.npz``), test on the official 10,000 test digits (``mnist_test_10k.npz``);
dequantise (``(k + U(0,1)) / 256``, seed 0 for training and 1 for test) and logit-transform
with alpha = 1e-6. Each model is fitted in logit space; every model's selection (destructor
depth, flow early stopping) uses a 10% validation split of the training digits only. Reported:
mean test log-likelihood in nats in logit space (the space of the talk's table: Gaussian
-1367, MAF -1300, copula -1028 on the full 60k MNIST), in the original pixel space
``[0,256)^784`` (the logit and the 1/256 scaling Jacobians added), and bits per dimension;
fit times on this machine.

Also measured: the time to fit one copula layer on 5000 x 784 (the acceptance bound:
seconds, not minutes).

Usage::

    python benchmarks/mnist.py                 # full run (about half an hour on one core)
    python benchmarks/mnist.py --quick         # smoke run: 1,000 / 1,000 digits, tiny budgets
    python benchmarks/mnist.py --data /path/to/mnist_dir --models gaussian copula

Results: ``benchmarks/results/mnist.json`` (rewritten after every model).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, count_parameters, machine_info, print_table, save_json, set_threads  # noqa: E402

import pyroflows  # noqa: E402
from pyroflows.data.mnist import MNISTNotFoundError, bits_per_dim, load_mnist, preprocess  # noqa: E402
from pyroflows.destructors import (  # noqa: E402
    CopulaDestructor,
    DeepDestructor,
    GaussianDestructor,
    NormalCdfDestructor,
)

MODELS = ["gaussian", "copula", "copula+ft", "maf", "nsf"]
COPULA = {"bins": 80, "alpha": 5.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="directory with the MNIST .npz files")
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,000/1,000 digits, tiny budgets")
    parser.add_argument("--max-layers", type=int, default=None, help="deep copula layer budget (default 10)")
    parser.add_argument("--epochs", type=int, default=None, help="flow / fine-tuning epoch budget (default 100)")
    parser.add_argument("--patience", type=int, default=None, help="early-stopping patience (default 5)")
    parser.add_argument("--maf-hidden", type=int, nargs="+", default=[512, 512], help="MAF MADE widths")
    parser.add_argument("--maf-lr", type=float, default=1e-4)
    parser.add_argument("--nsf-hidden", type=int, nargs="+", default=[256, 256], help="NSF MADE widths")
    parser.add_argument("--nsf-lr", type=float, default=3e-4)
    parser.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay of the flows")
    parser.add_argument("--ft-lr", type=float, default=1e-3, help="fine-tuning learning rate")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "mnist.json")
    args = parser.parse_args(argv)
    defaults = ({"max_layers": 3, "epochs": 2, "patience": 2, "train": 1000, "test": 1000} if args.quick
                else {"max_layers": 10, "epochs": 100, "patience": 5, "train": None, "test": None})
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


@torch.no_grad()
def mean_log_prob(log_prob, y: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    return torch.cat([log_prob(chunk).double() for chunk in y.split(1000)])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    try:
        train_images, _ = load_mnist("train", args.data)
        test_images, _ = load_mnist("test", args.data)
    except MNISTNotFoundError as error:
        print(f"skipping the MNIST benchmark: {error}")
        return {}
    train_images, test_images = train_images[: args.train], test_images[: args.test]
    ytr, _ = preprocess(train_images, seed=0)
    yte, ladj_te = preprocess(test_images, seed=1)
    d = ytr.shape[1]
    payload: dict = {"benchmark": "mnist", "machine": machine_info(), "settings": {
        "train_digits": len(ytr), "test_digits": len(yte), "split": "train: mnist_train_5k; test: mnist_test_10k",
        "dequantize_seed": {"train": 0, "test": 1}, "logit_alpha": 1e-6, "threads": threads,
        "validation": 0.1, "epochs": args.epochs, "patience": args.patience, "max_layers": args.max_layers,
        "copula_layer": COPULA, "maf": {"hidden": args.maf_hidden, "lr": args.maf_lr},
        "nsf": {"hidden": args.nsf_hidden, "lr": args.nsf_lr}, "weight_decay": args.weight_decay,
        "fine_tune_lr": args.ft_lr, "batch_size": {"flows": 128, "fine_tune": 256}}, "results": {}}
    print(f"mnist: {len(ytr)} train / {len(yte)} test digits, {threads} thread(s)", flush=True)

    # Acceptance timing: one copula layer on the (init-mapped) training digits.
    u = NormalCdfDestructor(d).fit(ytr).transform(ytr).detach()
    start = time.perf_counter()
    CopulaDestructor(d, **COPULA).fit(u)
    payload["copula_layer_fit_seconds"] = {"seconds": time.perf_counter() - start, "shape": list(u.shape),
                                           "threads": threads, "dtype": "float64"}
    print(f"one copula layer on {tuple(u.shape)}: {payload['copula_layer_fit_seconds']['seconds']:.2f} s", flush=True)

    def record(name: str, log_prob, seconds: float, **extra) -> None:  # noqa: ANN001
        lp = mean_log_prob(log_prob, yte)
        logit_space = float(lp.mean())
        unit = float((lp + ladj_te).mean())  # dequantised pixels scaled to [0, 1]
        pixel = unit - d * math.log(256)  # the original 0..255 pixel scale
        payload["results"][name] = {"test_loglik_logit": logit_space, "test_loglik_unit": unit,
                                    "test_loglik_pixel": pixel, "bits_per_dim": bits_per_dim(unit, d),
                                    "test_loglik_sem": float(lp.std() / math.sqrt(len(lp))),
                                    "fit_seconds": seconds, **extra}
        print(f"[{name}] logit {logit_space:.1f} nats, pixel {pixel:.1f} nats, {bits_per_dim(unit, d):.3f} bits/dim, "
              f"{seconds:.1f} s {extra.get('note', '')}", flush=True)
        save_json(args.out, payload)

    deep = None
    for name in args.models:
        start = time.perf_counter()
        if name == "gaussian":
            model = GaussianDestructor(d).fit(ytr)
            record(name, model.log_prob, time.perf_counter() - start, params=d + d * (d + 1) // 2)
        elif name == "copula" or (name == "copula+ft" and deep is None):
            deep = DeepDestructor(d, layer="copula", max_layers=args.max_layers, layer_options=COPULA,
                                  progress=False).fit(ytr)
            greedy_seconds = time.perf_counter() - start
            if name == "copula":
                record(name, deep.log_prob, greedy_seconds, layers=len(deep.layers) - 1, history=deep.history,
                       note=f"({len(deep.layers) - 1} copula layers)")
                continue
        if name == "copula+ft":
            tuned = copy.deepcopy(deep)
            start = time.perf_counter()
            fit = tuned.fine_tune(ytr, epochs=args.epochs, batch_size=256, lr=args.ft_lr, validation=0.1,
                                  patience=args.patience, seed=0, progress=False)
            seconds = time.perf_counter() - start
            greedy = payload["results"].get("copula", {}).get("fit_seconds", 0.0)
            record(name, tuned.log_prob, seconds + greedy, fine_tune_seconds=seconds,
                   epochs_run=len(fit.history), best_epoch=fit.best_epoch, params=count_parameters(tuned),
                   note=f"(greedy + {len(fit.history)} epochs of fine-tuning)")
        elif name in ("maf", "nsf"):
            torch.manual_seed(0)
            options = {"transforms": 5, "hidden": tuple(args.maf_hidden)} if name == "maf" else \
                {"transforms": 3, "hidden": tuple(args.nsf_hidden), "bins": 8, "bound": 5.0}
            if args.quick:
                options.update(transforms=2, hidden=(64, 64))
            flow = pyroflows.flows.build(name, d, standardize=ytr, **options)
            fit = pyroflows.infer.fit(flow, ytr.float(), epochs=args.epochs, batch_size=128,
                                      lr=args.maf_lr if name == "maf" else args.nsf_lr, weight_decay=args.weight_decay,
                                      validation=0.1, patience=args.patience, seed=0, progress=False)
            flow.eval()
            record(name, lambda y, f=flow: f().log_prob(y.float()), time.perf_counter() - start,
                   epochs_run=len(fit.history), best_epoch=fit.best_epoch, params=count_parameters(flow),
                   options={k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
                   note=f"({len(fit.history)} epochs, best {fit.best_epoch})")

    rows = [[name, r["test_loglik_logit"], r["test_loglik_pixel"], r["bits_per_dim"], r["fit_seconds"]]
            for name, r in payload["results"].items()]
    print("\nMNIST test log-likelihood (10,000 test digits; higher is better except bits/dim)")
    payload["table"] = print_table(["model", "nats (logit space)", "nats (pixels 0..255)", "bits/dim", "fit s"], rows,
                                   floatfmt=".2f")
    res = payload["results"]
    if {"copula", "maf"} <= set(res):
        checks = {"copula_beats_maf": res["copula"]["test_loglik_logit"] > res["maf"]["test_loglik_logit"]}
        if "copula+ft" in res:
            checks["fine_tuned_copula_beats_maf"] = res["copula+ft"]["test_loglik_logit"] > res["maf"]["test_loglik_logit"]
        payload["acceptance"] = checks
        print(f"\nAcceptance (talk's ordering on our split): {checks}")
    save_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
