"""The 14-posterior table of issue 13 from the JSON files of two kinds of runs, side by side.

Reads ``results/posteriordb_fit_guide.json`` (``posteriordb.py --fit fit_guide``: AutoFlow and
Pyro's AutoMultivariateNormal, the one-call fit's defaults; ``--fit-guide`` takes several files,
e.g. the ODE models run apart) and any number of ``posteriordb_nuts.py`` outputs (``--nuts``; a
later file's row replaces an earlier one's), and prints one row per posterior: for each guide
the largest |mean error| in reference sds, the worst sd ratio (the one farthest from 1), PSIS
k-hat, gradient evaluations and seconds (fit_guide's mass-covering stage included: its IWAE
steps count 8 gradients each; "IWAE stage" gives the first fit's check k-hat, the stage's,
and whether its guide was kept), then the same draws PSIS-weighted where k-hat is
below the threshold ("(raw)" where it is not: the raw draws are judged); for NUTS the largest
quantile error, the largest |mean error|, gradient evaluations and seconds. "ok" marks a fit
within issue 13's target (|mean error| <= 0.1 sd, sd ratios in [0.9, 1.1]; parameters without
a variance on the log scale, see ``posteriordb_metrics.py``).

Usage::

    python benchmarks/posteriordb_table.py --nuts results/posteriordb_nuts.json > table.txt
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, format_table  # noqa: E402
from posteriordb_metrics import within_target  # noqa: E402


def _load(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["runs"] if path.exists() else []


def _worst_ratio(run: dict[str, Any], prefix: str = "") -> float:
    low, high = run[f"{prefix}sd_ratio_range"]
    if low is None or high is None or math.isnan(low):
        return math.nan
    return low if abs(math.log(low)) > abs(math.log(high)) else high


def _guide_cells(run: dict[str, Any] | None) -> list[Any]:
    if run is None:
        return ["-"] * 6
    if run.get("failed"):
        return ["failed", "-", "-", run.get("gradient_evaluations", "-"), run["seconds"], "-"]
    error = f"{run['max_abs_mean_error']:.3f}{' ok' if within_target(run) else ''}"
    grads = run.get("gradient_evaluations", 4000)
    return [error, _worst_ratio(run), run["khat"], grads, run["seconds"], _stage_cell(run)]


def _stage_cell(run: dict[str, Any]) -> str:
    """fit_guide's mass-covering stage: the first fit's check k-hat -> the stage's, and
    whether its guide was kept ("-" where it did not run)."""
    stage = run.get("mass_covering")
    if not stage:
        return "-"
    verdict = "kept" if stage["kept"] else "not kept"
    return f"{stage['first_khat']:.2f} -> {stage['khat']:.2f} {verdict}"


def _psis_cells(run: dict[str, Any] | None) -> list[Any]:
    """The PSIS-weighted verdict: max |mean err| and worst sd ratio of the weighted draws
    where k-hat trusts them, "(raw)" where it does not (the raw draws are judged)."""
    if run is None or run.get("failed") or "psis_trusted" not in run:
        return ["-", "-"]
    if not run["psis_trusted"]:
        return [f"(raw){' ok' if within_target(run, weighted=True) else ''}", "-"]
    ok = " ok" if within_target(run, weighted=True) else ""
    return [f"{run['psis_max_abs_mean_error']:.3f}{ok}", _worst_ratio(run, "psis_")]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--fit-guide", type=Path, nargs="+", default=[RESULTS_DIR / "posteriordb_fit_guide.json"]
    )
    parser.add_argument(
        "--nuts", type=Path, nargs="*", default=[RESULTS_DIR / "posteriordb_nuts.json"]
    )
    args = parser.parse_args(argv)
    fitted = {(r["posterior"], r["guide"]): r for p in args.fit_guide for r in _load(p)}
    nuts: dict[str, dict[str, Any]] = {}
    for path in args.nuts:
        if path.exists():
            for r in json.loads(path.read_text())["results"]:
                nuts[r["posterior"]] = r
    names = sorted({name for name, _ in fitted} | set(nuts))
    rows = []
    for name in names:
        n = nuts.get(name)
        if n is None:
            nuts_cells = ["no result", "-", "-", "-"]
        elif "failed" in n:
            nuts_cells = ["failed", "-", "-", "-"]
        else:
            nuts_cells = [n.get("max_quantile_error", "-"), n["max_abs_mean_error"],
                          n["gradient_evaluations"], n["seconds"]]  # fmt: skip
        rows.append(
            [name.split("-", 1)[1] if "-" in name else name]
            + _guide_cells(fitted.get((name, "AutoFlow")))
            + _psis_cells(fitted.get((name, "AutoFlow")))
            + _guide_cells(fitted.get((name, "AutoMultivariateNormal")))[:3]
            + _psis_cells(fitted.get((name, "AutoMultivariateNormal")))
            + nuts_cells
        )  # fmt: skip
    header = [
        "posterior",
        "AutoFlow fit_guide: max|mean err|", "worst sd ratio", "k-hat", "grads", "s",
        "IWAE stage: k-hat",
        "with PSIS: max|mean err|", "worst sd ratio",
        "Pyro MVN fit_guide: max|mean err|", "worst sd ratio", "k-hat",
        "with PSIS: max|mean err|", "worst sd ratio",
        "NUTS: max quantile err", "max|mean err|", "grads", "s",
    ]  # fmt: skip
    table = format_table(header, rows, floatfmt=".3g")
    print(table)
    return table


if __name__ == "__main__":
    main()
