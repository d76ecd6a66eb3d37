"""The ``manifold-mixup`` command: thin wrappers that map flags onto study configs.

Every flag defaults to None and, when given, replaces one field of the study's config (a frozen
dataclass, or a preset of one); the defaults live there only, and ``--help`` shows them.
Anything a user can cause (a bad setting, a path that cannot be written, a full disk, a folder
in use, Ctrl-C) ends in one line on stderr and a non-zero exit; finished shards are kept.
"""

from __future__ import annotations

import os
import sys

__all__ = ["main"]

# Before each shard, torch's threads are fitted to the cores no other task is using (threads.
# fit_threads_to_load): two multi-threaded torch processes on the same cores stall each other at
# every parallel op. An explicit setting in the environment wins (a number of threads, or empty
# to leave torch alone). BENCHMARKS.md, "Under load", has the measurements.
THREADING_ENV = {"MANIFOLD_MIXUP_THREADS": "auto"}

# (flag, config field, type, nargs, metavar, meaning)
_DEPTH_FLAGS = [
    ("--problems-per-k", "problems_per_k", int, None, "N", "toy problems per number of classes K"),
    ("--ks", "ks", int, "+", "K", "numbers of classes, e.g. 2 3 4 5"),
    ("--components", "components", int, None, "N", "Gaussian components per class"),
    ("--mean-range", "mean_range", float, 2, ("LO", "HI"), "range the component means are drawn from"),
    ("--sigma-range", "sigma_range", float, 2, ("LO", "HI"), "range the shared sigma is drawn from (0 < LO < HI)"),
    ("--n-train", "n_train", int, None, "N", "training samples per problem (a multiple of the batch size)"),
    ("--hidden", "hidden", int, "+", "W", "hidden widths of the MLP, e.g. 512 512 512"),
    ("--epochs", "epochs", int, None, "E", "training epochs"),
    ("--eval-epochs", "eval_epochs", int, "+", "E",
     "also evaluate every model after these epochs of the same run (the last is always evaluated); "
     "results.csv has one row per problem, method and evaluated epoch"),
    ("--batch-size", "batch_size", int, None, "B", "mini-batch size"),
    ("--lr", "lr", float, None, "LR", "learning rate"),
    ("--optimizer", "optimizer", str, None, "{adam,sgd}", "optimiser"),
    ("--alpha", "alpha", float, None, "A", "mixing strength: lambda ~ Beta(A, A), 0 < A <= 1e6"),
    ("--methods", "methods", str, "+", "M", "methods: baseline (ERM) and k0 (input) .. k<depth>"),
    ("--grid-resolution", "grid_resolution", int, None, "R", "quadrature cells along the longer side (8..4096)"),
    ("--mmlb-samples", "mmlb_samples", int, None, "S", "Monte Carlo samples of the MMLB"),
    ("--problems-per-shard", "problems_per_shard", int, None, "N", "problems per shard (unit of resumption)"),
    ("--seed", "seed", int, None, "S", "seed of every problem, data set, initialisation and plan"),
]
_CONFMIX_FLAGS = [
    ("--dataset", "dataset", str, None, "{digits,cifar10,fashion-mnist}", "image data set"),
    ("--data-dir", "data_dir", str, None, "DIR", "local CIFAR-10 folder or archive, or the folder of Fashion-MNIST's "
     "four idx files (fashion-mnist without it: /usr/share/datasets/fashion-mnist, the Debian package's)"),
    ("--train-fraction", "train_fraction", float, None, "F", "stratified share of the training images, in (0, 1]"),
    ("--min-steps-per-epoch", "min_steps_per_epoch", int, None, "S",
     "the batch shrinks to n_train // S when needed, so that an epoch has >= S steps"),
    ("--seeds", "seeds", int, None, "N", "seeds per method (paired comparisons)"),
    ("--epochs", "epochs", int, None, "E", "training epochs"),
    ("--batch-size", "batch_size", int, None, "B", "mini-batch size"),
    ("--lr", "lr", float, None, "LR", "learning rate"),
    ("--optimizer", "optimizer", str, None, "{adam,sgd}", "optimiser"),
    ("--alpha", "alpha", float, None, "A", "alpha of fixed-alpha mixup"),
    ("--warmup-epochs", "warmup_epochs", int, None, "M", "ConfMix's epochs of plain ERM first"),
    ("--half-life", "half_life", float, None, "H", "half-life of the alpha ramps, epochs"),
    ("--confidence", "confidence", str, None, "{fresh,cached}", "ConfMix's confidence: a fresh forward or last epoch's"),
    ("--methods", "methods", str, "+", "M", "methods: erm, {input,manifold}-{mixup,confmix,half-confmix,ramp-up,ramp-down}"),
    ("--seed", "seed", int, None, "S", "seed of the split, the subset, the initial weights and the data order"),
    ("--device", "device", str, None, "DEV", "cpu, cuda, cuda:N or auto"),
]
_SPIRAL_FLAGS = [
    ("--n", "n", int, None, "N", "spiral points"),
    ("--noise", "noise", float, None, "S", "noise of the spiral points"),
    ("--hidden", "hidden", int, "+", "W", "hidden widths of the MLP"),
    ("--epochs", "epochs", int, None, "E", "training epochs"),
    ("--batch-size", "batch_size", int, None, "B", "mini-batch size"),
    ("--lr", "lr", float, None, "LR", "learning rate"),
    ("--alpha", "alpha", float, None, "A", "mixing strength: lambda ~ Beta(A, A)"),
    ("--resolution", "resolution", int, None, "R", "pixels per side of each decision-region panel"),
    ("--seed", "seed", int, None, "S", "seed of the data, the initial weights and the data order"),
]


def _fmt(v) -> str:
    return (" ".join(map(str, v)) or "none") if isinstance(v, (tuple, list)) else str(v)


def _add_flags(p, flags, defaults: dict) -> None:
    """One flag per config field, default None; the help names the config's default(s).
    ``defaults``: {label: config} (several for presets)."""
    for flag, field, typ, nargs, metavar, meaning in flags:
        shown = {label: _fmt(getattr(cfg, field)) for label, cfg in defaults.items()}
        if len(set(shown.values())) == 1:
            default = next(iter(shown.values()))
        else:
            default = ", ".join(f"{label}: {v}" for label, v in shown.items())
        kw = {"choices": None}
        if isinstance(metavar, str) and metavar.startswith("{"):
            kw["choices"] = metavar[1:-1].split(",")
        p.add_argument(flag, dest=field, type=typ, nargs=nargs, metavar=metavar, default=None,
                       help=f"{meaning} (default: {default})".replace("%", "%%"), **kw)


def _apply(base, a, flags):
    """``base`` with every given flag's value (tuples for list flags)."""
    from dataclasses import replace

    over = {}
    for _, field, _, nargs, _, _ in flags:
        v = getattr(a, field)
        if v is not None:
            over[field] = tuple(v) if nargs is not None else v
    return replace(base, **over)


def _default(fn, name: str):
    """The default of ``fn``'s argument ``name``: flags of function arguments show it, not repeat it."""
    import inspect

    return inspect.signature(fn).parameters[name].default


def _given(a, *names) -> dict:
    """The flags among ``names`` that were given (the others keep the function's defaults)."""
    return {n: getattr(a, n) for n in names if getattr(a, n) is not None}


def _add_executor(p, run) -> None:
    p.add_argument("--executor", choices=["local", "ray"], default=None,
                   help=f"run shards in-process or as Ray tasks (default: {_default(run, 'executor')})")
    p.add_argument("--address", default=None, help="Ray cluster address (host:port, ray://host:port or auto)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _parser():
    import argparse

    from .plots import figure2
    from .studies.confmix import PRESETS as CONFMIX_PRESETS, run_confmix_study
    from .studies.depth import PRESETS, run_depth_study
    from .studies.spiral import SpiralConfig

    from .. import __version__

    class Parser(argparse.ArgumentParser):
        def error(self, message):  # one line, naming the command, without the usage block
            self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    # allow_abbrev=False: a mistyped flag (--epoch) is an error, not taken for another (--epochs)
    ap = Parser(prog="manifold-mixup", description=__doc__.split("\n")[0], allow_abbrev=False)
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    d = sub.add_parser("depth-study", allow_abbrev=False, help="Table 1 and Figures 2-3: excess risk of mixing at each depth on toy problems")
    d.add_argument("--preset", choices=list(PRESETS), default="quick", help="the settings every flag below replaces (default: quick)")
    d.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    _add_flags(d, _DEPTH_FLAGS, PRESETS)
    d.add_argument("--device", default=None,
                   help=f"cpu, cuda, cuda:N or auto (default: {_default(run_depth_study, 'device')})")
    _add_executor(d, run_depth_study)

    c = sub.add_parser("confmix-study", allow_abbrev=False, help="Table 2: ConfMix, ramps and mixup on images, several seeds")
    c.add_argument("--preset", choices=list(CONFMIX_PRESETS), default="paper",
                   help="the settings every flag below replaces (default: paper, the paper's protocol; cpu: Table 2 "
                        "on Fashion-MNIST in about 10 minutes on 2 CPU cores)")
    c.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    _add_flags(c, _CONFMIX_FLAGS, CONFMIX_PRESETS)
    _add_executor(c, run_confmix_study)
    c.add_argument("--workers", type=int, default=None, metavar="N",
                   help="train N shards at once in local processes, on one GPU or on the CPU's cores "
                        f"(default: {_default(run_confmix_study, 'workers')})")

    s = sub.add_parser("spiral-figure", allow_abbrev=False, help="Figure 1: decision regions on a two-arm spiral, ERM and mixing at each depth")
    s.add_argument("--out", required=True, help="output folder for spiral.png")
    _add_flags(s, _SPIRAL_FLAGS, {"": SpiralConfig()})

    f = sub.add_parser("figure2", allow_abbrev=False, help="Figure 2: one toy problem (K = 3, N = 5), samples and Bayes regions, as PNG")
    f.add_argument("--out", required=True, help="PNG file to write")
    f.add_argument("--seed", type=int, default=None,
                   help=f"seed of the problem (seed + 1 draws the samples) (default: {_default(figure2, 'seed')})")
    return ap


def _depth(a) -> dict:
    from .studies.depth import PRESETS, run_depth_study

    cfg = _apply(PRESETS[a.preset], a, _DEPTH_FLAGS)
    res = run_depth_study(cfg, a.out, progress=not a.no_progress, **_given(a, "executor", "address", "device"))
    return {m: round(v["excess_pp"], 3) for m, v in res["table1"].items()}


def _confmix(a) -> dict:
    from .studies.confmix import PRESETS, run_confmix_study

    cfg = _apply(PRESETS[a.preset], a, _CONFMIX_FLAGS)
    res = run_confmix_study(cfg, a.out, progress=not a.no_progress, **_given(a, "executor", "address", "workers"))
    return {m: round(v["mean"], 2) for m, v in res["table"].items()}


def _spiral(a) -> dict:
    from .studies.spiral import SpiralConfig, run_spiral_figure

    return run_spiral_figure(_apply(SpiralConfig(), a, _SPIRAL_FLAGS), a.out)["train_accuracy"]


def _figure2(a) -> dict:
    from pathlib import Path

    from .plots import figure2
    from .files import remove_stale_temp
    from .studies.report import check_int

    if a.seed is not None:
        check_int("seed", a.seed, 0, 2**32 - 2)
    out = Path(a.out)
    for folder in (out.parent, out.parent.parent):  # a study's folder (or its shards folder) is the study's alone
        if os.path.lexists(folder / "manifest.json"):
            raise ValueError(f"--out {a.out} is inside the study folder {folder}: figure2 never writes into a "
                             "study's folder; choose a path outside it")
    remove_stale_temp(out)
    figure2(out, **_given(a, "seed"))
    return {"written": str(a.out)}


def _os_message(e: OSError) -> str:
    """One line for an OSError: the path, what went wrong, and what to do."""
    import errno

    where = f"{e.filename}: " if e.filename else ""
    what = e.strerror or str(e)
    todo = {
        errno.ENOSPC: "free some space and rerun the same command to resume (finished shards are kept)",
        errno.EDQUOT: "free some space and rerun the same command to resume (finished shards are kept)",
        errno.EROFS: "choose a writable --out",
        errno.EACCES: "choose a --out you may write to",
        errno.EPERM: "choose a --out you may write to",
        errno.ENOTDIR: "choose another --out (a folder, or a path that does not exist yet)",
        errno.EEXIST: "choose another --out",
        errno.EISDIR: "give a file name, not a folder",
    }.get(e.errno)
    if isinstance(e, ConnectionError) or e.errno is None:
        return str(e)
    return f"{where}{what}" + (f"; {todo}" if todo else "")


def _check_environment() -> None:
    """The environment variables the commands read, checked before anything is made (one line each)."""
    from .threads import thread_setting

    thread_setting()
    backend = os.environ.get("MPLBACKEND", "")
    if backend and "matplotlib" not in sys.modules:
        try:
            import matplotlib  # noqa: F401  (it reads MPLBACKEND when imported)
        except ValueError:
            shown = backend if len(backend) <= 40 else backend[:37] + "..."
            raise ValueError(f"MPLBACKEND={shown!r} is not a backend matplotlib knows; unset it (the figures are "
                             "drawn with matplotlib's Agg canvas whatever it says) or give one such as 'agg'") from None


def _one_line_warnings(command: str) -> None:
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"manifold-mixup {command}: warning: {message}", file=sys.stderr)

    warnings.showwarning = show


_SIGNALS = ("SIGINT", "SIGTERM")


def _handle_interrupts(handler) -> dict:
    """Set ``handler`` for Ctrl-C and SIGTERM (main thread only); return the previous handlers."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {name: signal.signal(getattr(signal, name), handler) for name in _SIGNALS}


def main(argv: list[str] | None = None) -> int:
    """Run one command. Ctrl-C or SIGTERM at any moment ends in one line (exit 130) or, after
    the command's work is done, in its normal exit: during start-up (imports, parsing) an
    interrupt is held until the imports are complete, and then raised; once the result is printed,
    a process started from the command line ignores them (nothing is left to stop)."""
    import signal

    held: list[int] = []
    previous = _handle_interrupts(lambda signum, frame: held.append(signum))  # an interrupt inside torch's
    added = [k for k in THREADING_ENV if k not in os.environ]                 # import can abort the process
    for k in added:
        os.environ[k] = THREADING_ENV[k]
    try:
        return _main(argv, held)
    finally:  # main() called from Python leaves the environment and the signal handlers as it found them
        for k in added:
            os.environ.pop(k, None)
        if argv is None:  # the process ends next: an interrupt now must not break its exit
            _handle_interrupts(signal.SIG_IGN)
        else:
            for name, handler in previous.items():
                signal.signal(getattr(signal, name), handler)


def _main(argv: list[str] | None, held: list[int]) -> int:
    import signal

    given = sys.argv[1:] if argv is None else argv
    command = next((a for a in given if a in ("depth-study", "confmix-study", "spiral-figure", "figure2")), "")
    try:
        import json
        import time

        try:
            _check_environment()  # before the imports: matplotlib refuses a bad MPLBACKEND with a traceback
        except ValueError as e:
            print(f"manifold-mixup{' ' + command if command else ''}: error: {e}", file=sys.stderr)
            return 2
        parser = _parser()
        args = parser.parse_args(argv)
        command = args.command
        _one_line_warnings(command)
        from .files import StudyMismatchError

        run = {"depth-study": _depth, "confmix-study": _confmix, "spiral-figure": _spiral, "figure2": _figure2}[command]
        _handle_interrupts(signal.default_int_handler)  # the imports are done: Ctrl-C and SIGTERM stop the work
        if held:
            raise KeyboardInterrupt
        t0 = time.perf_counter()
        try:
            result = run(args)
        except OSError as e:
            print(f"manifold-mixup {command}: error: {_os_message(e)}", file=sys.stderr)
            return 2
        except (ValueError, StudyMismatchError, ImportError) as e:
            print(f"manifold-mixup {command}: error: {e}", file=sys.stderr)
            return 2
        except (MemoryError, RuntimeError) as e:  # torch's out-of-memory errors are RuntimeErrors
            text = str(e) or type(e).__name__
            if not isinstance(e, MemoryError) and "out of memory" not in text and "allocate memory" not in text:
                raise
            print(f"manifold-mixup {command}: error: out of memory ({text.splitlines()[0][:200]}); use smaller "
                  "settings (e.g. fewer problems per shard, narrower models); finished shards are kept", file=sys.stderr)
            return 2
        if argv is None:  # the work is done and written: the process only prints and exits
            _handle_interrupts(signal.SIG_IGN)
        print(json.dumps({"command": command, "seconds": round(time.perf_counter() - t0, 1), "result": result}))
        return 0
    except KeyboardInterrupt:
        _handle_interrupts(signal.SIG_IGN if argv is None else (lambda signum, frame: None))  # one line, once
        print(f"manifold-mixup{' ' + command if command else ''}: interrupted; finished shards are kept, rerun the same "
              "command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
