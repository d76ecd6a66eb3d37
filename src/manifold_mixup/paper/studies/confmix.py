"""Table 2: ConfMix, half ConfMix, ramps and fixed-alpha mixup, at the input and before the first
fully connected layer of the paper's CNN, against ERM, over several seeds.

Each (method, seed) is one shard: one training of ``paper_cnn`` by ``train_classifier``. All
methods of one seed share the initial weights and the data order (paired comparisons).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import DATASETS, load_dataset
from ..models import PAPER_CNN_MIX_LAYER, paper_cnn
from ...policies import AlphaPolicy, ConfMix, Constant, HalfConfMix, RampDown, RampUp
from ..store import Shard, ShardList
from ..executors import run_study
from ..files import write_atomic
from ..files import COUNT_MAX
from ..store import check_rows, integer, one_of, real
from ..stats import mean_interval
from ...train import accuracy, train_classifier
from ..devices import resolve_device
from .report import ALPHA_MAX, check_choices, check_int, check_real, check_unique

__all__ = ["ConfMixStudyConfig", "METHODS", "PAPER_TABLE2", "PRESETS", "run_confmix_study", "method_policy"]

KINDS = ("mixup", "confmix", "half-confmix", "ramp-up", "ramp-down")
METHODS = ("erm",) + tuple(f"{where}-{kind}" for where in ("input", "manifold") for kind in KINDS)
LABELS = {
    "mixup": "Mixup (alpha = 0.5)", "confmix": "ConfMix", "half-confmix": "1/2 ConfMix",
    "ramp-up": "alpha from 0 -> 1", "ramp-down": "alpha from 1 -> 0",
}
# The paper's Table 2: accuracy change over ERM on CIFAR-10, percentage points.
PAPER_TABLE2 = {
    "input-mixup": 1.9, "input-confmix": 3.4, "input-half-confmix": 2.4, "input-ramp-up": 3.1, "input-ramp-down": 3.1,
    "manifold-mixup": 3.7, "manifold-confmix": 3.7, "manifold-half-confmix": 2.9, "manifold-ramp-up": 3.9,
    "manifold-ramp-down": 2.6,
}


@dataclass(frozen=True)
class ConfMixStudyConfig:
    """Settings of the Table 2 study (paper defaults: 50 epochs, batch 250, M = 5, h = 25).

    ``train_fraction`` < 1 trains on a stratified subset of the training images (drawn from
    ``seed``; the test set is the same), and the batch becomes ``min(batch_size, n_train //
    min_steps_per_epoch)`` so that an epoch still has at least ``min_steps_per_epoch`` steps:
    the comparison then measures scarce data, not fewer optimisation steps. At full data on
    digits (1347 training images) the batch stays 250.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    seeds: int = 5
    epochs: int = 50
    batch_size: int = 250
    lr: float = 1e-3
    optimizer: str = "adam"
    alpha: float = 0.5
    warmup_epochs: int = 5
    half_life: float = 25.0
    confidence: str = "fresh"
    methods: tuple[str, ...] = METHODS
    seed: int = 0
    device: str = "cpu"
    train_fraction: float = 1.0
    min_steps_per_epoch: int = 5

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {list(DATASETS)}")
        if self.data_dir is not None and self.dataset == "digits":
            raise ValueError(f"data_dir {self.data_dir!r} is only used with datasets 'cifar10' and 'fashion-mnist' "
                             "(digits are bundled with scikit-learn); leave it out")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; valid methods: {list(METHODS)}")
        if "erm" not in self.methods:
            raise ValueError("methods must include 'erm', the baseline every method is compared with")
        check_unique("methods", self.methods)
        for name in ("seeds", "epochs", "min_steps_per_epoch"):
            check_int(name, getattr(self, name), 1)
        check_int("batch_size", self.batch_size, 2)  # mixing pairs rows
        check_int("seed", self.seed, 0, 2**32 - 1)
        check_real("warmup_epochs", self.warmup_epochs, 0)
        check_real("lr", self.lr, 0, low_open=True)
        check_real("alpha", self.alpha, 0, ALPHA_MAX, low_open=True)
        check_real("half_life", self.half_life, 0, low_open=True)
        check_real("train_fraction", self.train_fraction, 0, 1, low_open=True)
        check_choices("optimizer", self.optimizer, ("adam", "sgd"))
        check_choices("confidence", self.confidence, ("fresh", "cached"))
        if not isinstance(self.device, str):
            raise ValueError(f"device must be a string such as 'cpu' or 'cuda'; got {self.device!r}")

    def settings(self) -> dict:
        """What the results depend on (the device is left out: a study may resume elsewhere; so is
        Fashion-MNIST's folder: its files' content is checked against the official SHA-256)."""
        d = asdict(self)
        d.pop("device")
        if self.dataset == "fashion-mnist":
            d.pop("data_dir")
        d["methods"] = list(self.methods)
        return d

    def batch_for(self, n_train: int) -> int:
        """The batch actually used with ``n_train`` training images (see the class docstring)."""
        return max(2, min(self.batch_size, n_train // self.min_steps_per_epoch))

    def load(self):
        """The data set under these settings (the same for every shard of the study)."""
        data = _load(self.dataset, self.data_dir, self.seed, self.train_fraction)
        n = data.x_train.shape[0]
        if n // self.min_steps_per_epoch < 2:
            raise ValueError(f"train_fraction {self.train_fraction} leaves {n} training images: too few for "
                             f"{self.min_steps_per_epoch} steps of at least 2 images per epoch")
        return data


#: Named settings; every flag replaces one field. ``paper``: the paper's protocol (DESIGN.md; with
#: ``--dataset fashion-mnist``, all 60,000 training images). ``cpu``: Table 2 on Fashion-MNIST
#: within about 10 minutes on a quiet 2-core CPU, with room above ERM (REPRODUCTION.md): a
#: stratified 1% of the training images (600), 20 epochs of at least 20 steps (batch 30, 400
#: Adam steps, so that ERM nearly fits its training images within the budget), and ConfMix's
#: start and the ramps' half-life scaled with the epochs as in the paper (M = 5 and h = 25 of 50:
#: 10% and 50%).
PRESETS: dict[str, ConfMixStudyConfig] = {
    "paper": ConfMixStudyConfig(),
    "cpu": ConfMixStudyConfig(dataset="fashion-mnist", train_fraction=0.01, epochs=20, min_steps_per_epoch=20,
                              warmup_epochs=2, half_life=10.0),
}


@functools.lru_cache(maxsize=1)
def _load(dataset: str, data_dir: str | None, seed: int, train_fraction: float):
    """The data set, read once per process (every shard of a study uses the same one; the
    tensors are only read: batches are gathered copies)."""
    return load_dataset(dataset, data_dir, seed=seed, train_fraction=train_fraction)


def method_policy(method: str, cfg: ConfMixStudyConfig) -> tuple[str | None, AlphaPolicy | None]:
    """(layer to mix or None for ERM, alpha policy) of one Table 2 method."""
    if method == "erm":
        return None, None
    where, kind = method.split("-", 1)
    layer = "input" if where == "input" else PAPER_CNN_MIX_LAYER
    policy: AlphaPolicy = {
        "mixup": lambda: Constant(cfg.alpha),
        "confmix": lambda: ConfMix(cfg.warmup_epochs, confidence=cfg.confidence),
        "half-confmix": lambda: HalfConfMix(cfg.warmup_epochs, confidence=cfg.confidence),
        "ramp-up": lambda: RampUp(cfg.half_life),
        "ramp-down": lambda: RampDown(cfg.half_life),
    }[kind]()
    return layer, policy


def train_one(payload: dict) -> list[dict]:
    """Shard worker: train one (method, seed) and return its result row. The test set is
    evaluated once, after the last epoch (the table needs nothing else)."""
    cfg = ConfMixStudyConfig(**{**payload["config"], "methods": tuple(payload["config"]["methods"])})
    method, seed = payload["method"], payload["seed"]
    device = resolve_device(cfg.device)
    if device.type == "cuda":  # the same shard gives the same numbers on the same kind of GPU
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    data = cfg.load()
    init_seed, order_seed = (int(s) for s in np.random.SeedSequence([cfg.seed, seed]).generate_state(2))
    # the initial weights: one per seed, shared by all methods; no global random state is used
    model = paper_cnn(data.image_shape, data.num_classes, generator=torch.Generator().manual_seed(init_seed)).to(device)
    layer, policy = method_policy(method, cfg)
    gen = torch.Generator().manual_seed(order_seed)  # data order (and the mixing stream's seed)
    res = train_classifier(
        model, data.x_train.to(device), data.y_train.to(device),
        layers=layer, alpha=policy if policy is not None else 0.0,
        epochs=cfg.epochs, batch_size=cfg.batch_for(data.x_train.shape[0]),
        lr=cfg.lr, optimizer=cfg.optimizer, generator=gen, num_classes=data.num_classes,
    )
    return [{
        "method": method, "seed": seed, "test_acc": accuracy(model, data.x_test.to(device), data.y_test.to(device)),
        "train_acc": res.epochs[-1]["train_acc"], "final_loss": res.epochs[-1]["loss"], "policy": res.policy,
    }]


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


class _Lookahead:
    """The shard worker when ``workers`` > 1: the study's runner asks for shards in order, one at a
    time; each answer comes from a pool of processes that is already training the next ones."""

    def __init__(self, pool, shards: ShardList, done, ahead: int) -> None:
        self.pool, self.shards, self.done, self.ahead, self.running = pool, shards, done, ahead, {}

    def __call__(self, payload: dict) -> list[dict]:
        methods = payload["config"]["methods"]
        i = payload["seed"] * len(methods) + methods.index(payload["method"])  # its place in shards_for
        for j in range(i, min(i + self.ahead, len(self.shards))):
            if j not in self.running and (j == i or not self.done(self.shards[j].key)):
                self.running[j] = self.pool.apply_async(train_one, (self.shards[j].payload,))
        return self.running.pop(i).get()


def _run_in_processes(out: Path, study: str, settings: dict, shards: ShardList, worker, *, workers: int,
                      **kwargs) -> dict:
    """``run_study`` with the shards trained ``workers`` at a time in local processes (spawned:
    CUDA cannot be used in a forked child), torch's threads divided among them."""
    import multiprocessing

    threads = max(1, torch.get_num_threads() // workers)
    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_set_threads, initargs=(threads,))
    try:
        ahead = _Lookahead(pool, shards, lambda key: (out / "shards" / f"{key}.json").exists(), 2 * workers)
        result = run_study(out, study, settings, shards, ahead, shard_threads=threads, **kwargs)
        pool.close()
        return result
    finally:
        pool.terminate()  # (after close: the workers have nothing left; on an error: stop them now)
        pool.join()


def check_shard_rows(payload: dict, rows: list) -> str | None:
    """Why ``rows`` are not what :func:`train_one` returns for ``payload``, or None: one row of this
    (method, seed), accuracies in [0, 1], a policy history of finite numbers (an edited shard is recomputed)."""
    epochs = payload["config"]["epochs"]
    p01 = real(0.0, 1.0)
    step = {"epoch": real(0, epochs), "mean_alpha": real(0.0, ALPHA_MAX), "mean_lambda": p01,
            "mean_partner_weight": real(0.0, 0.5), "rows": integer(0, COUNT_MAX)}
    history = lambda v: isinstance(v, list) and len(v) <= epochs and all(  # noqa: E731
        isinstance(h, dict) and sorted(h) == sorted(step) and all(ok(h[k]) for k, ok in step.items()) for h in v)
    columns = {"method": one_of([payload["method"]]), "seed": integer(payload["seed"], payload["seed"]), "test_acc": p01,
               "train_acc": p01, "final_loss": real(0.0, nan=True), "policy": history}
    if rows and isinstance(rows[0], dict) and "test_acc_per_epoch" in rows[0]:
        columns["test_acc_per_epoch"] = lambda v: isinstance(v, list) and len(v) == epochs and all(map(p01, v))
    return check_rows(rows, columns, ("method", "seed"), [(payload["method"], payload["seed"])])


def shards_for(cfg: ConfMixStudyConfig) -> ShardList:
    """One shard per (seed, method), seed-major, made on demand."""
    config = {**asdict(cfg), "methods": list(cfg.methods)}
    nm = len(cfg.methods)

    def make(i: int) -> Shard:
        s, m = divmod(i, nm)
        return Shard(f"{cfg.methods[m]}-seed{s:03d}", {"config": config, "method": cfg.methods[m], "seed": s})

    return ShardList(cfg.seeds * nm, make)


def estimated_cpu_seconds(cfg: ConfMixStudyConfig, n_train: int, image_shape: tuple[int, int, int],
                          threads: int | None = None) -> float:
    """A rough time of the study on a CPU: the CNN's training FLOPs (3x its forward, ERM; mixing
    and ConfMix add up to a third) at ~10 GFLOP/s per thread."""
    c, h, w = image_shape
    forward = 2 * (h * w * 32 * 9 * c + (h // 2) * (w // 2) * 64 * 32 * 9 + 64 * (h // 4) * (w // 4) * 64 + 64 * 10)
    flops = 3 * forward * n_train * cfg.epochs * cfg.seeds * len(cfg.methods)
    return flops / (10e9 * (threads or torch.get_num_threads()))


def _steps(cfg: ConfMixStudyConfig, n_train: int) -> int:
    """Optimisation steps per epoch (``train_classifier`` keeps a last partial batch of >= 2 rows)."""
    b = cfg.batch_for(n_train)
    return n_train // b + (n_train % b >= 2)


def _confmix_never_on(cfg: ConfMixStudyConfig) -> bool:
    return cfg.epochs <= cfg.warmup_epochs and any(m.endswith("confmix") for m in cfg.methods)


def summarise(cfg: ConfMixStudyConfig, rows: list[dict], n_train: int | None = None) -> tuple[str, dict]:
    """Table 2 as markdown (mean accuracy change over ERM with 95% t-intervals across seeds).
    ``n_train``: training images used (states the subset and the batch chosen for it)."""
    acc = {(r["method"], r["seed"]): 100 * r["test_acc"] for r in rows}
    erm = [acc[("erm", s)] for s in range(cfg.seeds)]
    base = mean_interval(erm)
    table = {}
    seeds = f"{cfg.seeds} seed{'s' if cfg.seeds != 1 else ''}"
    base_ci = "no interval from one seed" if math.isnan(base.low) else f"95% interval {base.low:.2f} to {base.high:.2f}"
    batch = cfg.batch_size if n_train is None else cfg.batch_for(n_train)
    lines = [
        f"# Table 2: mixing methods on {cfg.dataset} ({seeds}, {cfg.epochs} epochs, batch {batch})",
        "",
        f"ERM test accuracy: {base.mean:.2f}% ({base_ci}).",
        "Change in test accuracy over ERM, percentage points, paired by seed (same initial weights and data order);",
        "95% Student-t interval across seeds. The paper's column is its single CIFAR-10 run.",
        "",
        "| Mixup technique | accuracy change (ours) | 95% interval | paper (CIFAR-10) |",
        "|---|---|---|---|",
    ]
    if n_train is not None and (cfg.train_fraction < 1 or batch != cfg.batch_size):
        lines[2:2] = [f"Training on {n_train} images, a stratified {cfg.train_fraction:g} of the training split (seed "
                      f"{cfg.seed}; the test set is the full one); batch {batch} = min({cfg.batch_size}, {n_train} // "
                      f"{cfg.min_steps_per_epoch}), so that an epoch has {_steps(cfg, n_train)} >= "
                      f"{cfg.min_steps_per_epoch} steps.", ""]
    if _confmix_never_on(cfg):
        lines[2:2] = [f"ConfMix never left its warm-up ({cfg.epochs} epochs <= warmup_epochs = {cfg.warmup_epochs}): "
                      "its rows are ERM's.", ""]
    for m in cfg.methods:
        if m == "erm":
            continue
        where, kind = m.split("-", 1)
        d = mean_interval([acc[(m, s)] - acc[("erm", s)] for s in range(cfg.seeds)])
        table[m] = d._asdict()
        ci = "n/a" if math.isnan(d.low) else f"[{d.low:+.2f}, {d.high:+.2f}]"
        lines.append(f"| {where.capitalize()} {LABELS[kind]} | {d.mean:+.2f} | {ci} | {PAPER_TABLE2[m]:+.1f} |")
    return "\n".join(lines) + "\n", table


def run_confmix_study(cfg: ConfMixStudyConfig, out: str | Path, executor: str = "local", address: str | None = None,
                      progress: bool = True, workers: int = 1) -> dict:
    """Run (or resume) the study into ``out``: results.csv, summary.md, alpha.png, manifest.json.

    ``workers`` > 1 trains that many shards at once in local processes, on one device (a GPU is
    shared by them) or on the CPU's cores (torch's threads divided among them). On a GPU the
    numbers do not depend on it; on a CPU they depend on the threads each shard runs with.
    """
    check_int("workers", workers, 1, 256)
    if workers > 1 and executor != "local":
        raise ValueError(f"workers = {workers} runs shards as local processes; it cannot be combined with executor "
                         f"{executor!r} (give one or the other)")
    study = run_study if workers == 1 else functools.partial(_run_in_processes, workers=workers)
    from ..plots import plot_alpha_trajectories
    from .report import write_csv

    resolve_device(cfg.device)  # fail before any work when the device or the data are missing
    data = cfg.load()
    n_train = data.x_train.shape[0]
    if resolve_device(cfg.device).type == "cpu" and estimated_cpu_seconds(cfg, n_train, data.image_shape) > 3600:
        hours = estimated_cpu_seconds(cfg, n_train, data.image_shape) / 3600
        warnings.warn(f"this study is estimated to take about {hours:.1f} hours on this CPU ({torch.get_num_threads()} "
                      "thread(s)); finished shards are kept if you stop it", stacklevel=2)
    del data
    if _confmix_never_on(cfg):
        warnings.warn(f"epochs = {cfg.epochs} <= warmup_epochs = {cfg.warmup_epochs}: the ConfMix methods never leave "
                      "their warm-up and train exactly as ERM", stacklevel=2)
    out = Path(out)
    info = {"n_train": n_train, "batch_size_used": cfg.batch_for(n_train), "steps_per_epoch": _steps(cfg, n_train)}

    def finish(rows: list[dict]) -> dict:  # the outputs, written while the study still holds its folder's lock
        write_csv(out / "results.csv", [{k: v for k, v in r.items() if k not in ("policy", "test_acc_per_epoch")}
                                        for r in rows])
        text, table = summarise(cfg, rows, n_train)
        write_atomic(out / "summary.md", text)
        plot_alpha_trajectories(rows, out / "alpha.png")
        return {"rows": rows, "table": table}

    return study(out, "confmix-study", cfg.settings(), shards_for(cfg), train_one, info=info, executor=executor,
                     address=address, progress=progress, desc="confmix study",
                     gpus_per_task=1 if resolve_device(cfg.device).type == "cuda" else 0,
                     adapt_threads=False,  # the CNN's numbers depend on the thread count: keep them fixed
                     check=check_shard_rows, finish=finish)
