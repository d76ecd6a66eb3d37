import json

import pytest

from manifold_mixup.paper.store import Shard, ShardStore

from manifold_mixup.paper.files import StudyMismatchError, write_atomic

from manifold_mixup.paper.executors import run_shards

CALLS = []


def square_worker(payload):
    CALLS.append(payload["i"])
    if payload.get("fail"):
        raise KeyboardInterrupt  # an interruption half-way through a study
    return [{"i": payload["i"], "sq": payload["i"] ** 2}]


def test_resume_skips_finished_shards_and_gives_the_same_rows(tmp_path):
    settings = {"n": 4, "seed": 0}
    shards = [Shard(f"s{i}", {"i": i, "fail": i == 2}) for i in range(4)]
    CALLS.clear()
    with ShardStore(tmp_path, "toy", settings) as store:
        with pytest.raises(KeyboardInterrupt):
            run_shards(store, shards, square_worker, progress=False)
        assert CALLS == [0, 1, 2] and store.done("s1") and not store.done("s2")
    assert not list((tmp_path / "shards").glob(".*tmp"))  # nothing half-written
    CALLS.clear()
    fixed = [Shard(s.key, {"i": s.payload["i"]}) for s in shards]
    with ShardStore(tmp_path, "toy", settings) as store:
        rows = run_shards(store, fixed, square_worker, progress=False)
    assert CALLS == [2, 3]
    assert rows == [{"i": i, "sq": i * i} for i in range(4)]


def test_other_settings_or_other_study_are_refused(tmp_path):
    with ShardStore(tmp_path, "toy", {"n": 4}) as store:
        store.save("s0", [{"i": 0}])  # a finished shard: the folder is no longer up for grabs
    with pytest.raises(StudyMismatchError, match=r"other settings \(differing: \['n'\]\)"):
        ShardStore(tmp_path, "toy", {"n": 5})
    with pytest.raises(StudyMismatchError, match="study 'toy', not 'other'"):
        ShardStore(tmp_path, "other", {"n": 4})
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file.txt").write_text("hello")
    with pytest.raises(StudyMismatchError, match="not empty"):
        ShardStore(tmp_path / "x", "toy", {"n": 4})


def test_a_shard_from_other_settings_is_refused(tmp_path):
    store = ShardStore(tmp_path, "toy", {"n": 4})
    (tmp_path / "shards" / "s0.json").write_text(json.dumps({"key": "s0", "fingerprint": "0" * 16, "rows": []}))
    with pytest.raises(StudyMismatchError, match="other settings"):
        store.load("s0")


def test_write_atomic_replaces_whole_file(tmp_path):
    p = tmp_path / "a" / "f.json"
    write_atomic(p, "one")
    write_atomic(p, "two")
    assert p.read_text() == "two" and len(list(p.parent.iterdir())) == 1


def test_bad_executor_and_unreachable_ray_address(tmp_path):
    store = ShardStore(tmp_path, "toy", {})
    with pytest.raises(ValueError, match="executor must be 'local' or 'ray'; got 'dask'"):
        run_shards(store, [Shard("a", {"i": 1})], square_worker, executor="dask", progress=False)
    pytest.importorskip("ray")
    with pytest.raises(ConnectionError, match="cannot reach the Ray cluster at --address '127.0.0.1:9'"):
        run_shards(store, [Shard("a", {"i": 1})], square_worker, executor="ray", address="127.0.0.1:9", progress=False)
    assert not store.done("a")


def test_address_without_ray_is_refused(tmp_path):
    store = ShardStore(tmp_path, "toy", {})
    with pytest.raises(ValueError, match="only used with --executor ray"):
        run_shards(store, [Shard("a", {"i": 1})], square_worker, address="127.0.0.1:6379", progress=False)


def test_write_atomic_gives_the_permissions_of_a_plain_write(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = tmp_path / "atomic.txt"
    write_atomic(atomic, "x")
    assert atomic.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_shard_list_is_made_on_demand_and_duplicate_keys_are_named(tmp_path):
    from manifold_mixup.paper.store import ShardList

    made = []
    lazy = ShardList(10**12, lambda i: made.append(i) or Shard(f"s{i}", {"i": i}))
    assert len(lazy) == 10**12 and lazy[-1].key == f"s{10**12 - 1}" and made == [10**12 - 1]
    with pytest.raises(IndexError):
        lazy[10**12]
    with ShardStore(tmp_path, "toy", {}) as store:
        with pytest.raises(ValueError, match=r"repeated: \['a'\]"):
            run_shards(store, [Shard("a", {"i": 1}), Shard("b", {"i": 2}), Shard("a", {"i": 3})], square_worker,
                       progress=False)
        assert not store.done("b")  # refused before any work


def test_settings_that_are_not_strict_json_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="finite numbers"):
        ShardStore(tmp_path / "o", "toy", {"alpha": float("nan")})
    assert not (tmp_path / "o").exists()


def test_write_atomic_takes_bytes_and_names_the_path_on_failure(tmp_path, monkeypatch):
    import errno
    import os

    write_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as e:
        write_atomic(tmp_path / "c.txt", "x")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "c.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin"]


def test_the_manifest_records_the_machine_outside_the_fingerprint(tmp_path):
    import torch

    with ShardStore(tmp_path, "toy", {"n": 1}) as store:
        fp = store.fingerprint
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    machine = manifest["machines"][0]
    assert {"cpu", "cpu_count", "torch", "torch_cuda", "torch_cpu_capability", "torch_threads", "gpus",
            "torch_build"} <= set(machine)
    assert machine["torch"] == torch.__version__ and manifest["versions"]["manifold_mixup"]
    cpu = machine["cpu"]
    manifest["machines"][0]["cpu"] = "another CPU"  # the study resumes on another machine
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with ShardStore(tmp_path, "toy", {"n": 1}) as store:
        assert store.fingerprint == fp
    cpus = [m["cpu"] for m in json.loads((tmp_path / "manifest.json").read_text())["machines"]]
    assert cpus == ["another CPU", cpu]


def test_threads_are_fitted_to_the_free_cores_before_each_shard(tmp_path, monkeypatch):
    import os

    import torch

    import manifold_mixup.paper.threads as threads_mod

    cores = len(os.sched_getaffinity(0))
    seen = []
    busy = iter([cores] * 3)  # the first shard's three looks: every core taken by others; then a quiet machine

    def others():
        return next(busy, 0)

    def worker(payload):
        seen.append(torch.get_num_threads())
        return [payload]

    monkeypatch.setattr(threads_mod, "_runnable_others", others)
    monkeypatch.setattr("time.sleep", lambda s: None)
    old = torch.get_num_threads()
    monkeypatch.setenv("MANIFOLD_MIXUP_THREADS", "auto")
    try:
        with ShardStore(tmp_path, "toy", {}) as store:
            run_shards(store, [Shard("a", {"i": 0}), Shard("b", {"i": 1})], worker, progress=False)
        assert torch.get_num_threads() == old  # restored for the next study
    finally:
        torch.set_num_threads(old)
    assert seen == [1, min(old, cores)]  # never more than torch had at the start
    monkeypatch.setenv("MANIFOLD_MIXUP_THREADS", "many")
    with ShardStore(tmp_path / "x", "toy", {}) as store:
        with pytest.raises(ValueError, match="MANIFOLD_MIXUP_THREADS must be 'auto' or a number"):
            run_shards(store, [Shard("a", {"i": 0})], worker, progress=False)


def test_threads_count_another_study_seen_in_any_look(tmp_path, monkeypatch):
    # another study stalled at a barrier sleeps part of the time: one look in five that sees its
    # threads is enough to leave it the cores (taking the least look, two copies kept all threads)
    import os

    import torch

    import manifold_mixup.paper.threads as threads_mod

    cores = len(os.sched_getaffinity(0))
    looks = iter([0, cores, 0, 0, 0])
    monkeypatch.setattr(threads_mod, "_runnable_others", lambda: next(looks, 0))
    monkeypatch.setattr("time.sleep", lambda s: None)
    old = torch.get_num_threads()
    try:
        assert threads_mod.fit_threads_to_load(old) == 1
    finally:
        torch.set_num_threads(old)


# -- digests, the rows' schema, regular files only, the thread setting (issue 24) ------------------

def _check_square(payload, rows):
    from manifold_mixup.paper.store import check_rows, integer

    i = payload["i"]
    return check_rows(rows, {"i": integer(i, i), "sq": integer(i * i, i * i)}, ("i",), [(i,)])


def test_a_shard_records_its_digest_and_an_edit_is_recomputed_with_a_warning(tmp_path):
    from manifold_mixup.paper.store import shard_digest

    with ShardStore(tmp_path, "toy", {"n": 1}) as store:
        store.save("s0", [{"i": 3, "sq": 9}])
    data = json.loads((tmp_path / "shards" / "s0.json").read_text())
    assert data["digest"] == shard_digest(data) and data["digest"].startswith("sha256:")
    data["rows"][0]["sq"] = 10  # a changed digit
    (tmp_path / "shards" / "s0.json").write_text(json.dumps(data))
    with ShardStore(tmp_path, "toy", {"n": 1}) as store:
        with pytest.warns(UserWarning, match=r"s0.json: its content does not match the SHA-256 digest.*recomputing it"):
            assert not store.done("s0")
    del data["digest"]  # a shard of an older version, or an edit that dropped the digest
    (tmp_path / "shards" / "s0.json").write_text(json.dumps(data))
    with ShardStore(tmp_path, "toy", {"n": 1}) as store:
        with pytest.warns(UserWarning, match="carries no content digest"):
            assert not store.done("s0")


@pytest.mark.parametrize("rows,why", [
    ([{"i": 2, "sq": 5}], r"sq = 5 is not a valid value"),
    ([{"i": 2, "sq": "4"}], r"sq = '4' is not a valid value"),
    ([{"i": 2, "sq": [4]}], r"sq = \[4\] is not a valid value"),
    ([{"i": 2, "sq": True}], r"sq = True is not a valid value"),
    ([{"i": 2, "sq": 4}, {"i": 2, "sq": 4}], r"the row \{'i': 2\} appears more than once"),
    ([{"i": 3, "sq": 9}], r"row 0: i = 3"),
    ([], r"1 expected row\(s\) missing"),
    ([{"i": 2, "sq": 4, "x": 1}], r"row 0 has columns"),
], ids=["value", "string", "list", "bool", "duplicate", "foreign", "empty", "column"])
def test_a_forged_shard_whose_rows_fail_the_schema_is_recomputed(tmp_path, rows, why):
    # the digest recomputed by the forger: the study's own check still refuses the rows
    from manifold_mixup.paper.store import shard_digest

    payload = {"i": 2}
    with ShardStore(tmp_path, "toy", {}, check=_check_square) as store:
        store.save("s", [{"i": 2, "sq": 4}], payload)
        assert store.done("s", payload)
        record = {"key": "s", "fingerprint": store.fingerprint, "threads": None, "rows": rows}
        record["digest"] = shard_digest(record)
        store.path("s").write_text(json.dumps(record))
        with pytest.warns(UserWarning, match="its rows fail the study's check .*" + why):
            assert not store.done("s", payload)
        with pytest.raises(StudyMismatchError, match="fail the study's check"):
            store.load("s", payload)
        with pytest.raises(RuntimeError, match="the worker's rows fail the study's check"):
            store.save("s", rows, payload)  # a worker's wrong rows are never written


def test_check_rows_numbers_are_finite_and_in_range():
    from manifold_mixup.paper.store import check_rows, integer, one_of, real

    cols = {"x": real(0, 1), "y": real(0, nan=True), "n": integer(0, 5), "m": one_of(["a", "b"])}
    good = {"x": 0.5, "y": float("nan"), "n": 1, "m": "a"}
    assert check_rows([good], cols, ("n",), [(1,)]) is None
    for bad in ({"x": float("nan")}, {"x": float("inf")}, {"x": -0.1}, {"y": -1.0}, {"n": 1.0}, {"n": 10**400},
                {"m": "c"}, {"m": None}, {"x": None}):
        assert "is not a valid value" in check_rows([{**good, **bad}], cols, ("n",), [(1,)])
    assert "not in the order" in check_rows([{**good, "n": 2}, good], cols, ("n",), [(1,), (2,)])


def _read_in_a_child(path, timeout=30):
    """read_json in a child process with a 1 GiB memory cap and a time limit: the old reader hung
    on a FIFO and read a link to /dev/zero until the memory ran out."""
    import resource
    import subprocess
    import sys

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))

    code = ("import sys; from pathlib import Path; from manifold_mixup.paper.files import read_json, UnreadableFileError\n"
            "try:\n    read_json(Path(sys.argv[1]), 'shard')\nexcept UnreadableFileError as e:\n    print(e)\n")
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=timeout,
                          preexec_fn=cap)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "folder"])
def test_only_regular_files_are_read_and_never_block(tmp_path, kind):
    import os

    p = tmp_path / "K2.json"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "dev-zero":
        p.symlink_to("/dev/zero")
    else:
        p.mkdir()
    res = _read_in_a_child(p)
    what = {"fifo": "a FIFO", "dev-zero": "a symbolic link", "folder": "a folder"}[kind]
    assert res.returncode == 0 and res.stdout.strip() == f"shard {p} cannot be read (it is {what}, not a regular file; refused)"


def test_a_file_larger_than_the_bound_is_refused(tmp_path, monkeypatch):
    from manifold_mixup.paper.files import UnreadableFileError, read_bytes, read_json

    p = tmp_path / "big.json"
    p.write_text(json.dumps({"rows": [0] * 1000}))
    with pytest.raises(UnreadableFileError, match="holds more than 100 bytes"):
        read_bytes(p, "shard", limit=100)
    assert read_json(p, "shard") == {"rows": [0] * 1000}
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)  # parses to a RecursionError: one line, no traceback
    with pytest.raises(UnreadableFileError, match="RecursionError"):
        read_json(deep, "shard")


@pytest.mark.parametrize("value", ["abc", "-3", "\u00b3", "10000", "0", "1" * 400, "1.5"])
def test_the_thread_variable_is_checked_and_named(monkeypatch, value):
    from manifold_mixup.paper.threads import thread_setting

    monkeypatch.setenv("MANIFOLD_MIXUP_THREADS", value)
    with pytest.raises(ValueError, match=r"^MANIFOLD_MIXUP_THREADS must be 'auto' or a number of threads from 1 to \d+") as e:
        thread_setting()
    assert len(str(e.value)) < 200


def test_the_thread_variable_accepts_auto_a_number_and_nothing(monkeypatch):
    from manifold_mixup.paper.threads import thread_setting

    for value, want in (("", None), (" AUTO ", "auto"), ("1", 1)):
        monkeypatch.setenv("MANIFOLD_MIXUP_THREADS", value)
        assert thread_setting() == want
