"""Benchmark of the toy-problem kit: Bayes risk, risk of the paper's MLP, MMLB.

For each of ``--problems`` random problems (K = 5, N = 5 by default) it times, on a fresh
problem object (so the quadrature grid is built inside the first timing):

* ``bayes_risk_seconds``: ``problem.bayes_risk()`` including the grid build;
* ``risk_seconds``: ``problem.risk(mlp)`` for an untrained 2-512-512-512-K MLP
  (``nn.Sequential`` of Linear/ReLU, float32) on the cached grid;
* ``mmlb_seconds`` / ``mmlb_stderr``: ``problem.mmlb()`` with the default sample count.

and prints one JSON object with the medians. Usage: ``python benchmarks/toy.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import manifold_mixup as mm
from manifold_mixup.paper.toy import DEFAULT_MMLB_SAMPLES, GaussianMixtureProblem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=5)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--components", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rows = []
    for i in range(args.problems):
        problem = GaussianMixtureProblem.random(args.classes, args.components, args.seed + i)
        mlp = mm.models.mlp(args.classes, generator=torch.Generator().manual_seed(args.seed + i)).eval()
        t0 = time.perf_counter()
        r_star = problem.bayes_risk()
        t1 = time.perf_counter()
        r = problem.risk(mlp)
        t2 = time.perf_counter()
        m = problem.mmlb(DEFAULT_MMLB_SAMPLES, args.seed + i)
        t3 = time.perf_counter()
        rows.append(
            dict(
                bayes=t1 - t0, risk=t2 - t1, mmlb=t3 - t2, mmlb_stderr=m.stderr,
                mmlb_normalised_stderr=m.normalised_stderr, grid=problem.grid().points.shape[0],
                bayes_risk=r_star, mlp_risk=r,
            )
        )

    def med(key: str) -> float:
        return statistics.median(row[key] for row in rows)

    print(
        json.dumps(
            {
                "benchmark": "toy",
                "num_classes": args.classes,
                "components_per_class": args.components,
                "problems": args.problems,
                "bayes_risk_seconds": round(med("bayes"), 4),
                "risk_seconds": round(med("risk"), 4),
                "mmlb_seconds": round(med("mmlb"), 4),
                "mmlb_stderr": round(med("mmlb_stderr"), 6),
                "mmlb_normalised_stderr": round(med("mmlb_normalised_stderr"), 6),
                "mmlb_samples": DEFAULT_MMLB_SAMPLES,
                "grid_points_median": int(med("grid")),
                "grid_resolution": problem.grid_resolution,
                "bayes_risk_median": round(med("bayes_risk"), 4),
                "torch_num_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "machine": platform.processor() or platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
