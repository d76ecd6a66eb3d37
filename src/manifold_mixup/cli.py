"""The ``manifold-mixup`` command: thin wrappers that map flags onto study configs."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _add_executor(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", choices=["local", "ray"], default="local", help="run shards in-process or as Ray tasks")
    p.add_argument("--address", default=None, help="Ray cluster address (host:port, ray://host:port or auto)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="manifold-mixup", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    d = sub.add_parser("depth-study", help="Table 1 and Figures 2-3: excess risk of mixing at each depth on toy problems")
    d.add_argument("--preset", choices=["quick", "paper"], default="quick")
    d.add_argument("--out", required=True, type=Path)
    d.add_argument("--problems-per-k", type=int)
    d.add_argument("--ks", type=int, nargs="+", help="numbers of classes, e.g. 2 3 4 5")
    d.add_argument("--components", type=int, help="Gaussian components per class (N)")
    d.add_argument("--mean-range", type=float, nargs=2, metavar=("LO", "HI"))
    d.add_argument("--sigma-range", type=float, nargs=2, metavar=("LO", "HI"))
    d.add_argument("--n-train", type=int)
    d.add_argument("--hidden", type=int, nargs="+", help="hidden widths, e.g. 512 512 512")
    d.add_argument("--epochs", type=int)
    d.add_argument("--batch-size", type=int)
    d.add_argument("--lr", type=float)
    d.add_argument("--optimizer", choices=["adam", "sgd"])
    d.add_argument("--alpha", type=float)
    d.add_argument("--methods", nargs="+", help="baseline k0 k1 k2 k3")
    d.add_argument("--grid-resolution", type=int)
    d.add_argument("--mmlb-samples", type=int)
    d.add_argument("--problems-per-shard", type=int)
    d.add_argument("--seed", type=int)
    d.add_argument("--device", default="cpu")
    _add_executor(d)

    c = sub.add_parser("confmix-study", help="Table 2: ConfMix, ramps and mixup on images, several seeds")
    c.add_argument("--dataset", choices=["digits", "cifar10"], default="digits")
    c.add_argument("--data-dir", default=None, help="local CIFAR-10 directory or archive (cifar10 only)")
    c.add_argument("--seeds", type=int, default=5)
    c.add_argument("--epochs", type=int, default=50)
    c.add_argument("--batch-size", type=int, default=250)
    c.add_argument("--lr", type=float, default=1e-3)
    c.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    c.add_argument("--alpha", type=float, default=0.5)
    c.add_argument("--warmup-epochs", type=int, default=5)
    c.add_argument("--half-life", type=float, default=25.0)
    c.add_argument("--confidence", choices=["fresh", "cached"], default="fresh")
    c.add_argument("--methods", nargs="+", default=None)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--device", default="cpu")
    _add_executor(c)

    s = sub.add_parser("spiral-figure", help="Figure 1: decision regions on a two-arm spiral, ERM and mixing at each depth")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--epochs", type=int, default=200)
    s.add_argument("--alpha", type=float, default=0.5)
    s.add_argument("--seed", type=int, default=0)

    f = sub.add_parser("figure2", help="Figure 2: one toy problem (K = 3, N = 5), samples and Bayes regions, as PNG")
    f.add_argument("--out", required=True, type=Path, help="PNG file to write")
    f.add_argument("--seed", type=int, default=0)
    return ap


def _depth(a: argparse.Namespace) -> dict:
    from .studies.depth import preset, run_depth_study

    over = {name: getattr(a, name) for name in (
        "problems_per_k", "components", "n_train", "epochs", "batch_size", "lr", "optimizer", "alpha",
        "grid_resolution", "mmlb_samples", "problems_per_shard", "seed")}
    for name in ("ks", "mean_range", "sigma_range", "hidden", "methods"):
        v = getattr(a, name)
        over[name] = tuple(v) if v is not None else None
    cfg = preset(a.preset, **over)
    res = run_depth_study(cfg, a.out, executor=a.executor, address=a.address, device=a.device, progress=not a.no_progress)
    return {m: round(v["excess_pp"], 3) for m, v in res["table1"].items()}


def _confmix(a: argparse.Namespace) -> dict:
    from .studies.confmix import METHODS, ConfMixStudyConfig, run_confmix_study

    cfg = ConfMixStudyConfig(
        dataset=a.dataset, data_dir=a.data_dir, seeds=a.seeds, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
        optimizer=a.optimizer,
        alpha=a.alpha, warmup_epochs=a.warmup_epochs, half_life=a.half_life, confidence=a.confidence,
        methods=tuple(a.methods) if a.methods else METHODS, seed=a.seed, device=a.device,
    )
    res = run_confmix_study(cfg, a.out, executor=a.executor, address=a.address, progress=not a.no_progress)
    return {m: round(v["mean"], 2) for m, v in res["table"].items()}


def _spiral(a: argparse.Namespace) -> dict:
    from .studies.spiral import SpiralConfig, run_spiral_figure

    return run_spiral_figure(SpiralConfig(epochs=a.epochs, alpha=a.alpha, seed=a.seed), a.out)["train_accuracy"]


def _figure2(a: argparse.Namespace) -> dict:
    from .plots import figure2

    figure2(a.out, seed=a.seed)
    return {"written": str(a.out)}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run = {"depth-study": _depth, "confmix-study": _confmix, "spiral-figure": _spiral, "figure2": _figure2}[args.command]
    from .shards import StudyMismatchError

    t0 = time.perf_counter()
    try:
        result = run(args)
    except (ValueError, StudyMismatchError, ConnectionError, FileNotFoundError, ImportError) as e:
        print(f"manifold-mixup {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"manifold-mixup {args.command}: interrupted; finished shards are kept, rerun the same command to resume",
              file=sys.stderr)
        return 130
    print(json.dumps({"command": args.command, "seconds": round(time.perf_counter() - t0, 1), "result": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
