"""The depth study's wall time outside training (issue 23), split by where it goes. Prints one JSON object.

    python benchmarks/depth_cpu_side.py                          # paper preset, 2 problems per K
    python benchmarks/depth_cpu_side.py --problems-per-k 1 --epochs 5 --profile /tmp/depth.prof

Runs ``run_depth_study`` in this process on the ``paper`` preset with some settings replaced (by
default 2 problems for each K in {2, 3, 4, 5}, all on one shard per K: 40 trainings of the
2-512-512-512-K MLP, 20 epochs) and times, with ``time.perf_counter``, every call of the functions
below. Times are exclusive: a function's time excludes the time of the timed functions it calls, so
the categories add up to the study's wall time (``other`` is what no timed function covers: the
shard runner, manifests, rows).

* ``training``: the optimiser steps (``ensemble._Chunk.step``: forward, backward, Adam);
* ``chunk_setup``: ``_Chunk.__init__`` (stacked parameters, optimiser, buffers);
* ``init_weights``: the members' initial weights (``mlp_init``);
* ``plans``: drawing the plans (``epoch_plan`` and, where present, ``epoch_plans``);
* ``trainer_other``: the rest of the trainer's chunk loop (mixing matrices, gathers, transfers,
  parameter copies, the evaluate callback's bookkeeping);
* ``problems``: drawing the problems and their training sets;
* ``grid``: building the quadrature grids; ``mmlb``: the MMLB Monte Carlo;
* ``evaluate_predict``: the trained members' labels on the grids (``predict_ensemble``);
* ``evaluate_risk``: risk, excess risk and Bayes risk from those labels;
* ``report``: results.csv and summary.md; ``figures``: the three PNG figures.

``outside_training_seconds`` = study wall time - ``training``. ``imports_seconds`` (the study's
modules, torch's optimisers and ``torch._dynamo``, which the first optimiser imports) is timed
before the study and reported apart. ``results_sha256`` is the SHA-256 of results.csv: the same
settings on the same machine must give the same value before and after any change to this path.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import inspect
import json
import platform
import tempfile
import time
from pathlib import Path

_T = {}  # category -> exclusive seconds
_STACK: list[list] = []  # [start, child seconds]


def _timed(func, category: str):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        _STACK.append([time.perf_counter(), 0.0])
        try:
            return func(*args, **kwargs)
        finally:
            start, child = _STACK.pop()
            elapsed = time.perf_counter() - start
            _T[category] = _T.get(category, 0.0) + elapsed - child
            if _STACK:
                _STACK[-1][1] += elapsed

    return wrapper


def _patch(owner, name: str, category: str) -> None:
    if not hasattr(owner, name):
        return
    raw = inspect.getattr_static(owner, name)
    if isinstance(raw, classmethod):
        setattr(owner, name, classmethod(_timed(raw.__func__, category)))
    elif isinstance(raw, staticmethod):
        setattr(owner, name, staticmethod(_timed(raw.__func__, category)))
    else:
        setattr(owner, name, _timed(raw, category))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems-per-k", type=int, default=2)
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 3, 4, 5])
    ap.add_argument("--problems-per-shard", type=int, default=None, help="default: --problems-per-k")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--hidden", type=int, nargs="+", default=[512, 512, 512])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="study folder (default: a temporary one)")
    ap.add_argument("--profile", default=None, help="also write a cProfile of the study to this file")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    import torch
    import torch._dynamo  # noqa: F401  (the first optimiser imports it; timed here, not in chunk_setup)

    from manifold_mixup import ensemble, plots, toy
    from manifold_mixup.studies import depth, report

    imports = time.perf_counter() - t0
    torch.set_num_threads(args.threads)
    cfg = depth.preset("paper", problems_per_k=args.problems_per_k, ks=tuple(args.ks), epochs=args.epochs,
                       hidden=tuple(args.hidden), problems_per_shard=args.problems_per_shard or args.problems_per_k)
    P = toy.GaussianMixtureProblem
    for owner, name, cat in [
        (ensemble._Chunk, "step", "training"), (ensemble._Chunk, "__init__", "chunk_setup"),
        (ensemble, "mlp_init", "init_weights"), (ensemble, "epoch_plan", "plans"), (ensemble, "epoch_plans", "plans"),
        (ensemble, "_train_chunk", "trainer_other"),
        (P, "random", "problems"), (P, "sample", "problems"), (P, "_build_quadrature", "grid"), (P, "mmlb", "mmlb"),
        (depth, "predict_ensemble", "evaluate_predict"), (P, "risk_from_predictions", "evaluate_risk"),
        (P, "excess_risk_from_predictions", "evaluate_risk"), (P, "bayes_risk", "evaluate_risk"),
        (depth, "summarise", "report"), (report, "write_csv", "report"),
        (plots, "figure2", "figures"), (plots, "plot_excess_by_quartile", "figures"),
        (plots, "plot_difference_over_epochs", "figures"),
    ]:
        _patch(owner, name, cat)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "study"
        prof = None
        if args.profile:
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
        t1 = time.perf_counter()
        depth.run_depth_study(cfg, out, progress=False)
        wall = time.perf_counter() - t1
        if prof is not None:
            prof.disable()
            prof.dump_stats(args.profile)
        digest = hashlib.sha256((out / "results.csv").read_bytes()).hexdigest()

    seconds = {k: round(v, 3) for k, v in sorted(_T.items(), key=lambda kv: -kv[1])}
    seconds["other"] = round(wall - sum(_T.values()), 3)
    print(json.dumps({
        "benchmark": "depth_cpu_side",
        "settings": {"preset": "paper", "problems_per_k": cfg.problems_per_k, "ks": list(cfg.ks), "epochs": cfg.epochs,
                     "hidden": list(cfg.hidden), "problems_per_shard": cfg.problems_per_shard,
                     "grid_resolution": cfg.grid_resolution, "mmlb_samples": cfg.mmlb_samples},
        "members": cfg.problems_per_k * len(cfg.ks) * len(cfg.methods),
        "study_seconds": round(wall, 3),
        "training_seconds": round(_T.get("training", 0.0), 3),
        "outside_training_seconds": round(wall - _T.get("training", 0.0), 3),
        "imports_seconds": round(imports, 3),
        "seconds": seconds,
        "results_sha256": digest,
        "torch_num_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
