"""Table 1 / Figures 2-3: excess risk of ERM and of mixup at depth k = 0..3 on random toy problems.

For each problem (K classes, N components per class, drawn from its own seed) the study samples
a training set, trains one MLP per method with the vectorised trainer (all methods of a problem
share the initial weights and the data order: paired comparisons), measures each model's risk
and excess risk by quadrature on the problem's grid, and the problem's Bayes risk and MMLB.
A shard is a block of problems of one K with all methods; shards are independent.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from ...checks import (ALPHA_MAX, OPTIMIZERS, SCHEDULES, SGD_MOMENTUM, STUDY_SEED_MAX, check_choice, check_int,
                       check_methods, check_range, check_real, check_seed, check_sizes, check_unique, plain_fields)
from ..constants import DEFAULT_MEAN_RANGE, DEFAULT_SIGMA_RANGE, DEVICES, GRID_MIN
from ..executors import run_study
from ..files import write_atomic
from ..store import Shard, ShardList, check_rows, integer, one_of, real
from .protocol import Flag, Study
from .report import write_csv

__all__ = ["DepthStudyConfig", "PRESETS", "PAPER_TABLE1", "STUDY", "run_depth_study", "problem_seeds", "method_names",
           "run_shard", "check_shard", "shards_for", "summarise"]

#: what ``optimizer`` means, in every trainer of the package (``checks.SGD_MOMENTUM``, ``train.make_optimizer``)
OPTIMIZER_DEFINITIONS = {"adam": "torch.optim.Adam(lr, betas=(0.9, 0.999), eps=1e-8)",
              "sgd": f"torch.optim.SGD(lr, momentum={SGD_MOMENTUM}), no dampening, no Nesterov"}
PAPER_TABLE1 = {"baseline": 18.1, "k0": 16.5, "k1": 14.7, "k2": 13.8, "k3": 13.2}
REL_MIN_BAYES = 0.01  # relative excess risk is also averaged over problems with R* >= 1%
LABELS = {"baseline": "Baseline", "k0": "Mixup 0", "k1": "Mixup 1", "k2": "Mixup 2", "k3": "Mixup 3"}


def method_names(depth: int) -> list[str]:
    """'baseline' (ERM) and 'k0' (input) .. 'k{depth}'."""
    return ["baseline"] + [f"k{k}" for k in range(depth + 1)]


@dataclass(frozen=True)
class DepthStudyConfig:
    """Every setting of the depth study (the ``paper`` preset is DESIGN.md's Table 1 setting).

    ``schedule``: how alpha evolves over training (``policies.schedule``): ``"constant"``
    (``alpha`` throughout), ``"ramp-up"`` or ``"ramp-down"`` (0 -> 1 or 1 -> 0 with
    ``half_life`` epochs; ``alpha`` is not used). The vectorised trainer follows the same policy
    object ``train_classifier`` would give ``ManifoldMixup``."""

    problems_per_k: int = 100
    ks: tuple[int, ...] = (2, 3, 4, 5)
    components: int = 5
    mean_range: tuple[float, float] = DEFAULT_MEAN_RANGE
    sigma_range: tuple[float, float] = DEFAULT_SIGMA_RANGE
    n_train: int = 1000
    hidden: tuple[int, ...] = (512, 512, 512)
    epochs: int = 20
    eval_epochs: tuple[int, ...] = ()
    batch_size: int = 50
    lr: float = 1e-3
    optimizer: str = "adam"
    alpha: float = 0.5
    schedule: str = "constant"
    half_life: float = 25.0
    methods: tuple[str, ...] = ("baseline", "k0", "k1", "k2", "k3")
    grid_resolution: int = 96
    mmlb_samples: int = 100_000
    problems_per_shard: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        plain_fields(self)  # numpy numbers as Python's, lists as tuples: it hashes and serialises
        check_sizes("hidden", self.hidden)
        check_methods(self.methods, method_names(len(self.hidden)), "baseline")
        check_sizes("ks", self.ks, 2)
        check_unique("ks", self.ks)
        for name in ("problems_per_k", "components", "n_train", "epochs", "problems_per_shard"):
            check_int(name, getattr(self, name), 1)
        check_int("mmlb_samples", self.mmlb_samples, 2 * max(self.ks))  # two mixed points per class at least
        check_int("batch_size", self.batch_size, 2)  # mixing pairs rows
        check_int("grid_resolution", self.grid_resolution, GRID_MIN, 4096)
        check_seed("seed", self.seed, STUDY_SEED_MAX)
        if self.n_train % self.batch_size:
            raise ValueError(f"n_train ({self.n_train}) must be a multiple of batch_size ({self.batch_size})")
        check_real("alpha", self.alpha, 0, ALPHA_MAX, low_open=True)
        check_real("lr", self.lr, 0, low_open=True)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_real("half_life", self.half_life, 0, low_open=True)
        check_range("mean_range", self.mean_range)
        check_range("sigma_range", self.sigma_range, positive=True)
        if any(isinstance(e, bool) or not isinstance(e, int) or not 1 <= e <= self.epochs for e in self.eval_epochs):
            raise ValueError(f"eval_epochs must be integers in 1..epochs = {self.epochs}; got {list(self.eval_epochs)}"[:300])
        check_unique("eval_epochs", self.eval_epochs)

    @property
    def evaluated_epochs(self) -> tuple[int, ...]:
        """The epochs at which every model is evaluated: ``eval_epochs`` and the last, ascending."""
        return tuple(sorted({*self.eval_epochs, self.epochs}))

    def settings(self) -> dict:
        """What the results depend on (manifest.json's fingerprint): every field, but ``schedule``
        and ``half_life`` only for a ramp (a constant alpha is recorded as before schedules
        existed, so that such studies resume), and ``alpha`` only for a constant (a ramp does
        not use it)."""
        d = asdict(self)
        if self.schedule == "constant":
            del d["schedule"], d["half_life"]
        else:
            del d["alpha"]
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        out["optimizer_definition"] = OPTIMIZER_DEFINITIONS[self.optimizer]  # stated in manifest.json
        return out

    @classmethod
    def from_settings(cls, d: dict) -> "DepthStudyConfig":
        return cls(**{f.name: tuple(d[f.name]) if isinstance(d[f.name], list) else d[f.name] for f in fields(cls)
                      if f.name in d})


PRESETS = {
    "paper": DepthStudyConfig(),
    "quick": DepthStudyConfig(problems_per_k=25, hidden=(128, 128, 128), grid_resolution=64, mmlb_samples=40_000,
                              problems_per_shard=5),
}
#: the quick preset's problems trained 200 epochs, every model evaluated after 10, 20, 40, 100 and 200
PRESETS["long"] = replace(PRESETS["quick"], epochs=200, eval_epochs=(10, 20, 40, 100, 200))


def _alpha_words(cfg: DepthStudyConfig) -> str:
    if cfg.schedule == "constant":
        return f"alpha = {cfg.alpha}"
    return f"alpha {'0 -> 1' if cfg.schedule == 'ramp-up' else '1 -> 0'} ({cfg.schedule}, half-life {cfg.half_life:g} epochs)"


def _mix_layer(method: str) -> int | None:
    return None if method == "baseline" else int(method[1:])


def problem_seeds(seed: int, k: int, index: int) -> dict[str, int]:
    """Independent seeds of problem ``index`` with K = k: its draw, its data, its models, its MMLB."""
    s = np.random.SeedSequence([seed, k, index]).generate_state(4)
    return {"problem": int(s[0]), "data": int(s[1]), "model": int(s[2]) & 0x7FFFFFFF, "mmlb": int(s[3])}


def run_shard(payload: dict) -> list[dict]:
    """Shard worker: problems [start, stop) with K = k, every method; one row per problem x evaluated
    epoch x method. The models are evaluated after each of ``cfg.evaluated_epochs`` while training
    goes on, so the rows of epoch e are those of the same study trained for e epochs."""
    import torch

    from ...policies import schedule
    from ..devices import resolve_device
    from ..ensemble import EnsembleConfig, EnsembleParams, MemberSpec, predict_ensemble, train_ensemble
    from ..toy import GaussianMixtureProblem

    cfg = DepthStudyConfig.from_settings(payload["config"])
    k, start, stop = payload["k"], payload["start"], payload["stop"]
    device = resolve_device(payload.get("device", "cpu"))
    alpha = schedule(cfg.schedule, alpha=cfg.alpha, half_life=cfg.half_life)  # one policy, shared by the members
    problems, xs, ys, specs = [], [], [], []
    for i in range(start, stop):
        seeds = problem_seeds(cfg.seed, k, i)
        prob = GaussianMixtureProblem.random(k, cfg.components, seeds["problem"], cfg.mean_range, cfg.sigma_range,
                                             grid_resolution=cfg.grid_resolution)
        x, y = prob.sample(cfg.n_train, seeds["data"])
        problems.append((i, prob, seeds))
        for m in cfg.methods:
            xs.append(x)
            ys.append(y)
            specs.append(MemberSpec(seed=seeds["model"], mix_layer=_mix_layer(m), alpha=alpha))
    nm = len(cfg.methods)

    def evaluate(epoch: int, members: list[int], params: EnsembleParams) -> "torch.Tensor":
        """[len(members), 2]: each member's risk and excess risk (fractions) on its problem's grid."""
        out = torch.empty(len(members), 2, dtype=torch.float64)
        for j in sorted({m // nm for m in members}):
            rs = [r for r, m in enumerate(members) if m // nm == j]
            sub = EnsembleParams([w[rs] for w in params.weights], [b[rs] for b in params.biases],
                                 [params.num_classes[r] for r in rs], params.hidden)
            prob = problems[j][1]
            pred = predict_ensemble(sub, prob.grid().points, device=device)
            out[rs, 0] = prob.risk_from_predictions(pred)
            out[rs, 1] = prob.excess_risk_from_predictions(pred)
        return out

    epochs = cfg.evaluated_epochs
    ens = EnsembleConfig(epochs=cfg.epochs, eval_epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                         optimizer=cfg.optimizer, hidden=cfg.hidden)
    params = train_ensemble(torch.stack(xs), torch.stack(ys), k, specs, ens, device=device, evaluate=evaluate)
    rows = []
    for j, (i, prob, seeds) in enumerate(problems):
        bayes = prob.bayes_risk()
        mmlb = prob.mmlb(cfg.mmlb_samples, seeds["mmlb"])
        for epoch in epochs:
            ev = params.evaluations[epoch][j * nm:(j + 1) * nm]
            for m, (r, e) in zip(cfg.methods, ev.tolist()):
                rows.append({
                    "K": k, "N": cfg.components, "problem": i, "sigma": prob.sigma, "bayes_risk": bayes,
                    "mmlb": mmlb.value, "mmlb_stderr": mmlb.stderr, "normalised_mmlb": mmlb.normalised,
                    "normalised_mmlb_stderr": mmlb.normalised_stderr, "method": m, "epoch": epoch, "risk": r,
                    "excess_risk_pp": 100 * e, "excess_risk_rel_pct": 100 * e / bayes if bayes > 0 else float("nan"),
                    "problem_seed": seeds["problem"], "data_seed": seeds["data"], "model_seed": seeds["model"],
                    "mmlb_seed": seeds["mmlb"],
                })
    return rows


def check_shard(payload: dict, rows: list) -> str | None:
    """Why ``rows`` are not what :func:`run_shard` returns for ``payload``, or None: the types
    and ranges of every column, each problem x evaluated epoch x method once, in order, the seeds
    of each problem, and risk - Bayes risk = excess risk (a shard edited by hand is recomputed)."""
    cfg = DepthStudyConfig.from_settings(payload["config"])
    k, start, stop = payload["k"], payload["start"], payload["stop"]
    p01, seed = real(0.0, 1.0), integer(0, 2**32 - 1)
    columns = {"K": integer(k, k), "N": integer(cfg.components, cfg.components), "problem": integer(start, stop - 1),
               "sigma": real(*cfg.sigma_range), "bayes_risk": p01, "mmlb": p01, "mmlb_stderr": p01, "normalised_mmlb": p01,
               "normalised_mmlb_stderr": p01, "method": one_of(cfg.methods), "epoch": one_of(cfg.evaluated_epochs),
               "risk": p01, "excess_risk_pp": real(0.0, 100.0), "excess_risk_rel_pct": real(0.0, nan=True),
               "problem_seed": seed, "data_seed": seed, "model_seed": seed, "mmlb_seed": seed}
    expected = [(i, e, m) for i in range(start, stop) for e in cfg.evaluated_epochs for m in cfg.methods]
    why = check_rows(rows, columns, ("problem", "epoch", "method"), expected)
    if why is not None:
        return why
    shared = ("sigma", "bayes_risk", "mmlb", "mmlb_stderr", "normalised_mmlb", "normalised_mmlb_stderr")
    first = {}
    for r in rows:
        i, e = r["problem"], r["excess_risk_pp"] / 100
        seeds = problem_seeds(cfg.seed, k, i)
        if any(r[f"{name}_seed"] != v for name, v in seeds.items()):
            return f"problem {i}: its seeds are not those of problem {i}"
        if tuple(r[c] for c in shared) != first.setdefault(i, tuple(r[c] for c in shared)):
            return f"problem {i}: its rows disagree on {list(shared)}"
        if abs(r["risk"] - r["bayes_risk"] - e) > 1e-9:
            return f"problem {i}, {r['method']}, epoch {r['epoch']}: risk - bayes_risk != excess_risk_pp / 100"
        rel = r["excess_risk_rel_pct"]
        if (rel != rel) != (r["bayes_risk"] == 0) or (rel == rel and abs(rel - 100 * e / r["bayes_risk"]) > 1e-9 * max(1.0, rel)):
            return f"problem {i}, {r['method']}, epoch {r['epoch']}: excess_risk_rel_pct != 100 excess / bayes_risk"
    return None


def shards_for(cfg: DepthStudyConfig, device: str = "cpu") -> ShardList:
    """The study's shards (blocks of ``problems_per_shard`` problems of one K), made on demand."""
    per_k = -(-cfg.problems_per_k // cfg.problems_per_shard)
    settings = cfg.settings()

    def make(i: int) -> Shard:
        k, start = cfg.ks[i // per_k], (i % per_k) * cfg.problems_per_shard
        stop = min(start + cfg.problems_per_shard, cfg.problems_per_k)
        return Shard(f"K{k}-p{start:04d}-{stop:04d}",
                     {"config": settings, "k": k, "start": start, "stop": stop, "device": device})

    return ShardList(len(cfg.ks) * per_k, make)


def estimated_cpu_seconds(cfg: DepthStudyConfig, threads: int | None = None) -> float:
    """A rough time of the study on a CPU: the MLPs' training FLOPs (6 per weight per sample)
    at ~45 GFLOP/s per thread, the rate the vectorised trainer reaches on the CPUs we measured."""
    sizes = [2, *cfg.hidden, max(cfg.ks)]
    weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    members = cfg.problems_per_k * len(cfg.ks) * len(cfg.methods)
    flops = 6.0 * weights * cfg.n_train * cfg.epochs * members
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    return flops / (45e9 * threads)


def _by_method(rows: list[dict], key: str, methods, where=lambda r: True) -> dict[str, np.ndarray]:
    """values[method] aligned by (K, problem) so that methods are paired."""
    table: dict[tuple, dict] = {}
    for r in rows:
        if where(r):
            table.setdefault((r["K"], r["problem"]), {})[r["method"]] = r[key]
    keys = sorted(table)
    return {m: np.array([table[p][m] for p in keys], dtype=float) for m in methods}


def summarise(cfg: DepthStudyConfig, rows: list[dict]) -> tuple[str, dict]:
    """summary.md text and the numbers behind it (also used for Figure 3 and the figure over epochs).

    Table 1, the per-K table and Figure 3 are at the last evaluated epoch; with several evaluated
    epochs, 'Over training' gives Table 1 at each, the difference to the baseline against the
    epoch and its trend by normalised-MMLB quartile."""
    from ..stats import paired_bootstrap, spearman, wilcoxon_p

    methods = list(cfg.methods)
    epochs = sorted({r["epoch"] for r in rows})
    all_rows, rows = rows, [r for r in rows if r["epoch"] == epochs[-1]]
    lines = [
        "# Depth study: Manifold Mixup at depth k (Table 1, Figure 3)",
        "",
        f"{len({(r['K'], r['problem']) for r in rows})} problems (K in {list(cfg.ks)}, {cfg.problems_per_k} each, "
        f"N = {cfg.components}), {cfg.n_train} training samples, MLP 2-{'-'.join(map(str, cfg.hidden))}-K, "
        f"{cfg.epochs} epochs, batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr}, {_alpha_words(cfg)} per sample"
        f"; models evaluated after epoch{'s' if len(epochs) > 1 else ''} {', '.join(map(str, epochs))} of the same run "
        f"(the tables and Figure 3 below: epoch {epochs[-1]}).",
        "Risks by quadrature (grid resolution "
        f"{cfg.grid_resolution}); excess risk in percentage points (pp) and relative to the Bayes risk (%).",
        "",
        "## Table 1",
        "",
        "Differences from the baseline are paired by problem; 95% percentile-bootstrap intervals (10,000 resamples) and a "
        "two-sided Wilcoxon signed-rank p-value.",
        "",
        "The relative excess risk 100 (R - R*) / R* explodes on the few problems whose R* is almost 0, so it is also "
        f"shown over the problems with R* >= {100 * REL_MIN_BAYES:g}% (the count is in the last line).",
        "",
        "| Model | mean excess risk (pp) | diff. vs baseline (pp) [95% CI] | Wilcoxon p | mean relative (%), all | "
        f"median relative (%) | mean relative (%), R* >= {100 * REL_MIN_BAYES:g}% | diff. vs baseline (%) [95% CI] | "
        "paper (Avg % Excess Risk) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ab = _by_method(rows, "excess_risk_pp", methods)
    rel = _by_method(rows, "excess_risk_rel_pct", methods, where=lambda r: r["bayes_risk"] > 0)
    trim = _by_method(rows, "excess_risk_rel_pct", methods, where=lambda r: r["bayes_risk"] >= REL_MIN_BAYES)
    numbers: dict = {"table1": {}}
    for m in methods:
        da = paired_bootstrap(ab[m] - ab["baseline"])
        dr = paired_bootstrap(trim[m] - trim["baseline"])
        p = wilcoxon_p(ab[m] - ab["baseline"]) if m != "baseline" else float("nan")
        numbers["table1"][m] = {"excess_pp": float(ab[m].mean()), "excess_rel_pct": float(np.nanmean(rel[m])),
                                "excess_rel_pct_trimmed": float(trim[m].mean()),
                                "diff_pp": da._asdict(), "diff_rel_trimmed": dr._asdict(), "wilcoxon_p": p}
        diff_a = "—" if m == "baseline" else da.fmt(2)
        diff_r = "—" if m == "baseline" else dr.fmt(1)
        pstr = "—" if m == "baseline" else f"{p:.2g}"
        paper = PAPER_TABLE1.get(m)
        lines.append(f"| {LABELS.get(m, m)} | {ab[m].mean():.2f} | {diff_a} | {pstr} | {np.nanmean(rel[m]):.1f} | "
                     f"{np.nanmedian(rel[m]):.1f} | {trim[m].mean():.1f} | {diff_r} | {'' if paper is None else paper} |")
    lines += ["", f"Problems with R* >= {100 * REL_MIN_BAYES:g}%: {len(trim['baseline'])} of {len(ab['baseline'])}."]
    lines += ["", "## Per K (mean excess risk, pp; relative % in brackets)", "",
              "| K | " + " | ".join(LABELS.get(m, m) for m in methods) + " | mean Bayes risk (%) |",
              "|---|" + "---|" * (len(methods) + 1)]
    for k in cfg.ks:
        abk = _by_method(rows, "excess_risk_pp", methods, where=lambda r, k=k: r["K"] == k)
        relk = _by_method(rows, "excess_risk_rel_pct", methods, where=lambda r, k=k: r["K"] == k and r["bayes_risk"] > 0)
        bayes = np.mean([r["bayes_risk"] for r in rows if r["K"] == k and r["method"] == "baseline"])
        lines.append(f"| {k} | " + " | ".join(f"{abk[m].mean():.2f} ({np.nanmean(relk[m]):.1f})" for m in methods)
                     + f" | {100 * bayes:.1f} |")
    base = [r for r in rows if r["method"] == "baseline"]
    if len(base) >= 3:
        rho, p = spearman([r["normalised_mmlb"] for r in base], [r["bayes_risk"] for r in base])
        pearson = float(np.corrcoef([r["normalised_mmlb"] for r in base], [r["bayes_risk"] for r in base])[0, 1])
    else:  # too few problems for a correlation
        rho = p = pearson = float("nan")
    se = max(r["normalised_mmlb_stderr"] for r in base)
    numbers["mmlb_bayes_correlation"] = {"spearman": rho, "spearman_p": p, "pearson": pearson}
    lines += ["", "## Normalised MMLB and Bayes risk", "",
              f"Spearman correlation of the normalised MMLB with R*: {rho:.3f} (p = {p:.2g}); Pearson {pearson:.3f}; "
              f"{len(base)} problems. Largest MMLB standard error: {se:.4f}.", ""]
    # Figure 3: excess risk (pp) by normalised-MMLB quartile
    mm = np.array([r["normalised_mmlb"] for r in base])
    edges = np.quantile(mm, [0, 0.25, 0.5, 0.75, 1.0])
    quart = {(r["K"], r["problem"]): min(int(np.searchsorted(edges, r["normalised_mmlb"], side="right")) - 1, 3) for r in base}
    fig3 = {}
    lines += ["## Figure 3: mean excess risk (pp) by normalised-MMLB quartile [95% bootstrap CI]", "",
              "| quartile (normalised MMLB) | " + " | ".join(LABELS.get(m, m) for m in methods) + " |",
              "|---|" + "---|" * len(methods)]
    qlabels = [f"Q{q + 1} ({edges[q]:.2f}-{edges[q + 1]:.2f})" for q in range(4)]
    cells = {q: [] for q in range(4)}
    for m in methods:
        pts = []
        for q in range(4):
            v = [r["excess_risk_pp"] for r in rows if r["method"] == m and quart[(r["K"], r["problem"])] == q]
            ci = paired_bootstrap(v)
            pts.append((qlabels[q], ci.mean, ci.low, ci.high))
            cells[q].append(f"{ci.mean:.2f} [{ci.low:.2f}, {ci.high:.2f}]")
        fig3[LABELS.get(m, m)] = pts
    for q in range(4):
        lines.append(f"| {qlabels[q]} | " + " | ".join(cells[q]) + " |")
    numbers["figure3"] = fig3
    over_lines, over = _over_training(cfg, all_rows, epochs, quart, qlabels)
    numbers.update(over)
    if len(epochs) > 1:
        lines += over_lines
    return "\n".join(lines) + "\n", numbers


def _over_training(cfg: DepthStudyConfig, rows: list[dict], epochs: list[int], quart: dict, qlabels: list[str]):
    """Table 1 at each evaluated epoch, the difference to the baseline against the epoch (one curve per
    depth, with paired intervals), where each interval first excludes 0, and the quartile trend."""
    from ..stats import paired_bootstrap

    methods = list(cfg.methods)
    mixing = [m for m in methods if m != "baseline"]
    table: dict = {}
    curve = {LABELS.get(m, m): [] for m in mixing}
    trend = {LABELS.get(m, m): {} for m in mixing}
    lines = ["", "## Over training: Table 1 at each evaluated epoch", "",
             "Each model evaluated after each listed epoch of one run (training went on after each evaluation); "
             "differences from the baseline paired by problem, 95% percentile-bootstrap intervals. Negative: mixing "
             "has the lower excess risk.", "",
             "| epoch | Model | mean excess risk (pp) | diff. vs baseline (pp) [95% CI] | "
             f"mean relative (%), R* >= {100 * REL_MIN_BAYES:g}% | diff. vs baseline (%) [95% CI] |",
             "|---|---|---|---|---|---|"]
    for e in epochs:
        at = [r for r in rows if r["epoch"] == e]
        ab = _by_method(at, "excess_risk_pp", methods)
        trim = _by_method(at, "excess_risk_rel_pct", methods, where=lambda r: r["bayes_risk"] >= REL_MIN_BAYES)
        table[e] = {}
        for m in methods:
            da, dr = paired_bootstrap(ab[m] - ab["baseline"]), paired_bootstrap(trim[m] - trim["baseline"])
            table[e][m] = {"excess_pp": float(ab[m].mean()), "excess_rel_pct_trimmed": float(trim[m].mean()),
                           "diff_pp": da._asdict(), "diff_rel_trimmed": dr._asdict()}
            if m != "baseline":
                curve[LABELS.get(m, m)].append((e, da.mean, da.low, da.high))
            lines.append(f"| {e} | {LABELS.get(m, m)} | {ab[m].mean():.2f} | {'—' if m == 'baseline' else da.fmt(2)} | "
                         f"{trim[m].mean():.1f} | {'—' if m == 'baseline' else dr.fmt(1)} |")
        qs = np.array([quart[p] for p in sorted({(r["K"], r["problem"]) for r in at})])  # _by_method's order
        for m in mixing:  # the difference by normalised-MMLB quartile at this epoch
            d = ab[m] - ab["baseline"]
            trend[LABELS.get(m, m)][e] = [(qlabels[q], *paired_bootstrap(d[qs == q])[:3]) for q in range(4)]
    signs = {}
    lines += ["", "When each depth's 95% interval of the difference (pp) excludes 0:", ""]
    for m in mixing:
        pts = curve[LABELS.get(m, m)]
        gain = [e for e, _, lo, hi in pts if hi < 0]
        loss = [e for e, _, lo, hi in pts if lo > 0]
        first = min(gain + loss, default=None)
        signs[m] = {"first_epoch": first, "direction": None if first is None else ("gain" if first in gain else "loss"),
                    "gain_epochs": gain, "loss_epochs": loss}
        listed = lambda es: ", ".join(map(str, es)) or "none"  # noqa: E731
        lines.append(f"- {LABELS.get(m, m)}: " + ("the interval holds 0 at every epoch." if first is None else
                     f"first at epoch {first} ({'lower' if first in gain else 'higher'} excess risk than the baseline); "
                     f"lower at epochs {listed(gain)}, higher at epochs {listed(loss)}."))
    lines += ["", "## Over training: difference to the baseline (pp) by normalised-MMLB quartile [95% CI]", "",
              "| Model | epoch | " + " | ".join(qlabels) + " |", "|---|---|" + "---|" * 4]
    for m in mixing:
        for e in epochs:
            lines.append(f"| {LABELS.get(m, m)} | {e} | " + " | ".join(
                f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]" for _, mean, lo, hi in trend[LABELS.get(m, m)][e]) + " |")
    return lines, {"epochs": list(epochs), "table1_by_epoch": table, "difference_over_epochs": curve,
                   "excludes_zero": signs, "quartile_trend": trend}


def run_depth_study(cfg: DepthStudyConfig, out: str | Path, *, executor: str = "local", address: str | None = None,
                    device: str = "cpu", progress: bool = True) -> dict:
    """Run (or resume) the study into ``out``: results.csv, summary.md, figure3.png (at the last epoch),
    figure_epochs.png (difference to the baseline against the epoch, where at least two epochs are
    evaluated), figure2.png, manifest.json."""
    import torch

    from ..devices import resolve_device
    from ..plots import figure2, plot_difference_over_epochs, plot_excess_by_quartile

    dev = resolve_device(device)
    out = Path(out)
    if dev.type == "cpu" and estimated_cpu_seconds(cfg) > 3600:
        warnings.warn(f"this study is estimated to take about {estimated_cpu_seconds(cfg) / 3600:.1f} hours on this CPU "
                      f"({torch.get_num_threads()} thread(s)); finished shards are kept if you stop it", stacklevel=2)

    def finish(rows: list[dict]) -> dict:  # the outputs, written while the study still holds its folder's lock
        write_csv(out / "results.csv", rows)
        text, numbers = summarise(cfg, rows)
        write_atomic(out / "summary.md", text)
        plot_excess_by_quartile(numbers["figure3"], out / "figure3.png")
        if len(numbers["epochs"]) >= 2:  # a curve over training needs two evaluated epochs at least
            plot_difference_over_epochs(numbers["difference_over_epochs"], out / "figure_epochs.png")
        figure2(out / "figure2.png", seed=cfg.seed)
        return {"rows": rows, **numbers}

    return run_study(out, STUDY.name, cfg.settings(), shards_for(cfg, device), run_shard, executor=executor,
                     address=address, progress=progress, desc="depth study", gpus_per_task=1 if dev.type == "cuda" else 0,
                     check=check_shard, finish=finish)


def preset(name: str, **overrides) -> DepthStudyConfig:
    """A preset with some settings replaced (None values are ignored)."""
    check_choice("preset", name, list(PRESETS))
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


STUDY = Study(
    name="depth-study",
    help="Table 1 and Figures 2-3: excess risk of mixing at each depth on toy problems",
    description="Table 1 and Figures 2-3 of the paper: random Gaussian-mixture problems with an exact Bayes "
                "classifier; one MLP per method (ERM, and mixing at the input or after hidden layer k) trained "
                "from the same initial weights and data order; excess risk by quadrature, the MMLB, paired "
                "statistics. Writes results.csv, summary.md, figure2.png, figure3.png (and figure_epochs.png "
                "with two evaluated epochs or more) and manifest.json; rerun the same command to resume.",
    presets=PRESETS,
    default_preset="quick",
    preset_help="quick: 100 problems at width 128; paper: the paper's Table 1 setting "
                "(400 problems at width 512); long: the quick problems trained 200 epochs, evaluated 5 times",
    flags=(
        Flag("problems_per_k", int, "N", "toy problems per number of classes K"),
        Flag("ks", int, "K", "numbers of classes, e.g. 2 3 4 5", "+"),
        Flag("components", int, "N", "Gaussian components per class"),
        Flag("mean_range", float, ("LO", "HI"), "range the component means are drawn from", 2),
        Flag("sigma_range", float, ("LO", "HI"), "range the shared sigma is drawn from (0 < LO < HI)", 2),
        Flag("n_train", int, "N", "training samples per problem (a multiple of the batch size)"),
        Flag("hidden", int, "W", "hidden widths of the MLP, e.g. 512 512 512", "+"),
        Flag("epochs", int, "E", "training epochs"),
        Flag("eval_epochs", int, "E", "also evaluate every model after these epochs of the same run (the last is "
             "always evaluated); results.csv has one row per problem, method and evaluated epoch", "+"),
        Flag("batch_size", int, "B", "mini-batch size"),
        Flag("lr", float, "LR", "learning rate"),
        Flag("optimizer", str, "NAME", "optimiser", choices=OPTIMIZERS),
        Flag("alpha", float, "A", f"mixing strength of the constant schedule: lambda ~ Beta(A, A), 0 < A <= {ALPHA_MAX:g}"),
        Flag("schedule", str, "NAME", "alpha over training: constant (alpha), ramp-up (0 -> 1) or ramp-down (1 -> 0)",
             choices=SCHEDULES),
        Flag("half_life", float, "H", "half-life of the ramps, epochs"),
        Flag("methods", str, "M", "methods: baseline (ERM) and k0 (input) .. k<depth>", "+"),
        Flag("grid_resolution", int, "R", f"quadrature cells along the longer side ({GRID_MIN}..4096)"),
        Flag("mmlb_samples", int, "S", "Monte Carlo samples of the MMLB"),
        Flag("problems_per_shard", int, "N", "problems per shard (unit of resumption)"),
        Flag("seed", int, "S", "seed of every problem, data set, initialisation and plan"),
    ),
    options=(Flag("device", str, "DEV", DEVICES),),
    run=run_depth_study,
    brief=lambda res: {m: round(v["excess_pp"], 3) for m, v in res["table1"].items()},
    shards=shards_for,
    worker=run_shard,
    check=check_shard,
    summarise=summarise,
)
