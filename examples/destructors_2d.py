"""Deep density destructors on a 2-D toy set: fit, inspect layer by layer, fine-tune, sample.

A density destructor maps data onto the unit square so that the data become uniform; its
Jacobian determinant is its density. Shallow destructors (a Gaussian, a mixture, a tree, a
copula layer) are stacked greedily, each fitted in closed form or by EM to the output of the
previous ones, with the depth chosen on held-out data (Inouye & Ravikumar, ICML 2018).

Run::

    python examples/destructors_2d.py                 # moons, writes destructors_2d.png
    python examples/destructors_2d.py --data pinwheel --out pinwheel.png

The figure shows the data before and after each layer of the deep copula destructor (colour
follows each point), the per-layer log-likelihood curve and samples of three destructors.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pyroflows.data import TOY_DATASETS, toy
from pyroflows.destructors import DeepDestructor, GaussianDestructor
from pyroflows.infer import fine_tune


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="moons", choices=sorted(TOY_DATASETS))
    parser.add_argument("--n", type=int, default=5000, help="training points")
    parser.add_argument("--out", type=Path, default=Path("destructors_2d.png"))
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    train = toy(args.data, args.n, seed=0).double()
    test = toy(args.data, 5000, seed=1).double()

    # 1. Shallow and deep destructors, fitted without gradients.
    gaussian = GaussianDestructor(2).fit(train)
    copula = DeepDestructor(2, layer="copula", max_layers=20, layer_options={"bins": 40}).fit(train)
    tree = DeepDestructor(2, layer="tree", max_layers=20, layer_options={"max_leaves": 64}).fit(
        train
    )
    mixture = DeepDestructor(
        2, layer="mixture", max_layers=3, layer_options={"components": 10}
    ).fit(train)
    print(f"{args.data}: mean test log-likelihood (nats per point)")
    for name, model in [
        ("gaussian", gaussian),
        ("deep copula", copula),
        ("deep tree", tree),
        ("deep mixture", mixture),
    ]:
        layers = len(model.layers) - 1 if isinstance(model, DeepDestructor) else 1
        print(
            f"  {name:13s} {model.score(test):8.4f}   ({layers} layer{'s' if layers != 1 else ''})"
        )

    # 2. The greedy history: training log-likelihood never decreases; depth picked on validation.
    for entry in copula.history:
        print(
            f"  copula layer {entry['layer']:2d}: train {entry['train_loglik']:.4f}  "
            f"validation {entry['val_loglik']:.4f}"
        )

    # 3. Joint fine-tuning by gradient from the greedy start (kept only if validation improves).
    result = fine_tune(
        copula, train, epochs=30, lr=1e-3, batch_size=256, patience=5, progress=False
    )
    print(f"  fine-tuned copula: {copula.score(test):.4f} (kept greedy: {result.kept_greedy})")

    # 4. A destructor is also a Flow (uniform base + Inverse(destructor)) and a sampler;
    #    to_uniform maps data onto the cube, from_uniform maps the cube back to data.
    u = copula.to_uniform(test[:5])
    print(
        f"  round trip through the cube: {float((copula.from_uniform(u) - test[:5]).abs().max()):.2e}"
    )
    flow = copula.as_flow()
    samples = flow().sample((2000,))
    print(f"  flow log_prob of 3 samples: {flow().log_prob(samples[:3]).tolist()}")

    if args.no_plot:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pyroflows import plots

    layers = plots.plot_layers(list(copula.layers)[:5], train, direction="forward")
    layers.savefig(args.out.with_name(args.out.stem + "_layers.png"), dpi=120)
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4), layout="constrained")
    plots.plot_loglik_curve(copula.history, ax=axes[0])
    axes[0].set_title("deep copula: per-layer log-likelihood")
    for ax, (name, model) in zip(
        axes[1:], [("deep copula", copula), ("deep tree", tree), ("deep mixture", mixture)]
    ):
        points = model.sample(3000, generator=torch.Generator().manual_seed(0)).numpy()
        ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.5)
        ax.set_title(f"samples: {name}")
        ax.set_aspect("equal")
    fig.savefig(args.out, dpi=120)
    print(f"figures: {args.out} and {args.out.with_name(args.out.stem + '_layers.png')}")


if __name__ == "__main__":
    main()
