"""A study under load: alone, beside a second copy of itself started at the same moment, beside
one single-threaded CPU-bound process and beside two; times and ratios to alone, as JSON.

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
    python benchmarks/load.py --study confmix --scenarios alone two-hogs   # the ConfMix study (issue 24)

For ``--study confmix`` (a reduced digits study: ``--seeds``, ``--epochs``, four methods) the
choices are ``in-process`` (shards one after another, torch's threads fixed at their default, as
``confmix-study`` runs by default) and ``processes`` (``--workers`` = the cores, one thread each);
every run's ``results.csv`` is compared with the same choice's run alone (``same_numbers_as_alone``):
the ConfMix study's numbers must not depend on the load.

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
CONFMIX_CHOICES = ("in-process", "processes")
SCENARIOS = ("alone", "copy", "hog", "two-hogs")
CONFMIX_METHODS = ("erm", "input-confmix", "manifold-confmix", "manifold-mixup")
HOG = "import time\nend = time.time() + 3600\nx = 0\nwhile time.time() < end:\n    x += 1\n"


def _env(choice: str) -> dict:
    from manifold_mixup.paper.cli import THREADING_ENV
    from manifold_mixup.paper.threads import THREADS_ENV

    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "GOMP_SPINCOUNT", THREADS_ENV)}
    if choice in ("cli", "one-thread", *CONFMIX_CHOICES):
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


def _study_cmd(out: Path, args, choice: str) -> list[str]:
    if args.study == "confmix":
        workers = len(os.sched_getaffinity(0)) if choice == "processes" else 1
        return [sys.executable, "-c",
                "import time, json\n"
                "from manifold_mixup.paper.studies.confmix import ConfMixStudyConfig, run_confmix_study\n"
                "t = time.perf_counter()\n"
                f"cfg = ConfMixStudyConfig(seeds={args.seeds}, epochs={args.epochs}, methods={CONFMIX_METHODS!r})\n"
                f"run_confmix_study(cfg, {str(out)!r}, progress=False, workers={workers})\n"
                "print(json.dumps({'seconds': time.perf_counter() - t}))\n"]
    return [sys.executable, "-c",
            "import sys, time, json\n"
            "from manifold_mixup.paper.studies.depth import preset, run_depth_study\n"
            "t = time.perf_counter()\n"
            f"cfg = preset({args.preset!r}, problems_per_k={args.problems_per_k!r})\n"
            f"run_depth_study(cfg, {str(out)!r}, progress=False)\n"
            "print(json.dumps({'seconds': time.perf_counter() - t}))\n"]


def _start(out: Path, args, env, choice: str) -> subprocess.Popen:
    return subprocess.Popen(_study_cmd(out, args, choice), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _seconds(p: subprocess.Popen) -> float:
    out, err = p.communicate()
    if p.returncode != 0:
        raise RuntimeError(f"study failed ({p.returncode}): {err.strip().splitlines()[-1:]}")
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def alone(choice: str, args, work: Path, i: int) -> float:
    return _seconds(_start(work / f"{choice}-alone-{i}", args, _env(choice), choice))


def _same(work: Path, choice: str, name: str) -> bool:
    """Whether the run ``name`` wrote the results.csv of the same choice's first run alone."""
    return (work / name / "results.csv").read_bytes() == (work / f"{choice}-alone-0" / "results.csv").read_bytes()


def beside(choice: str, args, work: Path) -> dict:
    env = _env(choice)
    out, same = {}, []
    if "copy" in args.scenarios:
        a, b = _start(work / f"{choice}-pair-a", args, env, choice), _start(work / f"{choice}-pair-b", args, env, choice)
        out["beside_a_copy_s"] = [round(_seconds(a), 2), round(_seconds(b), 2)]
        same += [_same(work, choice, f"{choice}-pair-a"), _same(work, choice, f"{choice}-pair-b")]
    for scenario, n, key in (("hog", 1, "beside_a_single_thread_process_s"), ("two-hogs", 2, "beside_two_single_thread_processes_s")):
        if scenario not in args.scenarios:
            continue
        hogs = [subprocess.Popen([sys.executable, "-c", HOG], env={**env, "OMP_NUM_THREADS": "1"}) for _ in range(n)]
        try:
            time.sleep(0.5)
            out[key] = round(_seconds(_start(work / f"{choice}-{scenario}", args, env, choice)), 2)
            same.append(_same(work, choice, f"{choice}-{scenario}"))
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
    if same:
        out["same_numbers_as_alone"] = all(same)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", choices=["depth", "confmix"], default="depth", help="the study to run (default: depth)")
    ap.add_argument("--preset", default="quick", help="depth-study preset (default: quick)")
    ap.add_argument("--seeds", type=int, default=2, help="confmix: seeds (default: 2)")
    ap.add_argument("--epochs", type=int, default=20, help="confmix: epochs (default: 20)")
    ap.add_argument("--problems-per-k", type=int, default=None, help="fewer problems for a shorter run (default: the preset's)")
    ap.add_argument("--choices", nargs="+", choices=CHOICES + CONFMIX_CHOICES, default=None,
                    help="threading choices to compare (default: cli unset; confmix: in-process processes)")
    ap.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS),
                    help="alone, beside a copy, beside a single-threaded process (default: all)")
    ap.add_argument("--repeats", type=int, default=1, help="runs alone per choice, interleaved across choices (default: 1)")
    args = ap.parse_args()
    allowed = CONFMIX_CHOICES if args.study == "confmix" else CHOICES
    args.choices = args.choices or list(allowed[:2])
    if set(args.choices) - set(allowed):
        ap.error(f"--study {args.study} takes --choices among {list(allowed)}")
    from manifold_mixup.paper.files import machine_info

    m = machine_info()
    size = ({"seeds": args.seeds, "epochs": args.epochs, "methods": list(CONFMIX_METHODS), "dataset": "digits"}
            if args.study == "confmix" else {"preset": args.preset, "problems_per_k": args.problems_per_k})
    result = {"benchmark": "load", "study": args.study, **size,
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
            if "beside_two_single_thread_processes_s" in row:
                row["ratio_beside_two_single_thread_processes"] = round(row["beside_two_single_thread_processes_s"] / base, 2)
            result["choices"][c] = row
        if "cli" in times and "unset" in times:
            result["cli_alone_over_unset_alone"] = round(min(times["cli"]) / min(times["unset"]), 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
