"""How long the command line takes to answer ``--help``, against the interpreter alone and against
``import torch`` (what ``--help`` cost when the parser imported the studies), as JSON.

    python benchmarks/cli_startup.py                # 7 rounds of each, medians
    python benchmarks/cli_startup.py --rounds 15

Each round starts fresh processes, in the order baseline, torch, ``manifold-mixup --help``,
``manifold-mixup depth-study --help`` (one round of each before timing warms the file cache).
The target (issue 22): ``--help`` under 1 s; the ratios say what is left besides the interpreter.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python": [sys.executable, "-c", "pass"],
    "import_torch": [sys.executable, "-c", "import torch"],
    "help": [sys.executable, "-m", "manifold_mixup.paper.cli", "--help"],
    "depth_study_help": [sys.executable, "-m", "manifold_mixup.paper.cli", "depth-study", "--help"],
}


def _seconds(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds (default: 7)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds must be >= 1; got {args.rounds}")
    for cmd in COMMANDS.values():  # warm-up
        _seconds(cmd)
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    for _ in range(args.rounds):
        for name, cmd in COMMANDS.items():
            times[name].append(_seconds(cmd))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "benchmark": "cli_startup", "rounds": args.rounds,
        "median_seconds": {k: round(v, 3) for k, v in med.items()},
        "help_over_python": round(med["help"] / med["python"], 2),
        "help_over_import_torch": round(med["help"] / med["import_torch"], 3),
        "depth_study_help_over_import_torch": round(med["depth_study_help"] / med["import_torch"], 3),
        "python": platform.python_version(), "machine": platform.machine(), "processor": platform.processor(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
