"""The depth study under load: alone, beside a second copy of itself started at the same moment,
and beside a single-threaded CPU-bound process; times and ratios to alone, as JSON.

Each threading choice runs the three scenarios in fresh processes (the OpenMP settings are read
when torch is imported):

* ``cli``: what ``manifold-mixup`` sets before torch is imported (``cli.THREADING_ENV``);
* ``unset``: no OpenMP wait policy and torch's threads left alone (the behaviour before);
* ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep at once);
* ``active``: ``OMP_WAIT_POLICY=ACTIVE`` (threads spin while they wait: the worst case);
* ``one-thread``: the CLI's setting plus ``OMP_NUM_THREADS=1``;
* ``short-spin``: no wait policy, ``GOMP_SPINCOUNT=10000`` (threads spin briefly, then sleep).

    python benchmarks/load.py                                  # the quick preset, cli and unset
    python benchmarks/load.py --problems-per-k 5 --choices cli unset one-thread   # a reduced study
    python benchmarks/load.py --scenarios alone --repeats 3    # the cost of the choice on a quiet machine

Run it on a quiet machine: anything else running moves every number. The target (issue 16):
each run beside another at most 2.5x its time alone, without losing speed when alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHOICES = ("cli", "unset", "passive", "active", "one-thread", "short-spin")
SCENARIOS = ("alone", "copy", "hog")
HOG = "import time\nend = time.time() + 3600\nx = 0\nwhile time.time() < end:\n    x += 1\n"


def _env(choice: str) -> dict:
    from manifold_mixup.cli import THREADING_ENV
    from manifold_mixup.shards import THREADS_ENV

    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "GOMP_SPINCOUNT", THREADS_ENV)}
    if choice in ("cli", "one-thread"):
        env.update(THREADING_ENV)
    if choice == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    if choice == "active":
        env["OMP_WAIT_POLICY"] = "ACTIVE"
    if choice == "one-thread":
        env["OMP_NUM_THREADS"] = "1"
    if choice == "short-spin":
        env["GOMP_SPINCOUNT"] = "10000"
    return env


def _study_cmd(out: Path, args) -> list[str]:
    return [sys.executable, "-c",
            "import sys, time, json\n"
            "from manifold_mixup.studies.depth import preset, run_depth_study\n"
            "t = time.perf_counter()\n"
            f"cfg = preset({args.preset!r}, problems_per_k={args.problems_per_k!r})\n"
            f"run_depth_study(cfg, {str(out)!r}, progress=False)\n"
            "print(json.dumps({'seconds': time.perf_counter() - t}))\n"]


def _start(out: Path, args, env) -> subprocess.Popen:
    return subprocess.Popen(_study_cmd(out, args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _seconds(p: subprocess.Popen) -> float:
    out, err = p.communicate()
    if p.returncode != 0:
        raise RuntimeError(f"study failed ({p.returncode}): {err.strip().splitlines()[-1:]}")
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def alone(choice: str, args, work: Path, i: int) -> float:
    return _seconds(_start(work / f"{choice}-alone-{i}", args, _env(choice)))


def beside(choice: str, args, work: Path) -> dict:
    env = _env(choice)
    out = {}
    if "copy" in args.scenarios:
        a, b = _start(work / f"{choice}-pair-a", args, env), _start(work / f"{choice}-pair-b", args, env)
        out["beside_a_copy_s"] = [round(_seconds(a), 2), round(_seconds(b), 2)]
    if "hog" in args.scenarios:
        hog = subprocess.Popen([sys.executable, "-c", HOG], env={**env, "OMP_NUM_THREADS": "1"})
        try:
            time.sleep(0.5)
            out["beside_a_single_thread_process_s"] = round(_seconds(_start(work / f"{choice}-hog", args, env)), 2)
        finally:
            hog.kill()
            hog.wait()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="quick", help="depth-study preset (default: quick)")
    ap.add_argument("--problems-per-k", type=int, default=None, help="fewer problems for a shorter run (default: the preset's)")
    ap.add_argument("--choices", nargs="+", choices=CHOICES, default=["cli", "unset"], help="threading choices to compare")
    ap.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS),
                    help="alone, beside a copy, beside a single-threaded process (default: all)")
    ap.add_argument("--repeats", type=int, default=1, help="runs alone per choice, interleaved across choices (default: 1)")
    args = ap.parse_args()
    from manifold_mixup.shards import machine_info

    m = machine_info()
    result = {"benchmark": "load", "preset": args.preset, "problems_per_k": args.problems_per_k,
              "machine": {k: m[k] for k in ("cpu", "cpu_count", "torch", "torch_threads")}, "choices": {}}
    with tempfile.TemporaryDirectory() as work:
        times = {c: [] for c in args.choices}
        for i in range(args.repeats):  # interleaved, so that a drift of the machine hits every choice alike
            for c in args.choices:
                times[c].append(alone(c, args, Path(work), i))
        for c in args.choices:
            env = _env(c)
            row = {"env": {k: env[k] for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "MANIFOLD_MIXUP_THREADS")
                           if k in env},
                   "alone_s": [round(t, 2) for t in times[c]]}
            row.update(beside(c, args, Path(work)))
            base = min(times[c])
            if "beside_a_copy_s" in row:
                row["ratio_beside_a_copy"] = round(max(row["beside_a_copy_s"]) / base, 2)
            if "beside_a_single_thread_process_s" in row:
                row["ratio_beside_a_single_thread_process"] = round(row["beside_a_single_thread_process_s"] / base, 2)
            result["choices"][c] = row
        if "cli" in times and "unset" in times:
            result["cli_alone_over_unset_alone"] = round(min(times["cli"]) / min(times["unset"]), 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
