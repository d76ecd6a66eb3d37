"""The ``manifold-mixup`` command: one subcommand per registered study (``studies.protocol``),
built from its ``Study`` record, and ``figure2``.

Every flag defaults to None and, when given, replaces one field of the study's config (a frozen
dataclass, or a preset of one); the defaults live there only, and ``--help`` shows them. Building
the parser imports no torch: ``--help`` is fast, and the work's imports come with the work.
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

DESCRIPTION = ("Reproduce and extend the studies of 'On Manifold Mixup for Deep Learning': one subcommand per "
               "study or figure. Every flag of a study replaces one setting of its preset; rerun the same command "
               "to resume a stopped study.")


def _fmt(v) -> str:
    return (" ".join(map(str, v)) or "none") if isinstance(v, (tuple, list)) else str(v)


def _help(text: str, default: str) -> str:
    return f"{text} (default: {default})".replace("%", "%%")


def _metavar(f):
    return "{" + ",".join(map(str, f.choices)) + "}" if f.choices else f.metavar


def _add_flags(p, study) -> None:
    """One flag per config field the study lists, default None; the help names the presets' default(s)."""
    for f in study.flags:
        shown = {label: _fmt(getattr(cfg, f.field)) for label, cfg in study.presets.items()}
        if len(set(shown.values())) == 1:
            default = next(iter(shown.values()))
        else:
            default = ", ".join(f"{label}: {v}" for label, v in shown.items())
        p.add_argument(f.flag, dest=f.field, type=f.type, nargs=f.nargs, metavar=_metavar(f), default=None,
                       choices=f.choices, help=_help(f.help, default))


def _add_options(p, study) -> None:
    """The study's ``run`` keywords (a device, workers; and for sharded studies the executor)."""
    import inspect

    defaults = {n: v.default for n, v in inspect.signature(study.run).parameters.items()}
    for f in study.options:
        p.add_argument(f.flag, dest=f.field, type=f.type, metavar=_metavar(f), default=None, choices=f.choices,
                       help=_help(f.help, defaults[f.field]))
    if study.sharded:
        p.add_argument("--executor", choices=["local", "ray"], default=None,
                       help=_help("run shards in this process or as Ray tasks", defaults["executor"]))
        p.add_argument("--address", default=None, help="Ray cluster address (host:port, ray://host:port or auto)")
        p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _parser():
    import argparse

    from .. import __version__
    from .constants import FIGURE2_SEED
    from .studies import studies

    class Parser(argparse.ArgumentParser):
        def error(self, message):  # one line, naming the command, without the usage block
            self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    # allow_abbrev=False: a mistyped flag (--epoch) is an error, not taken for another (--epochs)
    ap = Parser(prog="manifold-mixup", description=DESCRIPTION, allow_abbrev=False)
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    registered = studies()
    if "figure2" in registered:
        raise ValueError("a registered study is named 'figure2', the command line's own figure command; rename it")
    ap.commands, ap.studies = {}, registered
    for study in registered.values():
        p = ap.commands[study.name] = sub.add_parser(study.name, allow_abbrev=False, help=study.help,
                                                      description=study.description)
        if len(study.presets) > 1:
            p.add_argument("--preset", choices=list(study.presets), default=study.default,
                           help=_help(f"the settings every flag below replaces; {study.preset_help}", study.default))
        p.add_argument("--out", required=True, help=study.out_help)
        _add_flags(p, study)
        _add_options(p, study)
    f = ap.commands["figure2"] = sub.add_parser("figure2", allow_abbrev=False, help=FIGURE2_HELP,
                                                description=FIGURE2_HELP + ".")
    f.add_argument("--out", required=True, help="PNG file to write")
    f.add_argument("--seed", type=int, default=None,
                   help=_help("seed of the problem (seed + 1 draws the samples)", FIGURE2_SEED))
    return ap


FIGURE2_HELP = "Figure 2: one toy problem (K = 3, N = 5), samples and Bayes regions, as PNG"


def _run_study(study, a) -> dict:
    """The study's preset with the given flags, run into ``--out``; what it prints of the result."""
    from dataclasses import replace

    cfg = study.presets[getattr(a, "preset", None) or study.default]
    over = {f.field: tuple(getattr(a, f.field)) if f.nargs is not None else getattr(a, f.field)
            for f in study.flags if getattr(a, f.field) is not None}
    options = {f.field: getattr(a, f.field) for f in study.options if getattr(a, f.field) is not None}
    if study.sharded:
        options.update({n: getattr(a, n) for n in ("executor", "address") if getattr(a, n) is not None})
        options["progress"] = not a.no_progress
    try:
        cfg = replace(cfg, **over)
    except ValueError as e:  # the setting by the flag the user typed: "--problems-per-k must be ..."
        text = str(e)
        for f in study.flags:
            if text.startswith(f.field + " "):
                text = f.flag + text[len(f.field):]
                break
        raise ValueError(text) from None
    return study.brief(study.run(cfg, a.out, **options))


def _figure2(a) -> dict:
    from pathlib import Path

    from ..checks import STUDY_SEED_MAX, check_int
    from .constants import FIGURE2_SEED
    from .files import remove_stale_temp
    from .plots import figure2

    if a.seed is not None:
        check_int("--seed", a.seed, 0, STUDY_SEED_MAX - 1)
    out = Path(a.out)
    for folder in (out.parent, out.parent.parent):  # a study's folder (or its shards folder) is the study's alone
        if os.path.lexists(folder / "manifest.json"):
            raise ValueError(f"--out {a.out} is inside the study folder {folder}: figure2 never writes into a "
                             "study's folder; choose a path outside it")
    remove_stale_temp(out)
    figure2(out, seed=FIGURE2_SEED if a.seed is None else a.seed)
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
    import importlib

    from .threads import thread_setting

    thread_setting()
    backend = os.environ.get("MPLBACKEND", "")
    if backend and "matplotlib" not in sys.modules:
        try:
            importlib.import_module("matplotlib")  # it reads MPLBACKEND when imported
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


def _import_the_work() -> None:
    """Import what the commands' work uses (torch, matplotlib, scipy) while interrupts are still
    held: an interrupt inside torch's import can abort the process instead of raising."""
    import importlib

    for name in ("torch", f"{__package__}.plots", f"{__package__}.stats"):
        importlib.import_module(name)


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
    command = next((a for a in given if not a.startswith("-")), "")
    try:
        import functools
        import json
        import time

        try:
            _check_environment()  # before the imports: matplotlib refuses a bad MPLBACKEND with a traceback
        except ValueError as e:
            print(f"manifold-mixup{' ' + command if command else ''}: error: {e}", file=sys.stderr)
            return 2
        try:
            parser = _parser()
        except (ImportError, ValueError) as e:  # a study module that cannot be registered
            print(f"manifold-mixup: error: {e}", file=sys.stderr)
            return 2
        args, extra = parser.parse_known_args(argv)
        if extra:  # named by the subcommand they were given to, with its help
            parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
        command = args.command
        _one_line_warnings(command)
        from .files import StudyMismatchError

        run = _figure2 if command == "figure2" else functools.partial(_run_study, parser.studies[command])
        _import_the_work()  # (help and parse errors ended above, without them)
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
