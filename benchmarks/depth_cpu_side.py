"""The depth study's wall time outside training (issue 23), split by where it goes. Prints one JSON object.

    python benchmarks/depth_cpu_side.py                          # paper preset, 2 problems per K
    python benchmarks/depth_cpu_side.py --problems-per-k 1 --epochs 5 --profile /tmp/depth.prof
    python benchmarks/depth_cpu_side.py --compare /path/to/old/src --repeats 3   # old and new code, same run

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

With ``--device cuda`` every timer waits for the device before reading the clock (so the device's
work is charged to the function that queued it; the waits themselves cost a little).

``outside_training_seconds`` = study wall time - ``training``. ``imports_seconds`` (the study's
modules, torch's optimisers and ``torch._dynamo``, which the first optimiser imports) is timed
before the study and reported apart. ``results_sha256`` is the SHA-256 of results.csv: the same
settings on the same machine must give the same value before and after any change to this path.

``--compare OLD_SRC`` runs the study ``--repeats`` times with the package at ``OLD_SRC`` (a ``src``
folder, e.g. from ``git archive``) and with this checkout's, alternating, each in a fresh process,
and prints one JSON line per run and a summary: each version's median seconds per category, the
median of the per-round ratios new / old of the time outside training, and whether every run's
results.csv was the same.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_T = {}  # category -> exclusive seconds
_STACK: list[list] = []  # [start, child seconds]
_SYNC = [lambda: None]  # waits for the device before each clock reading (cuda: torch.cuda.synchronize)


def _timed(func, category: str):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        _SYNC[0]()
        _STACK.append([time.perf_counter(), 0.0])
        try:
            return func(*args, **kwargs)
        finally:
            _SYNC[0]()
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
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (then every timer waits for the device)")
    ap.add_argument("--out", default=None, help="study folder (default: a temporary one)")
    ap.add_argument("--profile", default=None, help="also write a cProfile of the study to this file")
    ap.add_argument("--compare", default=None, metavar="OLD_SRC", help="also run the package in this src folder")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of --compare (old then new in each)")
    args = ap.parse_args(argv)
    if args.compare:
        return _compare(args, [a for a in (argv if argv is not None else sys.argv[1:])])

    t0 = time.perf_counter()
    import torch
    import torch._dynamo  # noqa: F401  (the first optimiser imports it; timed here, not in chunk_setup)

    from manifold_mixup.paper import ensemble, plots, toy
    from manifold_mixup.paper.studies import depth

    imports = time.perf_counter() - t0
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.device.startswith("cuda"):
        torch.zeros(1, device=args.device).sum().item()  # the CUDA context, before any timer
        _SYNC[0] = torch.cuda.synchronize
    device_init = time.perf_counter() - t0
    cfg = depth.preset("paper", problems_per_k=args.problems_per_k, ks=tuple(args.ks), epochs=args.epochs,
                       hidden=tuple(args.hidden), problems_per_shard=args.problems_per_shard or args.problems_per_k)
    P = toy.GaussianMixtureProblem
    for owner, name, cat in [
        (ensemble._Chunk, "step", "training"), (ensemble._Chunk, "__init__", "chunk_setup"),
        (ensemble, "mlp_init", "init_weights"), (ensemble, "epoch_plan", "plans"), (ensemble, "epoch_plans", "plans"),
        (ensemble, "_train_chunk", "trainer_other"),
        (P, "random", "problems"), (P, "sample", "problems"), (P, "_build_quadrature", "grid"), (P, "mmlb", "mmlb"),
        (ensemble, "predict_ensemble", "evaluate_predict"), (P, "risk_from_predictions", "evaluate_risk"),
        (P, "excess_risk_from_predictions", "evaluate_risk"), (P, "bayes_risk", "evaluate_risk"),
        (depth, "summarise", "report"), (depth, "write_csv", "report"),
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
        depth.run_depth_study(cfg, out, progress=False, device=args.device)
        wall = time.perf_counter() - t1
        if prof is not None:
            prof.disable()
            prof.dump_stats(args.profile)
        digest = hashlib.sha256((out / "results.csv").read_bytes()).hexdigest()

    seconds = {k: round(v, 3) for k, v in sorted(_T.items(), key=lambda kv: -kv[1])}
    seconds["other"] = round(wall - sum(_T.values()), 3)
    print(json.dumps({
        "benchmark": "depth_cpu_side",
        "settings": {"preset": "paper", "device": args.device, "problems_per_k": cfg.problems_per_k, "ks": list(cfg.ks), "epochs": cfg.epochs,
                     "hidden": list(cfg.hidden), "problems_per_shard": cfg.problems_per_shard,
                     "grid_resolution": cfg.grid_resolution, "mmlb_samples": cfg.mmlb_samples},
        "members": cfg.problems_per_k * len(cfg.ks) * len(cfg.methods),
        "study_seconds": round(wall, 3),
        "training_seconds": round(_T.get("training", 0.0), 3),
        "outside_training_seconds": round(wall - _T.get("training", 0.0), 3),
        "imports_seconds": round(imports, 3),
        "device_init_seconds": round(device_init, 3),
        "seconds": seconds,
        "results_sha256": digest,
        "torch_num_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "source": str(Path(depth.__file__).parents[2]),
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
    }))
    return 0


def _strip(argv: list[str], flag: str, values: int) -> list[str]:
    out, skip = [], 0
    for a in argv:
        if skip:
            skip -= 1
        elif a == flag:
            skip = values
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def _compare(args, argv: list[str]) -> int:
    """Old and new code alternating in fresh processes; per-round ratios of the time outside training."""
    new_src = str(Path(__file__).resolve().parents[1] / "src")
    base = _strip(_strip(_strip(argv, "--compare", 1), "--repeats", 1), "--out", 1)
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    for _ in range(args.repeats):
        for version, src in (("old", args.compare), ("new", new_src)):
            env = {**os.environ, "PYTHONPATH": src}
            res = subprocess.run([sys.executable, __file__, *base], env=env, capture_output=True, text=True, check=True)
            row = json.loads(res.stdout.strip().splitlines()[-1])
            row["version"] = version
            print(json.dumps(row), flush=True)
            runs[version].append(row)

    def med(version: str, key: str) -> float:
        return round(statistics.median(r[key] for r in runs[version]), 3)

    def cats(version: str) -> dict:
        names = {k for r in runs[version] for k in r["seconds"]}
        return {k: round(statistics.median(r["seconds"].get(k, 0.0) for r in runs[version]), 3)
                for k in sorted(names, key=lambda k: -runs[version][0]["seconds"].get(k, 0.0))}

    ratios = [n["outside_training_seconds"] / o["outside_training_seconds"] for o, n in zip(runs["old"], runs["new"])]
    print(json.dumps({
        "benchmark": "depth_cpu_side_compare",
        "settings": runs["new"][0]["settings"], "repeats": args.repeats,
        **{f"{v}_{key}": med(v, key) for v in ("old", "new")
           for key in ("study_seconds", "training_seconds", "outside_training_seconds", "imports_seconds")},
        "old_seconds": cats("old"), "new_seconds": cats("new"),
        "outside_training_ratio_new_to_old": [round(r, 3) for r in ratios],
        "outside_training_ratio_median": round(statistics.median(ratios), 3),
        "results_identical": len({r["results_sha256"] for rs in runs.values() for r in rs}) == 1,
        "results_sha256": sorted({r["results_sha256"] for rs in runs.values() for r in rs}),
        "old_source": args.compare, "new_source": new_src,
        "torch_num_threads": runs["new"][0]["torch_num_threads"], "machine": runs["new"][0]["machine"],
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
