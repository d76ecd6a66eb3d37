"""Studies under faults and bad input, as a careless or hostile user meets them through the CLI:
one line on stderr and a non-zero exit, nothing written that blocks the corrected command, no
lost or wrong result. Faults are injected (monkeypatched writes, a held lock), not timed kills."""

from __future__ import annotations

import csv
import errno
import functools
import json
import os
import re
import socket
import threading

import pytest

import manifold_mixup.paper.files as files_mod
from manifold_mixup.paper.cli import main
from manifold_mixup.paper.store import ShardStore

TINY = ["--preset", "quick", "--problems-per-k", "2", "--ks", "2", "3", "--hidden", "8", "8", "8", "--n-train", "40",
        "--epochs", "1", "--batch-size", "20", "--grid-resolution", "32", "--mmlb-samples", "500",
        "--problems-per-shard", "1", "--methods", "baseline", "k1", "--no-progress"]
SPIRAL = ["--epochs", "1", "--n", "100", "--hidden", "8", "8", "--resolution", "16"]


def depth(out, *extra):
    return main(["depth-study", "--out", str(out), *TINY, *extra])


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def strict_load(path):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


# -- settings are validated before anything is written ------------------------------------------

BAD = [
    (["--sigma-range", "1", "0"], "--sigma-range must"), (["--sigma-range", "0", "1"], "--sigma-range must"),
    (["--mean-range", "nan", "1"], "--mean-range must"), (["--alpha", "inf"], "alpha"), (["--alpha", "0"], "alpha"),
    (["--alpha", "1e308"], "alpha"), (["--lr", "nan"], "lr"), (["--lr", "-1"], "lr"),
    (["--grid-resolution", "0"], "--grid-resolution must"), (["--seed", "-1"], "seed"), (["--epochs", "0"], "epochs"),
    (["--ks", "2", "2"], r"ks lists \[2\] more than once"), (["--ks", "1"], r"ks must be one or more integers in \[2, "),
    (["--methods", "baseline", "baseline", "k0"], r"methods lists \['baseline'\] more than once"),
    (["--hidden", "0"], "hidden"), (["--batch-size", "1"], "--batch-size must"), (["--n-train", "50"], "multiple"),
    (["--problems-per-shard", "0"], "--problems-per-shard must"), (["--mmlb-samples", "0"], "--mmlb-samples must"),
    (["--components", "0"], "components"), (["--problems-per-k", "0"], "--problems-per-k must"),
    (["--device", "tpu"], "device"), (["--address", "127.0.0.1:1"], "only used with --executor ray"),
]


@pytest.mark.parametrize("flags,names", BAD, ids=[" ".join(f) for f, _ in BAD])
def test_a_refused_setting_leaves_nothing_behind(tmp_path, capsys, flags, names):
    out = tmp_path / "run"
    assert depth(out, *flags) == 2
    line = one_error_line(capsys)
    assert "error:" in line
    assert re.search(names, line), line
    assert not out.exists()


def test_the_corrected_command_runs_after_a_refusal_and_the_manifest_is_strict_json(tmp_path, capsys):
    out = tmp_path / "run"
    assert depth(out, "--alpha", "nan") == 2
    assert depth(out) == 0
    manifest = strict_load(out / "manifest.json")
    assert manifest["study"] == "depth-study" and manifest["settings"]["alpha"] == 0.5
    machine = manifest["machines"][0]
    import torch

    assert machine["torch"] == torch.__version__ and machine["torch_threads"] == torch.get_num_threads()
    assert machine["cpu"] and isinstance(machine["torch_build"], list)
    # the machine is information: another thread count resumes and is recorded beside the first
    old = torch.get_num_threads()
    torch.set_num_threads(old + 1)
    try:
        assert depth(out) == 0
    finally:
        torch.set_num_threads(old)
    manifest = strict_load(out / "manifest.json")
    assert [m["torch_threads"] for m in manifest["machines"]] == [old, old + 1]


# -- atomic outputs, stray temp files ---------------------------------------------------------------

def test_a_write_killed_midway_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert depth(out) == 0
    figure = (out / "figure2.png").read_bytes()
    real_replace = os.replace

    def killed(src, dst):  # the process dies between writing the temp file and renaming it
        if str(dst).endswith(".png"):
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(files_mod.os, "replace", killed)
    assert depth(out) == 130
    assert "interrupted" in one_error_line(capsys)
    monkeypatch.setattr(files_mod.os, "replace", real_replace)
    assert (out / "figure2.png").read_bytes() == figure
    assert not [p for p in out.rglob("*.tmp")]


def test_stray_temp_files_of_a_killed_run_are_removed_and_do_not_block(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".manifest.json.abc123.tmp").write_text('{"study": "depth-st')  # killed before its rename
    (out / "shards").mkdir()
    (out / "shards" / ".K2-p0000-0001.json.x.tmp").write_text("{")
    assert depth(out) == 0
    assert not list(out.rglob("*.tmp"))
    assert strict_load(out / "manifest.json")["study"] == "depth-study"


# -- unreadable, copied and foreign shards; an unreadable manifest --------------------------------

def _results(out):
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def test_bad_shards_are_named_and_recomputed(tmp_path, capsys):
    out = tmp_path / "run"
    assert depth(out) == 0
    capsys.readouterr()
    good = _results(out)
    shard_dir = out / "shards"
    names = sorted(p.name for p in shard_dir.glob("*.json"))
    (shard_dir / names[0]).write_text('{"key": "K2-p0000-0001", "rows": [')  # truncated
    (shard_dir / names[1]).write_bytes((shard_dir / names[2]).read_bytes())  # another shard copied over it
    foreign = json.loads((shard_dir / names[3]).read_text())
    foreign["fingerprint"] = "0" * 16
    (shard_dir / names[3]).write_text(json.dumps(foreign))  # a shard of other settings
    assert depth(out) == 0
    err = capsys.readouterr().err
    for name, why in ((names[0], "cannot be read"), (names[1], "holds shard"), (names[3], "other settings")):
        assert name in err and why in err and "recomputing it" in err
    assert _results(out) == good  # no duplicated or missing rows


def test_an_unreadable_manifest_is_named_and_a_deleted_one_is_rebuilt(tmp_path, capsys):
    out = tmp_path / "run"
    assert depth(out) == 0
    good = _results(out)
    capsys.readouterr()
    (out / "manifest.json").write_text("{junk")
    assert depth(out) == 2
    line = one_error_line(capsys)
    assert str(out / "manifest.json") in line and "cannot be read" in line and "delete it" in line
    (out / "manifest.json").unlink()  # what the user does; finished shards of these settings are kept
    assert depth(out) == 0
    assert "manifest.json was missing" in capsys.readouterr().err and _results(out) == good
    assert depth(out, "--seed", "1") == 2  # other settings are still refused
    assert "other settings" in one_error_line(capsys)


# -- one study per folder ---------------------------------------------------------------------------

def test_a_folder_in_use_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with ShardStore(out, "depth-study", {"held": True}):  # another run, holding the folder
        assert depth(out) == 2
        line = one_error_line(capsys)
        assert "in use by another run" in line and str(out) in line
    assert depth(out) == 0  # released; the holder finished no shard, so the folder is taken over
    assert "held no finished shard" in capsys.readouterr().err


def test_two_runs_started_together_one_wins(tmp_path):
    import multiprocessing as mp

    out = tmp_path / "run"
    ctx = mp.get_context("spawn")  # no fork of a process that holds an OpenMP pool
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=_open_store, args=(str(out), seed, barrier, results)) for seed in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    outcomes = [results.get(timeout=5) for _ in procs]
    assert outcomes.count("ok") == 1, outcomes  # never both accepted
    assert set(outcomes) - {"ok"} <= {"in use", "other settings"}
    assert strict_load(out / "manifest.json")["settings"]["seed"] in (1, 2)


def _open_store(out, seed, barrier, results):
    import time

    from manifold_mixup.paper.files import StudyInUseError, StudyMismatchError

    barrier.wait()
    try:
        with ShardStore(out, "toy", {"seed": seed}):
            time.sleep(0.5)
        results.put("ok")
    except StudyInUseError:
        results.put("in use")
    except StudyMismatchError:
        results.put("other settings")


# -- paths, permissions, a full disk, Ctrl-C ------------------------------------------------------

def test_out_an_existing_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert depth(f) == 2
    line = one_error_line(capsys)
    assert str(f) in line and "not a folder" in line
    assert main(["spiral-figure", "--out", str(f), "--epochs", "1"]) == 2
    assert str(f) in one_error_line(capsys)


@pytest.mark.parametrize("code,hint", [(errno.EROFS, "writable --out"), (errno.EACCES, "may write to")])
def test_read_only_or_forbidden_out(tmp_path, capsys, monkeypatch, code, hint):
    real_open = os.open

    def refuse(path, flags, *a, **k):  # every new file (a temporary one, or the probe) is refused
        if flags & os.O_CREAT:
            raise OSError(code, os.strerror(code))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(files_mod.os, "open", refuse)
    out = tmp_path / "run"
    assert depth(out) == 2
    line = one_error_line(capsys)
    assert str(out) in line and hint in line


def test_a_full_disk_keeps_finished_shards_and_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real = os.fsync
    written = []

    def fsync(fd):
        written.append(fd)
        if len(written) == 4:  # the manifest and two shards fit, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(files_mod.os, "fsync", fsync)
    assert depth(out) == 2
    line = one_error_line(capsys)
    assert "shards" in line and "free some space" in line
    assert len(list((out / "shards").glob("*.json"))) == 2 and not list(out.rglob("*.tmp"))
    monkeypatch.setattr(files_mod.os, "fsync", real)
    assert depth(out) == 0
    assert len(_results(out)) == 4 * 2  # 4 shards of one problem, 2 methods each


def test_a_write_into_dev_full_is_one_line_and_leaves_no_temp_file(tmp_path, capsys, monkeypatch):
    # every temporary file is opened on /dev/full: the kernel itself answers ENOSPC on the write
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    real_open = os.open

    def on_dev_full(path, flags, *a, **k):
        if flags & os.O_CREAT and str(path).endswith(".tmp") and ".probe." not in str(path):
            os.close(real_open(path, flags, *a, **k))  # the name, as a real write would leave it
            return real_open("/dev/full", os.O_WRONLY)
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(files_mod.os, "open", on_dev_full)
    out = tmp_path / "run"
    assert depth(out) == 2
    line = one_error_line(capsys)
    assert str(out / "manifest.json") in line and "No space left on device" in line and "free some space" in line
    assert not list(out.rglob("*.tmp")) and not (out / "manifest.json").exists()


def test_ctrl_c_during_start_up_is_one_line(monkeypatch, capsys):
    import manifold_mixup.paper.cli as cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_parser", interrupted)
    assert main(["depth-study", "--out", "x"]) == 130
    assert "interrupted" in one_error_line(capsys)


# -- lazy shards and the time estimate ------------------------------------------------------------

def test_a_huge_study_states_its_estimate_and_makes_no_shards_up_front(tmp_path, capsys, monkeypatch):
    import tracemalloc

    from manifold_mixup.paper.studies.depth import PRESETS, shards_for

    tracemalloc.start()
    shards = shards_for(PRESETS["quick"].__class__(problems_per_k=10**9))
    assert len(shards) == 4 * 10**8 and shards[-1].key == "K5-p999999990-1000000000"
    assert tracemalloc.get_traced_memory()[1] < 5_000_000
    tracemalloc.stop()

    def stop(*a, **k):  # the first shard would start here
        raise KeyboardInterrupt

    monkeypatch.setattr("manifold_mixup.paper.studies.depth.run_shard", stop)
    assert main(["depth-study", "--out", str(tmp_path / "huge"), "--problems-per-k", "1000000000", "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "estimated to take about" in err and "hours" in err


# -- Ray: an address that is no Ray head ----------------------------------------------------------

@pytest.mark.parametrize("reply", [b"HTTP/1.1 400 Bad Request\r\n\r\n", b""], ids=["http1", "closes"])
def test_an_address_that_is_no_ray_head_fails_in_one_line(tmp_path, capsys, reply):
    import time

    from manifold_mixup.paper.executors import check_executor

    pytest.importorskip("ray")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def serve():
        for _ in range(2):
            conn, _ = server.accept()
            conn.recv(64)
            if reply:
                conn.sendall(reply)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match="is not a Ray head"):
        check_executor("ray", f"127.0.0.1:{port}")
    assert time.perf_counter() - t0 < 4
    assert depth(tmp_path / "run", "--executor", "ray", "--address", f"127.0.0.1:{port}") == 2
    assert "is not a Ray head" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()
    server.close()


def test_a_figure_is_never_renamed_over_a_device_or_a_folder(tmp_path, capsys):
    assert main(["figure2", "--out", "/dev/full"]) == 2
    line = one_error_line(capsys)
    assert "/dev/full: exists and is not a regular file" in line
    assert os.path.exists("/dev/full") and not os.path.isfile("/dev/full")
    assert main(["figure2", "--out", str(tmp_path)]) == 2
    assert "give a file name, not a folder" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_out_of_memory_is_one_line_and_a_bug_still_shows_its_traceback(tmp_path, capsys, monkeypatch):
    def oom(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 4000000000000 bytes.")

    monkeypatch.setattr("manifold_mixup.paper.studies.depth.run_study", oom)
    assert depth(tmp_path / "run") == 2
    line = one_error_line(capsys)
    assert "out of memory" in line and "finished shards are kept" in line

    def bug(*a, **k):
        raise RuntimeError("shape mismatch in the library")

    monkeypatch.setattr("manifold_mixup.paper.studies.depth.run_study", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        depth(tmp_path / "run")


def test_a_run_stopped_before_its_first_shard_does_not_block_the_corrected_command(tmp_path, capsys, monkeypatch):
    def no_memory(payload):
        raise MemoryError

    monkeypatch.setattr("manifold_mixup.paper.studies.depth.run_shard", no_memory)
    out = tmp_path / "run"
    assert depth(out, "--n-train", "100000000", "--batch-size", "50") == 2  # infeasible, found only in the shard
    assert "out of memory" in one_error_line(capsys)
    monkeypatch.undo()
    assert depth(out) == 0  # other settings, but nothing was finished: the folder is taken over
    assert "held no finished shard" in capsys.readouterr().err
    assert strict_load(out / "manifest.json")["settings"]["n_train"] == 40


def test_a_junk_manifest_alone_in_its_folder_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "manifest.json").write_text('{"study": "depth-study", "fingerprint": ')
    assert depth(out) == 0
    assert "held no finished shard" in capsys.readouterr().err
    assert strict_load(out / "manifest.json")["study"] == "depth-study"


def test_sigterm_ends_like_ctrl_c_and_the_handler_is_restored(tmp_path, capsys, monkeypatch):
    import signal

    before = signal.getsignal(signal.SIGTERM)

    def terminated(payload):  # a scheduler (or `timeout`) ends the run during a shard
        os.kill(os.getpid(), signal.SIGTERM)
        return []

    monkeypatch.setattr("manifold_mixup.paper.studies.depth.run_shard", terminated)
    assert depth(tmp_path / "run") == 130
    assert "interrupted; finished shards are kept" in one_error_line(capsys)
    assert signal.getsignal(signal.SIGTERM) is before


# -- shards edited by hand: the digest and the study's schema (issue 24) --------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny depth study (results.csv and summary.md as written), copied by each test."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert depth(out) == 0
    return out


def _copy(finished, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def _forge(path, edit, redigest):
    """Edit a shard's parsed content; with ``redigest`` the forger also recomputes its digest."""
    from manifold_mixup.paper.store import shard_digest

    data = json.loads(path.read_text())
    edit(data)
    if redigest:
        data["digest"] = shard_digest(data)
    path.write_text(json.dumps(data))


def _first_digit_changed(data):
    r = data["rows"][0]
    text = repr(r["excess_risk_pp"])
    i = next(j for j, c in enumerate(text) if c.isdigit() and c != "0")
    r["excess_risk_pp"] = float(text[:i] + str(int(text[i]) % 9 + 1) + text[i + 1:])


def _set(column, value):
    def edit(data):
        data["rows"][0][column] = value
    return edit


TAMPERING = {
    "changed digit": _first_digit_changed,
    "NaN": _set("risk", float("nan")),
    "negative excess risk": lambda d: d["rows"][0].update(excess_risk_pp=-d["rows"][0]["excess_risk_pp"]),
    "string": _set("risk", "0.5"),
    "list": _set("risk", [0.5]),
    "duplicated row": lambda d: d["rows"].__setitem__(1, dict(d["rows"][0])),
    "rows of another shard": None,  # filled in the test (it needs the other shard)
    "no rows": lambda d: d.update(rows=[]),
    "method": _set("method", "k3"),
    "K": _set("K", 3),
    "epoch": _set("epoch", 2),
}


@pytest.mark.parametrize("redigest", [False, True], ids=["digest-stale", "digest-forged"])
@pytest.mark.parametrize("kind", list(TAMPERING))
def test_each_kind_of_edited_shard_is_named_and_recomputed(finished, tmp_path, kind, redigest):
    from manifold_mixup.paper.studies.depth import DepthStudyConfig, check_shard, shards_for

    out = _copy(finished, tmp_path)
    cfg = DepthStudyConfig.from_settings(strict_load(out / "manifest.json")["settings"])
    shard, other = shards_for(cfg)[1], shards_for(cfg)[0]
    path = out / "shards" / f"{shard.key}.json"
    edit = TAMPERING[kind] or (lambda d: d.update(rows=json.loads((out / "shards" / f"{other.key}.json").read_text())["rows"]))
    _forge(path, edit, redigest)
    with ShardStore(out, "depth-study", cfg.settings(), check=check_shard) as store:
        with pytest.warns(UserWarning, match=re.escape(str(path)) + ".*recomputing it") as w:
            assert not store.done(shard.key, shard.payload)
        assert store.done(other.key, other.payload)  # the untouched shard passes
    why = str(w[0].message)
    assert ("digest" in why) != redigest or (redigest and "fail the study's check" in why), why


@pytest.mark.parametrize("kind", ["changed digit", "method", "duplicated row", "no rows"])
def test_nothing_edited_reaches_results_or_the_summary(finished, tmp_path, capsys, kind):
    out = _copy(finished, tmp_path)
    good, summary = _results(out), (out / "summary.md").read_text()
    path = sorted((out / "shards").glob("*.json"))[1]
    _forge(path, TAMPERING[kind], redigest=True)
    capsys.readouterr()
    assert depth(out) == 0
    err = capsys.readouterr().err
    assert path.name in err and "recomputing it" in err and "Traceback" not in err
    assert _results(out) == good and (out / "summary.md").read_text() == summary


def test_a_confmix_shard_with_an_impossible_accuracy_is_recomputed(tmp_path, capsys):
    args = ["confmix-study", "--seeds", "1", "--epochs", "1", "--methods", "erm", "input-mixup", "--train-fraction",
            "0.1", "--out", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    summary = (tmp_path / "summary.md").read_text()
    path = tmp_path / "shards" / "input-mixup-seed000.json"
    _forge(path, _set("test_acc", 7.5), redigest=True)
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "input-mixup-seed000.json" in err and "test_acc = 7.5 is not a valid value" in err
    assert (tmp_path / "summary.md").read_text() == summary and "+327" not in summary


# -- FIFOs and devices where a shard or the manifest goes: refused by name, without blocking -----

def _cli_in_a_child(out, timeout=120):
    """The depth study's command in a child process, with a 4 GiB memory cap and a time limit (the
    old reader blocked forever on a FIFO and read a link to /dev/zero until the memory ran out)."""
    import resource
    import subprocess
    import sys

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))

    return subprocess.run([sys.executable, "-m", "manifold_mixup.paper.cli", "depth-study", "--out", str(out), *TINY],
                          capture_output=True, text=True, timeout=timeout, preexec_fn=cap)


@pytest.mark.parametrize("what,kind", [("shard", "fifo"), ("manifest", "dev-zero")])  # test_shards: each kind
def test_a_fifo_or_device_in_the_folder_is_refused_by_name(finished, tmp_path, what, kind):
    out = _copy(finished, tmp_path)
    good = _results(out)
    path = sorted((out / "shards").glob("*.json"))[0] if what == "shard" else out / "manifest.json"
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    res = _cli_in_a_child(out)
    named = f"cannot be read (it is {'a FIFO' if kind == 'fifo' else 'a symbolic link'}, not a regular file; refused)"
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and named in lines[0], res.stderr
    if what == "shard":  # recomputed in its place
        assert res.returncode == 0 and "recomputing it" in lines[0] and _results(out) == good and path.is_file()
    else:
        assert res.returncode == 2 and "delete it and rerun" in lines[0]


# -- every setting, the environment included, is checked before anything is made (issue 24) -------

@pytest.mark.parametrize("value", ["abc", "-3", "\u00b3", "10000"])
def test_a_bad_thread_variable_is_refused_before_anything_is_made(tmp_path, capsys, monkeypatch, value):
    monkeypatch.setenv("MANIFOLD_MIXUP_THREADS", value)
    out = tmp_path / "run"
    assert depth(out) == 2
    line = one_error_line(capsys)
    assert "MANIFOLD_MIXUP_THREADS must be 'auto' or a number of threads" in line and not out.exists()
    assert main(["spiral-figure", "--out", str(out), *SPIRAL]) == 2
    assert "MANIFOLD_MIXUP_THREADS" in one_error_line(capsys) and not out.exists()


def test_a_bad_matplotlib_backend_is_one_line_naming_the_variable(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "f2.png"
    res = subprocess.run([sys.executable, "-m", "manifold_mixup.paper.cli", "figure2", "--out", str(out)], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "MPLBACKEND": "nonsense"})
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "MPLBACKEND='nonsense' is not a backend" in lines[0], res.stderr
    assert not out.exists()


def test_a_folder_of_other_files_is_refused_and_nothing_is_made_in_it(tmp_path, capsys):
    out = tmp_path / "home"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert depth(out) == 2
    assert "not empty and holds no study manifest" in one_error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]  # no .lock, no probe, no manifest


HUGE = "1" * 400
NUMERIC = [("depth-study", f) for f in ("--problems-per-k", "--components", "--n-train", "--epochs", "--batch-size",
                                        "--grid-resolution", "--mmlb-samples", "--problems-per-shard", "--seed", "--ks",
                                        "--hidden", "--eval-epochs")] + \
          [("confmix-study", f) for f in ("--seeds", "--epochs", "--batch-size", "--warmup-epochs",
                                          "--min-steps-per-epoch", "--seed")] + \
          [("spiral-figure", f) for f in ("--n", "--epochs", "--batch-size", "--resolution", "--seed", "--hidden")] + \
          [("figure2", "--seed")]


@pytest.mark.parametrize("command,flag", NUMERIC, ids=[f"{c} {f}" for c, f in NUMERIC])
def test_an_absurd_number_is_refused_in_one_short_line(tmp_path, capsys, command, flag):
    out = tmp_path / ("f.png" if command == "figure2" else "run")
    assert main([command, "--out", str(out), flag, HUGE]) == 2
    line = one_error_line(capsys)
    assert flag in line, line  # the setting is named by the flag that was typed
    assert len(line) < 400 and not out.exists()


def test_depth_study_mmlb_samples_too_few_for_the_classes_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    assert depth(out, "--mmlb-samples", "5") == 2  # K = 3 needs 2 mixed points per class
    line = one_error_line(capsys)
    assert "--mmlb-samples must be an integer in [6, " in line and not out.exists()
    assert depth(out, "--mmlb-samples", "6") == 0


def test_a_figure_never_writes_into_another_studys_folder(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    manifest = (out / "manifest.json").read_text()
    figure = (out / "figure2.png").read_bytes()
    assert main(["spiral-figure", "--out", str(out), *SPIRAL]) == 2
    assert "holds results of the study 'depth-study', not 'spiral-figure'" in one_error_line(capsys)
    assert main(["figure2", "--out", str(out / "figure2.png"), "--seed", "3"]) == 2
    assert "inside the study folder" in one_error_line(capsys)
    assert (out / "manifest.json").read_text() == manifest and (out / "figure2.png").read_bytes() == figure
    assert not (out / "spiral.png").exists()
    assert depth(out) == 0  # the study still resumes its own folder
    spiral = tmp_path / "spiral"
    assert main(["spiral-figure", "--out", str(spiral), *SPIRAL]) == 0
    capsys.readouterr()
    assert depth(spiral) == 2
    assert "holds results of the study 'spiral-figure', not 'depth-study'" in one_error_line(capsys)


# -- the lock is held until the last output is written (issue 24) ---------------------------------

def test_the_lock_is_held_until_the_last_output_is_written(tmp_path, monkeypatch):
    import manifold_mixup.paper.plots as plots
    from manifold_mixup.paper.files import StudyInUseError, StudyMismatchError

    out = tmp_path / "run"
    seen = []

    def a_second_run_meanwhile():
        try:
            ShardStore(out, "depth-study", {"another": "run"}).close()
            seen.append("took the folder")
        except StudyInUseError:
            seen.append("in use")
        except StudyMismatchError:
            seen.append("took the lock")

    def meanwhile(real):
        @functools.wraps(real)
        def write(*a, **k):
            a_second_run_meanwhile()
            return real(*a, **k)
        return write

    monkeypatch.setattr(plots, "figure2", meanwhile(plots.figure2))
    assert depth(out) == 0  # figure2.png is the depth study's last output
    monkeypatch.setattr(plots, "plot_decision_grid", meanwhile(plots.plot_decision_grid))
    out = tmp_path / "spiral"
    assert main(["spiral-figure", "--out", str(out), *SPIRAL]) == 0
    assert seen == ["in use", "in use"]


# -- interrupts at any moment; no temporary file left; threads and resumes (issue 24) -------------

def test_ctrl_c_during_the_imports_is_held_until_they_are_done(monkeypatch, capsys):
    import signal

    import manifold_mixup.paper.cli as cli

    real, built = cli._parser, []

    def interrupted_midway():
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the command line is being built
        parser = real()
        built.append(parser)
        return parser

    monkeypatch.setattr(cli, "_parser", interrupted_midway)
    assert main(["figure2", "--out", "x.png"]) == 130
    assert "interrupted" in one_error_line(capsys)
    assert built and not os.path.exists("x.png")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_during_the_works_imports_is_held_until_they_are_done(monkeypatch, capsys):
    """The parser imports no torch now; the work's imports (torch, matplotlib, scipy) come after
    parsing, still inside the window where an interrupt is held."""
    import signal

    import manifold_mixup.paper.cli as cli

    real, done = cli._import_the_work, []

    def interrupted_midway():
        os.kill(os.getpid(), signal.SIGINT)
        real()
        done.append(True)

    monkeypatch.setattr(cli, "_import_the_work", interrupted_midway)
    assert main(["figure2", "--out", "x.png"]) == 130
    assert "interrupted" in one_error_line(capsys)
    assert done and not os.path.exists("x.png")


def test_ctrl_c_after_the_result_is_printed_ends_normally(tmp_path):
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "manifold_mixup.paper.cli", "figure2", "--out", str(tmp_path / "f.png")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()  # the result: the work is done
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert json.loads(first)["command"] == "figure2"
    assert proc.returncode == 0 and err == "", err


@pytest.mark.parametrize("command", ["figure2", "spiral-figure"])
def test_an_interrupt_right_after_a_temporary_file_is_made_leaves_none(tmp_path, capsys, monkeypatch, command):
    real_open = os.open

    def interrupted(path, flags, *a, **k):
        fd = real_open(path, flags, *a, **k)
        if flags & os.O_CREAT and str(path).endswith(".tmp") and ".probe." not in str(path):
            raise KeyboardInterrupt  # the signal arrives as the call returns: the file exists, no name is known
        return fd

    monkeypatch.setattr(os, "open", interrupted)
    out = tmp_path / "out"
    args = ["figure2", "--out", str(out / "f.png")] if command == "figure2" else ["spiral-figure", "--out", str(out), *SPIRAL]
    out.mkdir()
    assert main(args) == 130
    assert "interrupted" in one_error_line(capsys)
    assert not [p.name for p in out.rglob("*.tmp")]


def test_figure2_removes_the_temporary_file_of_a_killed_run(tmp_path):
    stale = tmp_path / ".f.png.0123456789abcdef.tmp"  # what a SIGKILL between write and rename leaves
    stale.write_bytes(b"\x89PNG half")
    other = tmp_path / ".g.png.0123456789abcdef.tmp"  # another file's: left alone
    other.write_bytes(b"x")
    assert main(["figure2", "--out", str(tmp_path / "f.png")]) == 0
    assert not stale.exists() and other.exists() and (tmp_path / "f.png").exists()


def _two_core_confmix_args(out) -> list[str]:
    """A one-epoch ConfMix study of two methods on 10% of digits, for tests of thread counts (two cores)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    return ["confmix-study", "--seeds", "1", "--epochs", "1", "--methods", "erm", "input-mixup", "--train-fraction",
            "0.1", "--out", str(out), "--no-progress"]


def test_a_confmix_resume_under_another_thread_count_is_refused(tmp_path, capsys, monkeypatch):
    import torch

    args = _two_core_confmix_args(tmp_path)
    old = torch.get_num_threads()
    try:
        monkeypatch.setenv("MANIFOLD_MIXUP_THREADS", "1")
        assert main(args) == 0
        (tmp_path / "shards" / "input-mixup-seed000.json").unlink()  # an interrupted run
        capsys.readouterr()
        monkeypatch.setenv("MANIFOLD_MIXUP_THREADS", "2")
        assert main(args) == 2
        line = one_error_line(capsys)
        assert "computed with 1 torch thread(s) and this run has 2" in line and "MANIFOLD_MIXUP_THREADS=1" in line
        assert not (tmp_path / "shards" / "input-mixup-seed000.json").exists()
        monkeypatch.setenv("MANIFOLD_MIXUP_THREADS", "1")
        assert main(args) == 0
    finally:
        torch.set_num_threads(old)


@pytest.mark.slow  # spawns two worker processes (~10 s)
def test_confmix_shards_trained_in_worker_processes_record_the_workers_threads(tmp_path, capsys, monkeypatch):
    import torch

    args = _two_core_confmix_args(tmp_path)
    old = torch.get_num_threads()
    try:
        monkeypatch.setenv("MANIFOLD_MIXUP_THREADS", "2")
        assert main([*args, "--workers", "2"]) == 0  # two processes, one thread each
        assert {json.loads(p.read_text())["threads"] for p in (tmp_path / "shards").glob("*.json")} == {1}
        (tmp_path / "shards" / "input-mixup-seed000.json").unlink()
        capsys.readouterr()
        assert main(args) == 2  # in this process, with its 2 threads: refused, not mixed
        assert "computed with 1 torch thread(s) and this run has 2" in one_error_line(capsys)
    finally:
        torch.set_num_threads(old)
