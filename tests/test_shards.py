import json

import pytest

from manifold_mixup.shards import Shard, ShardStore, StudyMismatchError, run_shards, write_atomic

CALLS = []


def square_worker(payload):
    CALLS.append(payload["i"])
    if payload.get("fail"):
        raise KeyboardInterrupt  # an interruption half-way through a study
    return [{"i": payload["i"], "sq": payload["i"] ** 2}]


def test_resume_skips_finished_shards_and_gives_the_same_rows(tmp_path):
    settings = {"n": 4, "seed": 0}
    shards = [Shard(f"s{i}", {"i": i, "fail": i == 2}) for i in range(4)]
    store = ShardStore(tmp_path, "toy", settings)
    CALLS.clear()
    with pytest.raises(KeyboardInterrupt):
        run_shards(store, shards, square_worker, progress=False)
    assert CALLS == [0, 1, 2] and store.done("s1") and not store.done("s2")
    assert not list((tmp_path / "shards").glob(".*tmp"))  # nothing half-written
    CALLS.clear()
    fixed = [Shard(s.key, {"i": s.payload["i"]}) for s in shards]
    rows = run_shards(ShardStore(tmp_path, "toy", settings), fixed, square_worker, progress=False)
    assert CALLS == [2, 3]
    assert rows == [{"i": i, "sq": i * i} for i in range(4)]


def test_other_settings_or_other_study_are_refused(tmp_path):
    ShardStore(tmp_path, "toy", {"n": 4})
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
