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

from ...checks import (ALPHA_MAX, CONFIDENCES, COUNT_MAX, OPTIMIZERS, STUDY_SEED_MAX, as_generator, check_choice,
                       check_int, check_methods, check_real, check_seed, plain_fields)
from ..constants import DATASETS, DEVICES, PAPER_CNN_MIX_LAYER
from ..executors import check_workers, run_study
from ..files import write_atomic
from ..store import Shard, ShardList, check_rows, integer, one_of, real
from .protocol import Flag, Study
from .report import write_csv

__all__ = ["ConfMixStudyConfig", "METHODS", "PAPER_TABLE2", "PRESETS", "STUDY", "run_confmix_study", "method_policy",
           "run_shard", "check_shard", "shards_for", "summarise"]

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
        plain_fields(self)  # numpy numbers as Python's, lists as tuples: it hashes and serialises
        check_choice("dataset", self.dataset, DATASETS)
        if self.data_dir is not None and self.dataset == "digits":
            raise ValueError(f"data_dir {self.data_dir!r} is only used with datasets 'cifar10' and 'fashion-mnist' "
                             "(digits are bundled with scikit-learn); leave it out")
        check_methods(self.methods, METHODS, "erm")
        for name in ("seeds", "epochs", "min_steps_per_epoch"):
            check_int(name, getattr(self, name), 1)
        check_int("batch_size", self.batch_size, 2)  # mixing pairs rows
        check_seed("seed", self.seed, STUDY_SEED_MAX)
        check_real("warmup_epochs", self.warmup_epochs, 0)
        check_real("lr", self.lr, 0, low_open=True)
        check_real("alpha", self.alpha, 0, ALPHA_MAX, low_open=True)
        check_real("half_life", self.half_life, 0, low_open=True)
        check_real("train_fraction", self.train_fraction, 0, 1, low_open=True)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("confidence", self.confidence, CONFIDENCES)
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
    from ..data import load_dataset

    return load_dataset(dataset, data_dir, seed=seed, train_fraction=train_fraction)


def method_policy(method: str, cfg: ConfMixStudyConfig):
    """(layer to mix or None for ERM, ``AlphaPolicy`` or None) of one Table 2 method."""
    from ...policies import ConfMix, HalfConfMix, schedule

    if method == "erm":
        return None, None
    where, kind = method.split("-", 1)
    layer = "input" if where == "input" else PAPER_CNN_MIX_LAYER
    if kind in ("confmix", "half-confmix"):
        return layer, (ConfMix if kind == "confmix" else HalfConfMix)(cfg.warmup_epochs, confidence=cfg.confidence)
    return layer, schedule("constant" if kind == "mixup" else kind, alpha=cfg.alpha, half_life=cfg.half_life)


def run_shard(payload: dict) -> list[dict]:
    """Shard worker: train one (method, seed) and return its result row. The test set is
    evaluated once, after the last epoch (the table needs nothing else)."""
    import torch

    from ...train import accuracy, train_classifier
    from ..devices import resolve_device
    from ..models import paper_cnn

    cfg = ConfMixStudyConfig(**{**payload["config"], "methods": tuple(payload["config"]["methods"])})
    method, seed = payload["method"], payload["seed"]
    device = resolve_device(cfg.device)
    if device.type == "cuda":  # the same shard gives the same numbers on the same kind of GPU
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    data = cfg.load()
    init_seed, order_seed = (int(s) for s in np.random.SeedSequence([cfg.seed, seed]).generate_state(2))
    # the initial weights: one per seed, shared by all methods; no global random state is used
    model = paper_cnn(data.image_shape, data.num_classes, generator=as_generator(init_seed)).to(device)
    layer, policy = method_policy(method, cfg)
    gen = as_generator(order_seed)  # data order (and the mixing stream's seed)
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


def check_shard(payload: dict, rows: list) -> str | None:
    """Why ``rows`` are not what :func:`run_shard` returns for ``payload``, or None: one row of this
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
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    c, h, w = image_shape
    forward = 2 * (h * w * 32 * 9 * c + (h // 2) * (w // 2) * 64 * 32 * 9 + 64 * (h // 4) * (w // 4) * 64 + 64 * 10)
    flops = 3 * forward * n_train * cfg.epochs * cfg.seeds * len(cfg.methods)
    return flops / (10e9 * threads)


def _steps(cfg: ConfMixStudyConfig, n_train: int) -> int:
    """Optimisation steps per epoch (``train_classifier`` keeps a last partial batch of >= 2 rows)."""
    b = cfg.batch_for(n_train)
    return n_train // b + (n_train % b >= 2)


def _confmix_never_on(cfg: ConfMixStudyConfig) -> bool:
    return cfg.epochs <= cfg.warmup_epochs and any(m.endswith("confmix") for m in cfg.methods)


def summarise(cfg: ConfMixStudyConfig, rows: list[dict], n_train: int | None = None) -> tuple[str, dict]:
    """Table 2 as markdown (mean accuracy change over ERM with 95% t-intervals across seeds).
    ``n_train``: training images used (states the subset and the batch chosen for it)."""
    from ..stats import mean_interval

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
    import torch

    from ..devices import resolve_device
    from ..plots import plot_alpha_trajectories

    check_workers(workers, executor)  # before the data are read (run_study checks it again, for its other callers)
    device = resolve_device(cfg.device)  # fail before any work when the device or the data are missing
    data = cfg.load()
    n_train = data.x_train.shape[0]
    if device.type == "cpu" and estimated_cpu_seconds(cfg, n_train, data.image_shape) > 3600:
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

    return run_study(out, STUDY.name, cfg.settings(), shards_for(cfg), run_shard, info=info, executor=executor,
                     address=address, progress=progress, desc="confmix study", workers=workers,
                     gpus_per_task=1 if device.type == "cuda" else 0,
                     adapt_threads=False,  # the CNN's numbers depend on the thread count: keep them fixed
                     check=check_shard, finish=finish)


STUDY = Study(
    name="confmix-study",
    help="Table 2: ConfMix, ramps and mixup on images, several seeds",
    description="Table 2 of the paper: the paper's CNN trained with ERM and with fixed-alpha mixup, ConfMix, "
                "half ConfMix and alpha ramps, at the input and before the first fully connected layer, over "
                "several seeds (paired: the methods of a seed share initial weights and data order). Writes "
                "results.csv, summary.md, alpha.png and manifest.json; rerun the same command to resume.",
    presets=PRESETS,
    preset_help="paper: the paper's protocol (50 epochs, batch 250, M = 5, h = 25); cpu: Table 2 on a stratified "
                "1% of Fashion-MNIST, 20 epochs (REPRODUCTION.md)",
    flags=(
        Flag("dataset", str, "NAME", "image data set", choices=DATASETS),
        Flag("data_dir", str, "DIR", "local CIFAR-10 folder or archive, or the folder of Fashion-MNIST's four idx "
             "files (fashion-mnist without it: /usr/share/datasets/fashion-mnist, the Debian package's)"),
        Flag("train_fraction", float, "F", "stratified share of the training images, in (0, 1]"),
        Flag("min_steps_per_epoch", int, "S",
             "the batch shrinks to n_train // S when needed, so that an epoch has >= S steps"),
        Flag("seeds", int, "N", "seeds per method (paired comparisons)"),
        Flag("epochs", int, "E", "training epochs"),
        Flag("batch_size", int, "B", "mini-batch size"),
        Flag("lr", float, "LR", "learning rate"),
        Flag("optimizer", str, "NAME", "optimiser", choices=OPTIMIZERS),
        Flag("alpha", float, "A", f"alpha of fixed-alpha mixup, 0 < A <= {ALPHA_MAX:g}"),
        Flag("warmup_epochs", int, "M", "ConfMix's epochs of plain ERM first"),
        Flag("half_life", float, "H", "half-life of the alpha ramps, epochs"),
        Flag("confidence", str, "KIND", "ConfMix's confidence: a fresh forward or last epoch's", choices=CONFIDENCES),
        Flag("methods", str, "M", f"methods: erm, {{input,manifold}}-{{{','.join(KINDS)}}}", "+"),
        Flag("seed", int, "S", "seed of the split, the subset, the initial weights and the data order"),
        Flag("device", str, "DEV", DEVICES),
    ),
    options=(Flag("workers", int, "N", "train N shards at once in local processes, on one GPU or on the CPU's cores"),),
    run=run_confmix_study,
    brief=lambda res: {m: round(v["mean"], 2) for m, v in res["table"].items()},
    shards=shards_for,
    worker=run_shard,
    check=check_shard,
    summarise=summarise,
)
