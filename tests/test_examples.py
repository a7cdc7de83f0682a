"""The examples run as scripts (the quick ones, with short settings)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_distributed_svi_runs_in_one_process():
    # It once passed fit_guide an option fit_guide does not have, which reached the model.
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "distributed_svi.py"), "--rows", "2000", "--steps", "200"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {
        line.split()[0]: line.split()[1:] for line in out.stdout.splitlines() if line[:1].isalpha()
    }
    sites = ("weights[0]", "weights[1]", "weights[2]", "bias")
    for site in sites:  # mean, posterior sd, true value: the truth within 4 sds
        mean, sd, true = map(float, rows[site])
        assert abs(mean - true) < 4 * sd, (site, mean, sd, true)
