r"""MNIST density estimation: the talk's table (Gaussian, MADE, MADE MoG, RealNVP, MAF, MAF MoG,
deep copula destructor greedy and fine-tuned), NSF, the multi-scale image flows Glow and
RealNVP, and PixelCNN.

Protocol (``../shared/data/README.md``): train on the 5,000 training digits
(``mnist_train_5k.npz``), test on the official 10,000 test digits (``mnist_test_10k.npz``);
dequantise (``(k + U(0,1)) / 256``, seed 0 for training and 1 for test) and logit-transform
with alpha = 1e-6. Each model is fitted in logit space; every model's selection (destructor
depth, early stopping) uses a 10% validation split of the training digits only. Reported:
mean test log-likelihood in nats in logit space (the space of the talk's table: Gaussian
-1367, MADE -1385, MADE MoG -1042, RealNVP -1329, MAF -1300, MAF MoG -1100, copula -1028 on
the full MNIST, 50k training digits), in the original pixel space ``[0,256)^784`` (the logit
and the 1/256 scaling Jacobians added), and bits per dimension; number of layers and fit time
on this machine.

The vector models (``made``, ``made-mog``, ``realnvp``, ``maf``, ``maf-mog``, ``nsf``; sizes,
learning rates, weight decay and time budgets in :data:`VECTOR`) see the data through a fixed
standardisation layer, train with Adam on batches of 128 under a per-model time budget (minutes
on one CPU thread, ``--minutes-scale`` scales them) and stop early on the validation split;
the training digits are dequantised afresh every epoch (``--fixed-noise``: one draw, which
the networks memorise within a few epochs: with the same settings and patience 5, MADE,
RealNVP and MAF then stopped at test -1499, -1425 and -1469 nats, below the Gaussian).
``made``/``made-mog`` are :mod:`pyroflows.density` models (one MADE, so one layer);
``maf-mog`` is MAF's layers on a MADE-MoG base. ``--talk`` runs exactly the talk's rows in one
run (budgets of 25 minutes in all; about 20 minutes on one loaded CPU thread, as early stopping
ends some rows sooner) and adds the talk's numbers as a column.

Also measured: the time to fit one copula layer on 5000 x 784 (the acceptance bound:
seconds, not minutes).

Image flows (``glow``, ``realnvp-image``) model the (1, 28, 28) digits directly: they are trained
on the lower bound on the discrete log-likelihood :math:`\log P(k)` with variational
dequantisation (Flow++; ``--dequantization uniform`` for RealNVP's and Glow's uniform noise)
after a logit transform with alpha = 0.05 (RealNVP's; its Jacobian is included), with Adam, a
linear warm-up, a time budget and early stopping on the 10% validation split. Reported: the test
bound in nats and bits/dim (one noise draw per test digit, seed 1) and, for the same model, the
uniform-dequantisation bound, which is what the other rows' pixel-space numbers are.
``--image-config small`` (default) trains each image flow for at most 11 minutes on one CPU
thread (both rows and their evaluation: about 25 minutes); ``--image-config gpu --device cuda``
is the larger configuration (Glow with 2 levels of 16 steps and 256 channels, RealNVP with
3 scales and 4 residual blocks of 64 channels, a 4-coupling dequantiser, up to 300 epochs or 2
hours each). ``--image-epochs N`` caps the epochs of every image model (the time budget still
applies), for comparisons at equal epochs.

``pixelcnn`` is a :mod:`pyroflows.density` PixelCNN (a discretised mixture of 5 logistics per
pixel over the 256 levels; small: 32 feature maps, 2 residual blocks, 4 minutes) trained by
``fit`` on the integer levels with the image flows' warm-up, batch size and early stopping; its
``log_prob`` is the exact discrete log-likelihood, so its bits/dim (``-log P(k) / (784 log 2)``)
needs no dequantisation and compares directly with the flows' bounds.

Usage::

    python benchmarks/mnist.py --talk --patience 10   # the talk's table -> results/mnist_talk.json
    python benchmarks/mnist.py                 # every row: the talk's, nsf and the image models
    python benchmarks/mnist.py --quick         # smoke run: 1,000 / 1,000 digits, tiny budgets
    python benchmarks/mnist.py --data /path/to/mnist_dir --models gaussian copula
    python benchmarks/mnist.py --models glow realnvp-image          # image flows, ~25 min on CPU
    python benchmarks/mnist.py --models glow realnvp-image --image-config gpu --device cuda
    python benchmarks/mnist.py --models glow realnvp-image --image-epochs 5   # equal-epoch check
    python benchmarks/mnist.py --models pixelcnn                               # ~4 min on CPU

Results: ``benchmarks/results/mnist.json`` (rewritten after every model; runs of the image
models alone write ``mnist_images.json`` and ``--talk`` runs ``mnist_talk.json`` instead, so they
do not replace the other rows).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, count_parameters, machine_info, print_table, save_json, set_threads  # noqa: E402

import pyroflows  # noqa: E402
from pyroflows.data.mnist import MNISTNotFoundError, bits_per_dim, load_mnist, preprocess  # noqa: E402
from pyroflows.density import DensityBase  # noqa: E402
from pyroflows.destructors import (  # noqa: E402
    CopulaDestructor,
    DeepDestructor,
    GaussianDestructor,
    NormalCdfDestructor,
)
from pyroflows.infer import (  # noqa: E402
    Callback,
    Dequantized,
    FitResult,
    FitState,
    FreshData,
    StepBudget,
    fine_tune,
    fit,
)
from pyroflows.infer.fitting.dequantization import (  # noqa: E402
    UniformDequantizer,
    VariationalDequantizer,
    discrete_bits_per_dim,
    discrete_log_likelihood,
)
from pyroflows.transforms import ElementwiseAffine  # noqa: E402

IMAGE_FLOWS = ["glow", "realnvp-image"]
#: Models of the (1, 28, 28) digits' 8-bit levels (bits/dim of the discrete likelihood).
IMAGE_MODELS = [*IMAGE_FLOWS, "pixelcnn"]
#: The talk's table (Papamakarios, Pavlakou & Murray, NeurIPS 2017, Table 1, and the deep copula
#: destructor of Inouye & Ravikumar, ICML 2018), test log-likelihood in logit space on full MNIST.
TALK = {
    "gaussian": -1367.0,
    "made": -1385.0,
    "made-mog": -1042.0,
    "realnvp": -1329.0,
    "maf": -1300.0,
    "maf-mog": -1100.0,
    "copula": -1028.0,
    "copula+ft": None,
}
TALK_MODELS = list(TALK)
#: Vector models fitted with a time budget: builder ("flow" preset or "density" model), options,
#: Adam learning rate and weight decay, and minutes on one loaded CPU thread.
VECTOR = {
    "made": {
        "builder": "density",
        "preset": "made",
        "options": {"hidden": (1024,)},
        "lr": 1e-3,
        "weight_decay": 1e-5,
        "minutes": 3.0,
    },
    "made-mog": {
        "builder": "density",
        "preset": "made-mog",
        "options": {"hidden": (512,), "components": 10},
        "lr": 1e-3,
        "weight_decay": 1e-5,
        "minutes": 5.0,
    },
    "realnvp": {
        "builder": "flow",
        "preset": "realnvp",
        "options": {"transforms": 6, "hidden": (256, 256)},
        "lr": 1e-3,
        "weight_decay": 1e-5,
        "minutes": 4.0,
    },
    "maf": {
        "builder": "flow",
        "preset": "maf",
        "options": {"transforms": 5, "hidden": (512,)},
        "lr": 1e-3,
        "weight_decay": 1e-5,
        "minutes": 6.0,
    },
    "maf-mog": {
        "builder": "flow",
        "preset": "maf-mog",
        "options": {"transforms": 5, "hidden": (512,), "components": 10},
        "lr": 1e-3,
        "weight_decay": 1e-5,
        "minutes": 7.0,
    },
    "nsf": {
        "builder": "flow",
        "preset": "nsf",
        "options": {"transforms": 3, "hidden": (256, 256), "bins": 8, "bound": 5.0},
        "lr": 3e-4,
        "weight_decay": 0.0,
        "minutes": 12.0,
    },
}
MODELS = [*TALK_MODELS, "nsf", *IMAGE_MODELS]
COPULA = {"bins": 80, "alpha": 5.0}
IMAGE_SHAPE = (1, 28, 28)
#: Image-flow configurations: preset options, dequantiser, batch size, epoch and time budgets.
IMAGE_CONFIGS = {
    "small": {
        "glow": {"levels": 2, "transforms": 4, "hidden": (48, 48)},
        "realnvp-image": {"levels": 2, "transforms": 2, "hidden": (32,)},
        "pixelcnn": {
            "likelihood": "logistic",
            "mixtures": 5,
            "hidden": 32,
            "blocks": 2,
            "minutes": 4.0,
        },
        "dequantizer": {"transforms": 2, "hidden": (16, 16)},
        "batch_size": 64,
        "epochs": 100,
        "minutes": 11.0,
    },
    "gpu": {
        "glow": {"levels": 2, "transforms": 16, "hidden": (256, 256)},
        "realnvp-image": {"levels": 3, "transforms": 3, "hidden": (64, 64, 64, 64)},
        "pixelcnn": {
            "likelihood": "logistic",
            "mixtures": 5,
            "hidden": 128,
            "blocks": 8,
            "minutes": 120.0,
        },
        "dequantizer": {"transforms": 4, "hidden": (64, 64)},
        "batch_size": 128,
        "epochs": 300,
        "minutes": 120.0,
    },
    "quick": {
        "glow": {"levels": 2, "transforms": 1, "hidden": (8, 8)},
        "realnvp-image": {"levels": 2, "transforms": 1, "hidden": (8,)},
        "pixelcnn": {
            "likelihood": "logistic",
            "mixtures": 2,
            "hidden": 8,
            "blocks": 1,
            "minutes": 1.0,
        },
        "dequantizer": {"transforms": 1, "hidden": (8, 8)},
        "batch_size": 32,
        "epochs": 1,
        "minutes": 1.0,
        "max_steps": 5,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=None, help="directory with the MNIST .npz files"
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        choices=MODELS,
        help="rows to run (default: the talk's rows, then nsf, glow, realnvp-image and pixelcnn)",
    )
    parser.add_argument(
        "--talk",
        action="store_true",
        help="exactly the talk's rows in one run, with the talk's numbers; writes mnist_talk.json",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1,000/1,000 digits, tiny budgets"
    )
    parser.add_argument(
        "--max-layers", type=int, default=None, help="deep copula layer budget (default 10)"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="flow / fine-tuning epoch budget (default 100)"
    )
    parser.add_argument(
        "--ft-epochs", type=int, default=None, help="copula fine-tuning epochs (default 60)"
    )
    parser.add_argument(
        "--patience", type=int, default=None, help="early-stopping patience (default 5)"
    )
    parser.add_argument(
        "--fixed-noise",
        action="store_true",
        help="train the vector models on one dequantisation of the digits (default: fresh each epoch)",
    )
    parser.add_argument(
        "--minutes-scale",
        type=float,
        default=1.0,
        help="multiplies every vector model's time budget (see VECTOR)",
    )
    parser.add_argument(
        "--maf-hidden", type=int, nargs="+", default=None, help="override MAF's MADE widths"
    )
    parser.add_argument("--maf-lr", type=float, default=None, help="override MAF's learning rate")
    parser.add_argument(
        "--nsf-hidden", type=int, nargs="+", default=None, help="override NSF's MADE widths"
    )
    parser.add_argument("--nsf-lr", type=float, default=None, help="override NSF's learning rate")
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help="override every vector model's weight decay",
    )
    parser.add_argument("--ft-lr", type=float, default=1e-3, help="fine-tuning learning rate")
    parser.add_argument(
        "--image-config",
        choices=["small", "gpu"],
        default="small",
        help="image-flow size: 'small' (CPU, ~11 min each) or 'gpu' (the larger one)",
    )
    parser.add_argument(
        "--dequantization", choices=["variational", "uniform"], default="variational"
    )
    parser.add_argument("--image-lr", type=float, default=1e-3)
    parser.add_argument(
        "--image-minutes",
        type=float,
        default=None,
        help="time budget per image model (default: the config's, 11 min per flow, 4 for pixelcnn)",
    )
    parser.add_argument(
        "--image-epochs",
        type=int,
        default=None,
        help="epoch cap per image model (fit's epochs; the time budget still applies)",
    )
    parser.add_argument("--image-logit-alpha", type=float, default=0.05)
    parser.add_argument("--device", default="cpu", help="device of the image models (cpu, cuda)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON results (default results/mnist.json; mnist_images.json for image models only)",
    )
    args = parser.parse_args(argv)
    if args.talk and args.models is not None:
        parser.error("--talk runs the talk's rows; leave out --models")
    if args.models is None:
        args.models = TALK_MODELS if args.talk else MODELS
    if args.out is None:
        only_images = set(args.models) <= set(IMAGE_MODELS)
        args.out = RESULTS_DIR / (
            "mnist_talk.json" if args.talk else "mnist_images.json" if only_images else "mnist.json"
        )
    defaults = (
        {"max_layers": 3, "epochs": 2, "ft_epochs": 2, "patience": 2, "train": 1000, "test": 1000}
        if args.quick
        else {
            "max_layers": 10,
            "epochs": 100,
            "ft_epochs": 60,
            "patience": 5,
            "train": None,
            "test": None,
        }
    )
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.vector = copy.deepcopy(VECTOR)
    for name, hidden, lr in (
        ("maf", args.maf_hidden, args.maf_lr),
        ("nsf", args.nsf_hidden, args.nsf_lr),
    ):
        if hidden is not None:
            args.vector[name]["options"]["hidden"] = tuple(hidden)
        if lr is not None:
            args.vector[name]["lr"] = lr
    for spec in args.vector.values():
        if args.weight_decay is not None:
            spec["weight_decay"] = args.weight_decay
        if args.quick:
            spec["options"].update(
                hidden=(32,), **({"transforms": 2} if "transforms" in spec["options"] else {})
            )
    return args


@torch.no_grad()
def mean_log_prob(log_prob, y: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    return torch.cat([log_prob(chunk).double() for chunk in y.split(1000)])


@torch.no_grad()
def image_bound(
    flow, dequantizer, k: torch.Tensor, alpha: float, seed: int, chunk: int = 500
) -> torch.Tensor:  # noqa: ANN001
    """Per-digit lower bound on log P(k) (nats), one noise draw per digit from a fixed seed."""
    torch.manual_seed(seed)
    return torch.cat(
        [
            discrete_log_likelihood(flow().log_prob, part, dequantizer, alpha).double().cpu()
            for part in k.split(chunk)
        ]
    )


def build_vector_model(name: str, spec: dict, ytr: torch.Tensor) -> pyroflows.Flow:
    """A flow preset, or a density model as the base of a flow, behind a fixed standardisation
    layer fitted to the training data (its Jacobian is part of ``log_prob``)."""
    options = dict(spec["options"])
    if spec["builder"] == "flow":
        return pyroflows.flows.build(spec["preset"], ytr.shape[1], standardize=ytr, **options)
    model = pyroflows.density.build(spec["preset"], ytr.shape[1], **options)
    return pyroflows.Flow(
        [ElementwiseAffine.from_data(ytr.double(), trainable=False)], DensityBase(model)
    )


class EpochLog(Callback):
    """Prints one line per epoch (``value`` turns a mean log-likelihood into the shown unit)
    and counts the optimizer steps."""

    def __init__(
        self, name: str, value: Callable[[float], float] = float, unit: str = "nats"
    ) -> None:
        self.name, self.value, self.unit, self.steps = name, value, unit, 0

    def on_epoch_end(self, state: FitState) -> bool:
        self.steps = state.step
        h = state.history[-1]
        print(
            f"  [{self.name}] epoch {h['epoch']}: train {self.value(h['train_loglik']):.3f}, "
            f"val {self.value(h['val_loglik']):.3f} {self.unit} ({state.elapsed:.0f} s)",
            flush=True,
        )
        return False


def fit_vector_model(
    name: str, spec: dict, ytr: torch.Tensor, images: torch.Tensor, args: argparse.Namespace
) -> tuple[pyroflows.Flow, dict]:
    """``fit`` with Adam on mini-batches of 128, a time budget, early stopping on a 10%
    validation split (seed 0) with ``args.patience``; the flow ends holding its best-validation
    parameters.

    Unless ``args.fixed_noise``, the training digits ``images`` are dequantised afresh every
    epoch after the first (seed 1000 + epoch; as image flows are trained), which keeps the
    network from memorising one draw of the noise; ``ytr`` (seed 0) gives the first epoch's
    and the validation digits and the standardisation."""
    torch.manual_seed(0)
    start = time.perf_counter()
    flow = build_vector_model(name, spec, ytr).float()
    minutes = spec["minutes"] * args.minutes_scale

    def draw(epoch: int, index: torch.Tensor) -> torch.Tensor | None:
        if args.fixed_noise or epoch == 1:
            return None
        return preprocess(images[index.cpu()], seed=1000 + epoch)[0]

    log = EpochLog(name)
    result = fit(
        flow,
        ytr,
        epochs=args.epochs,
        batch_size=128,
        lr=spec["lr"],
        weight_decay=spec["weight_decay"],
        validation=0.1,
        patience=args.patience,
        clip_grad=5.0,
        seed=0,
        max_time=60 * minutes,
        callbacks=[FreshData(draw), log, *([StepBudget(5)] if args.quick else [])],
        progress=False,
    )
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in spec["options"].items()}
    history = result.history
    return flow, {
        "epochs_run": len(history),
        "best_epoch": result.best_epoch,
        "steps": log.steps,
        "params": count_parameters(flow),
        "options": options,
        "lr": spec["lr"],
        "weight_decay": spec["weight_decay"],
        "time_budget_minutes": minutes,
        "stopped_by": result.stop_reason,
        "layers": options.get("transforms", 1),
        "history": history,
        "fit_loop_seconds": time.perf_counter() - start,
        "note": f"({len(history)} epochs, best {result.best_epoch}, {result.stop_reason})",
    }


def fit_image_model(
    name: str,
    model: torch.nn.Module,
    data: torch.Tensor,
    args: argparse.Namespace,
    config: dict,
    minutes: float,
    epochs: int,
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[FitResult, list[dict], int]:
    """``fit`` with the image models' settings (batch size of ``config``, a linear warm-up over
    200 steps, a time budget, early stopping on a 10% validation split); returns the result,
    its history in bits/dim and the number of optimizer steps."""
    dims = math.prod(IMAGE_SHAPE)
    log = EpochLog(name, lambda loglik: discrete_bits_per_dim(loglik, dims), "bits/dim")
    budget = [StepBudget(config["max_steps"])] if "max_steps" in config else []
    result = fit(
        model,
        data,
        epochs=epochs,
        optimizer=optimizer,
        batch_size=config["batch_size"],
        lr=args.image_lr,
        validation=0.1,
        patience=args.patience,
        clip_grad=50.0 * dims,
        seed=0,
        max_time=60 * minutes,
        schedule_interval="step",
        schedule=lambda opt: torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / 200)
        ),
        callbacks=[log, *budget],
        progress=False,
    )
    history = [
        {
            "epoch": h["epoch"],
            "train_bits_per_dim": discrete_bits_per_dim(h["train_loglik"], dims),
            "val_bits_per_dim": discrete_bits_per_dim(h["val_loglik"], dims),
            "seconds": h["seconds"],
        }
        for h in result.history
    ]
    return result, history, log.steps


def fit_image_flow(
    name: str, args: argparse.Namespace, ktr: torch.Tensor, kte: torch.Tensor
) -> dict:
    """Train an image preset and its dequantiser with ``fit`` on the bound (a linear warm-up
    over 200 steps, a time budget, early stopping on a 10% validation split scored under a
    fixed noise seed); evaluate on the test digits."""
    config = IMAGE_CONFIGS["quick" if args.quick else args.image_config]
    minutes = args.image_minutes if args.image_minutes is not None else config["minutes"]
    epochs = args.image_epochs if args.image_epochs is not None else config["epochs"]
    device = torch.device(args.device)
    dims = math.prod(IMAGE_SHAPE)
    alpha = args.image_logit_alpha
    torch.manual_seed(0)
    start = time.perf_counter()
    flow = pyroflows.flows.build(name, IMAGE_SHAPE, **config[name]).to(device)
    variational = args.dequantization == "variational"
    dequantizer = (
        VariationalDequantizer(IMAGE_SHAPE, **config["dequantizer"])
        if variational
        else UniformDequantizer()
    ).to(device)
    # Glow's data-dependent ActNorm initialisation, on 512 digits drawn at random (the file's
    # first 512 gave a worse start: 0.1-0.2 bits/dim after 5 epochs over 4 seeds).
    init = torch.randperm(len(ktr), generator=torch.Generator().manual_seed(0))[:512]
    with torch.no_grad():
        Dequantized(flow, UniformDequantizer(), alpha)().log_prob(ktr[init].to(device))
    # fit's loss is per image, D = 784 times the per-pixel loss this benchmark always trained on.
    # Adam is invariant to that scale only if its eps scales too (m/(sqrt(v) + eps)), and the
    # gradient clip likewise: with both scaled the steps are exactly the per-pixel ones.
    model = Dequantized(flow, dequantizer, alpha)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.image_lr, eps=1e-8 * dims)
    result, history, steps = fit_image_model(
        name, model, ktr, args, config, minutes, epochs, optimizer
    )
    seconds = time.perf_counter() - start
    kte = kte.to(device)
    evaluation = time.perf_counter()
    test = image_bound(flow, dequantizer, kte, alpha, seed=1)
    uniform = (
        test if not variational else image_bound(flow, UniformDequantizer(), kte, alpha, seed=1)
    )
    evaluation = time.perf_counter() - evaluation
    return {
        "test_loglik_logit": math.nan,
        "test_loglik_unit": float(test.mean()) + dims * math.log(256),
        "test_loglik_pixel": float(test.mean()),
        "bits_per_dim": discrete_bits_per_dim(test.mean(), dims),
        "test_loglik_sem": float(test.std() / math.sqrt(len(test))),
        "bits_per_dim_uniform_dequantization": discrete_bits_per_dim(uniform.mean(), dims),
        "fit_seconds": seconds,
        "test_evaluation_seconds": evaluation,
        "epochs_run": len(history),
        "steps": steps,
        "best_epoch": result.best_epoch,
        "stopped_by": result.stop_reason,
        "params": count_parameters(flow),
        "dequantizer_params": count_parameters(dequantizer),
        "layers": config[name]["levels"] * config[name]["transforms"],
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in config[name].items()},
        "dequantization": args.dequantization,
        "dequantizer": {
            k: list(v) if isinstance(v, tuple) else v for k, v in config["dequantizer"].items()
        },
        "image_logit_alpha": alpha,
        "lr": args.image_lr,
        "batch_size": config["batch_size"],
        "epoch_budget": epochs,
        "time_budget_minutes": minutes,
        "device": str(device),
        "history": history,
        "note": f"({len(history)} epochs, {steps} steps, {result.stop_reason}; uniform-dequantisation "
        f"bound {discrete_bits_per_dim(uniform.mean(), dims):.3f} bits/dim)",
    }


def fit_pixelcnn(args: argparse.Namespace, ktr: torch.Tensor, kte: torch.Tensor) -> dict:
    """Train a PixelCNN (discretised logistic mixture over the 256 levels) with ``fit`` on the
    integer levels themselves: its ``log_prob`` is the exact discrete log-likelihood, so no
    dequantisation; the same warm-up, time budget and early stopping as the image flows."""
    config = IMAGE_CONFIGS["quick" if args.quick else args.image_config]
    options = {k: v for k, v in config["pixelcnn"].items() if k != "minutes"}
    minutes = (
        args.image_minutes if args.image_minutes is not None else config["pixelcnn"]["minutes"]
    )
    epochs = args.image_epochs if args.image_epochs is not None else config["epochs"]
    device = torch.device(args.device)
    dims = math.prod(IMAGE_SHAPE)
    torch.manual_seed(0)
    start = time.perf_counter()
    model = pyroflows.density.build("pixelcnn", IMAGE_SHAPE, levels=256, **options).to(device)
    result, history, steps = fit_image_model(
        "pixelcnn", model, ktr.float(), args, config, minutes, epochs
    )
    seconds = time.perf_counter() - start
    evaluation = time.perf_counter()
    with torch.no_grad():  # exact log P(k), nats per digit
        test = torch.cat(
            [model().log_prob(part.to(device).float()).double().cpu() for part in kte.split(500)]
        )
    evaluation = time.perf_counter() - evaluation
    return {
        "test_loglik_logit": math.nan,
        "test_loglik_unit": float(test.mean()) + dims * math.log(256),
        "test_loglik_pixel": float(test.mean()),
        "bits_per_dim": discrete_bits_per_dim(test.mean(), dims),
        "test_loglik_sem": float(test.std() / math.sqrt(len(test))),
        "fit_seconds": seconds,
        "test_evaluation_seconds": evaluation,
        "epochs_run": len(history),
        "steps": steps,
        "best_epoch": result.best_epoch,
        "stopped_by": result.stop_reason,
        "params": count_parameters(model),
        "layers": options["blocks"] + 1,
        "options": options,
        "lr": args.image_lr,
        "batch_size": config["batch_size"],
        "epoch_budget": epochs,
        "time_budget_minutes": minutes,
        "device": str(device),
        "history": history,
        "note": f"({len(history)} epochs, {steps} steps, {result.stop_reason}; exact discrete likelihood)",
    }


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
    payload: dict = {
        "benchmark": "mnist",
        "machine": machine_info(),
        "settings": {
            "train_digits": len(ytr),
            "test_digits": len(yte),
            "split": "train: mnist_train_5k; test: mnist_test_10k",
            "dequantize_seed": {"train": 0, "test": 1},
            "logit_alpha": 1e-6,
            "threads": threads,
            "validation": 0.1,
            "epochs": args.epochs,
            "patience": args.patience,
            "max_layers": args.max_layers,
            "copula_layer": COPULA,
            "fine_tune_epochs": args.ft_epochs,
            "fine_tune_lr": args.ft_lr,
            "batch_size": {"flows": 128, "fine_tune": 256},
            "minutes_scale": args.minutes_scale,
            "vector_training_noise": "one dequantisation (seed 0)"
            if args.fixed_noise
            else "fresh dequantisation each epoch (seed 1000 + epoch)",
            "vector_models": {
                name: {
                    k: (
                        {a: list(b) if isinstance(b, tuple) else b for a, b in v.items()}
                        if k == "options"
                        else v
                    )
                    for k, v in spec.items()
                }
                for name, spec in args.vector.items()
                if name in args.models
            },
        },
        "results": {},
    }
    if args.talk:
        payload["talk"] = {
            "source": "Papamakarios et al. 2017 (Table 1) and Inouye & Ravikumar 2018, full "
            "MNIST (50k train), logit space, nats",
            "loglik": TALK,
        }
    print(f"mnist: {len(ytr)} train / {len(yte)} test digits, {threads} thread(s)", flush=True)
    if any(name in IMAGE_MODELS for name in args.models):
        payload["settings"]["image_flows"] = {
            "config": "quick" if args.quick else args.image_config,
            "dequantization": args.dequantization,
            "logit_alpha": args.image_logit_alpha,
            "device": args.device,
            "epochs": args.image_epochs,
            "minutes": args.image_minutes,
        }

    if not set(args.models) <= set(IMAGE_MODELS):
        # Acceptance timing: one copula layer on the (init-mapped) training digits.
        u = NormalCdfDestructor(d).fit(ytr).to_uniform(ytr).detach()
        start = time.perf_counter()
        CopulaDestructor(d, **COPULA).fit(u)
        payload["copula_layer_fit_seconds"] = {
            "seconds": time.perf_counter() - start,
            "shape": list(u.shape),
            "threads": threads,
            "dtype": "float64",
        }
        print(
            f"one copula layer on {tuple(u.shape)}: {payload['copula_layer_fit_seconds']['seconds']:.2f} s",
            flush=True,
        )

    def record(name: str, log_prob, seconds: float, **extra) -> None:  # noqa: ANN001
        lp = mean_log_prob(log_prob, yte)
        logit_space = float(lp.mean())
        unit = float((lp + ladj_te).mean())  # dequantised pixels scaled to [0, 1]
        pixel = unit - d * math.log(256)  # the original 0..255 pixel scale
        payload["results"][name] = {
            "test_loglik_logit": logit_space,
            "test_loglik_unit": unit,
            "test_loglik_pixel": pixel,
            "bits_per_dim": bits_per_dim(unit, d),
            "test_loglik_sem": float(lp.std() / math.sqrt(len(lp))),
            "fit_seconds": seconds,
            **extra,
        }
        print(
            f"[{name}] logit {logit_space:.1f} nats, pixel {pixel:.1f} nats, {bits_per_dim(unit, d):.3f} bits/dim, "
            f"{seconds:.1f} s {extra.get('note', '')}",
            flush=True,
        )
        save_json(args.out, payload)

    deep = None
    for name in args.models:
        start = time.perf_counter()
        if name in IMAGE_MODELS:
            ktr = torch.as_tensor(train_images).reshape(-1, *IMAGE_SHAPE)
            kte = torch.as_tensor(test_images).reshape(-1, *IMAGE_SHAPE)
            row = (
                fit_pixelcnn(args, ktr, kte)
                if name == "pixelcnn"
                else fit_image_flow(name, args, ktr, kte)
            )
            payload["results"][name] = row
            print(
                f"[{name}] pixel {row['test_loglik_pixel']:.1f} nats, {row['bits_per_dim']:.3f} bits/dim, "
                f"{row['fit_seconds']:.1f} s {row['note']}",
                flush=True,
            )
            save_json(args.out, payload)
            continue
        if name == "gaussian":
            model = GaussianDestructor(d).fit(ytr)
            record(
                name,
                model.log_prob,
                time.perf_counter() - start,
                params=d + d * (d + 1) // 2,
                layers=1,
            )
        elif name == "copula" or (name == "copula+ft" and deep is None):
            deep = DeepDestructor(
                d, layer="copula", max_layers=args.max_layers, layer_options=COPULA, progress=False
            ).fit(ytr)
            greedy_seconds = time.perf_counter() - start
            if name == "copula":
                record(
                    name,
                    deep.log_prob,
                    greedy_seconds,
                    layers=len(deep.layers) - 1,
                    history=deep.history,
                    note=f"({len(deep.layers) - 1} copula layers)",
                )
                continue
        if name == "copula+ft":
            tuned = copy.deepcopy(deep)
            start = time.perf_counter()
            tuning = fine_tune(
                tuned,
                ytr,
                epochs=args.ft_epochs,
                batch_size=256,
                lr=args.ft_lr,
                validation=0.1,
                patience=args.patience,
                seed=0,
                progress=False,
            )
            seconds = time.perf_counter() - start
            greedy = payload["results"].get("copula", {}).get("fit_seconds", 0.0)
            record(
                name,
                tuned.log_prob,
                seconds + greedy,
                fine_tune_seconds=seconds,
                epochs_run=len(tuning.history),
                best_epoch=tuning.best_epoch,
                params=count_parameters(tuned),
                layers=len(deep.layers) - 1,
                note=f"(greedy + {len(tuning.history)} epochs of fine-tuning)",
            )
        elif name in args.vector:
            flow, info = fit_vector_model(
                name, args.vector[name], ytr, torch.as_tensor(train_images), args
            )
            record(
                name, lambda y, f=flow: f().log_prob(y.float()), time.perf_counter() - start, **info
            )

    header = ["model", "layers", "nats (logit space)", "nats (pixels 0..255)", "bits/dim", "fit s"]
    rows = [
        [
            name,
            r.get("layers", ""),
            r["test_loglik_logit"],
            r["test_loglik_pixel"],
            r["bits_per_dim"],
            r["fit_seconds"],
        ]
        for name, r in payload["results"].items()
    ]
    if args.talk:
        header.insert(3, "talk (full MNIST)")
        for row in rows:
            row.insert(3, "" if TALK.get(row[0]) is None else f"{TALK[row[0]]:.0f}")
    print(
        f"\nMNIST test log-likelihood ({len(yte):,} test digits, {len(ytr):,} training digits; higher is "
        "better except bits/dim)"
    )
    payload["table"] = print_table(header, rows, floatfmt=".2f")
    res = payload["results"]
    if {"copula", "maf"} <= set(res):
        checks = {
            "copula_beats_maf": res["copula"]["test_loglik_logit"] > res["maf"]["test_loglik_logit"]
        }
        if "copula+ft" in res:
            checks["fine_tuned_copula_beats_maf"] = (
                res["copula+ft"]["test_loglik_logit"] > res["maf"]["test_loglik_logit"]
            )
        payload["acceptance"] = checks
        print(f"\nAcceptance (talk's ordering on our split): {checks}")
    save_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
