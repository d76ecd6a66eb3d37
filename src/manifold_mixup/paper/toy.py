"""Toy problems with a known Bayes classifier: 2-D Gaussian mixtures and the spiral.

A :class:`GaussianMixtureProblem` has K classes; class k has the density

    g_k(x) = (1/N) sum_i phi(x; mu_ki, sigma^2 I),        x in R^2,

(N components per class, equal weights, one shared isotropic sigma) and prior pi_k.
The Bayes classifier is ``h*(x) = argmax_k pi_k g_k(x)`` and the 0-1 risk of any rule h is

    R(h) = 1 - integral pi_{h(x)} g_{h(x)}(x) dx.

Risk by quadrature
------------------
The integral is computed by the midpoint rule on a uniform grid of square cells (step ``s``)
that covers the box ``[min mu - c sigma, max mu + c sigma]`` on each axis, with
``c = TAIL_SIGMAS = 5.5``. The rule h is evaluated once per cell, at its centre.

* **Tail.** Every component's mean is at least ``c sigma`` from each side of the box, so the
  mass of the mixture outside the box is at most ``4 (1 - Phi(c)) = 7.6e-8`` (union bound over
  the four half-planes, exact normal tail per half-plane).
* **Dropped cells.** Cells are sorted by their mass ``s^2 sum_k pi_k g_k`` and the lightest
  ones are dropped while their total stays below ``DROP_BUDGET = 1e-7``; no predictor is ever
  evaluated there. Together: the uncovered mass is below ``2e-7 < 1e-6``
  (:attr:`GaussianMixtureProblem.uncovered_mass_bound`). Uncovered mass counts as an error
  for every rule alike, so it cancels exactly in the excess risk.
* **Discretisation.** The densities are smooth, so the midpoint rule on a cell where h is
  constant is accurate to O(s^2) (in practice far better, since the Gaussians decay fast).
  The dominant error is from cells that a decision boundary of h crosses: such a cell is
  given wholly to the label at its centre, so its error is at most
  ``s^2 max_b |pi_a g_a - pi_b g_b|`` over the labels b inside it. For the Bayes classifier
  the two terms are equal on the boundary, so this is O(s^3) per cell and O(s^2) in total
  (the Bayes risk of two Gaussians matches ``Phi(-d/(2 sigma))`` to ~1e-6 at the default
  resolution). For an arbitrary rule the error is O(s) in the worst case, with signs that
  largely cancel. :meth:`GaussianMixtureProblem.risk_error_estimate` returns the a posteriori
  estimate: uncovered mass plus the sum, over cells whose label differs from one of their
  four neighbours, of ``s^2 max_b |pi_a g_a - pi_b g_b|`` (evaluated at the cell centre,
  b ranging over the neighbours' labels). It bounds the error up to the variation of the
  densities within one cell and decision-region features smaller than a cell. It is
  pessimistic (it adds absolute values of errors that largely cancel): for trained
  2-512-512-512-K MLPs at the default resolution it is ~0.015-0.03, while the risk moves by
  at most ~3e-4 when the resolution is doubled or quadrupled, and agrees with 2e5-sample
  Monte Carlo within its standard error.

The default ``grid_resolution = 256`` cells along the longer side of the box (at most
65,536 cells, fewer after dropping) keeps the risk of a 2-512-512-512-K MLP well under a
second on a 2-core CPU (see ``benchmarks/toy.py``).

Randomness is always explicit: every random draw takes a ``torch.Generator`` or an int seed.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from ..checks import as_generator, check_int, check_range, check_real
from .constants import DEFAULT_MEAN_RANGE, DEFAULT_SIGMA_RANGE, GRID_MIN

__all__ = [
    "DEFAULT_MEAN_RANGE",
    "DEFAULT_SIGMA_RANGE",
    "DEFAULT_GRID_RESOLUTION",
    "DEFAULT_MMLB_SAMPLES",
    "TAIL_SIGMAS",
    "DROP_BUDGET",
    "GaussianMixtureProblem",
    "QuadratureGrid",
    "ExcessRisk",
    "MonteCarloRisk",
    "MMLBResult",
    "spiral",
]

DEFAULT_GRID_RESOLUTION: int = 256
"""Quadrature cells along the longer side of the covering box."""
DEFAULT_MMLB_SAMPLES: int = 100_000
"""Mixed points for the MMLB; with equal priors the normalised stderr is <= 0.5/sqrt(n) = 0.0016."""
TAIL_SIGMAS: float = 5.5
"""Half-margin of the quadrature box around the means, in units of sigma."""
DROP_BUDGET: float = 1e-7
"""Largest total mass of the lightest cells that are dropped from the grid."""

_CHUNK = 65_536  # rows per chunk for density evaluation
_PREDICT_BATCH = 8_192  # rows per call of a user's predictor


Predictor = Callable[[torch.Tensor], "torch.Tensor | np.ndarray"]


def _sum_selected(table: torch.Tensor, labels: torch.Tensor, rows_per_chunk: int = 64) -> torch.Tensor:
    """``sum_c table[c, labels[..., c]]`` for table [G, K] and labels [G] or [M, G] -> [] or [M]."""
    if labels.dim() == 1:
        return table.gather(1, labels[:, None]).sum()
    cols = torch.arange(table.shape[0])
    return torch.cat(
        [table[cols, labels[i : i + rows_per_chunk]].sum(1) for i in range(0, labels.shape[0], rows_per_chunk)]
    ) if labels.shape[0] else torch.zeros(0, dtype=table.dtype)


class QuadratureGrid(NamedTuple):
    """The quadrature grid of a problem (kept cells only, G of them).

    points: float32 [G, 2], cell centres.
    weights: float64 [G], cell areas (the quadrature weights).
    joint_density: float64 [G, K], ``pi_k g_k(x)`` at each centre.
    """

    points: torch.Tensor
    weights: torch.Tensor
    joint_density: torch.Tensor


class ExcessRisk(NamedTuple):
    """Excess risk ``R(h) - R(h*)`` of a rule, from one quadrature.

    absolute: the excess as a fraction (0.01 = one percentage point), >= 0.
    absolute_percent: ``100 * absolute``, in percentage points.
    relative_percent: ``100 * (R(h) - R*) / R*`` (inf if R* == 0 < absolute).
    risk: R(h). bayes_risk: R* on the same grid.
    """

    absolute: float
    absolute_percent: float
    relative_percent: float
    risk: float
    bayes_risk: float


class MonteCarloRisk(NamedTuple):
    """Monte Carlo estimate of a risk: ``risk`` (fraction) and its standard error."""

    risk: float
    stderr: float


class MMLBResult(NamedTuple):
    """Mixup misclassification lower bound (alpha = 1), Monte Carlo.

    value: ``R_low = sum_k pi_k^2 P(h*(lam x + (1-lam) x') != k)``, x, x' iid from class k.
    stderr: its standard error.
    normalised: ``value / sum_k pi_k^2`` (mean within-class mixed misclassification), in [0,1].
    normalised_stderr: its standard error.
    """

    value: float
    stderr: float
    normalised: float
    normalised_stderr: float


class _Quadrature(NamedTuple):
    points: torch.Tensor  # float32 [G, 2]
    weights: torch.Tensor  # float64 [G]
    joint_density: torch.Tensor  # float64 [G, K]
    bayes_labels: torch.Tensor  # int64 [G]
    full_index: torch.Tensor  # int64 [G], raster index into the (nx, ny) box grid
    shape: tuple[int, int]  # (nx, ny)
    step: float
    dropped_mass: float


class GaussianMixtureProblem:
    """A K-class problem in R^2 whose class k is an equal-weight mixture of N Gaussians.

    Args:
        means: [K, N, 2] component means (tensor, array or nested lists), K >= 2, N >= 1.
        sigma: shared isotropic standard deviation, finite and > 0.
        priors: [K] class priors, non-negative, summing to 1 (tolerance 1e-6); default 1/K.
        grid_resolution: quadrature cells along the longer side of the covering box (>= ``GRID_MIN`` = 32).

    All parameters are stored as float64. The quadrature grid is built on first use and
    cached on the object (not pickled).
    """

    def __init__(
        self,
        means: "torch.Tensor | np.ndarray | Sequence",
        sigma: float,
        priors: "torch.Tensor | np.ndarray | Sequence[float] | None" = None,
        *,
        grid_resolution: int = DEFAULT_GRID_RESOLUTION,
    ) -> None:
        try:
            m = torch.as_tensor(np.asarray(means, dtype=np.float64) if not isinstance(means, torch.Tensor) else means)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"means must be a numeric array of shape (K, N, 2): {exc}") from None
        m = m.detach().to(device="cpu", dtype=torch.float64).clone()
        if m.dim() != 3 or m.shape[2] != 2:
            raise ValueError(f"means must have shape (K, N, 2), got shape {tuple(m.shape)}")
        if m.shape[0] < 2:
            raise ValueError(f"means must have K >= 2 classes, got K = {m.shape[0]}")
        if m.shape[1] < 1:
            raise ValueError(f"means must have N >= 1 components per class, got N = {m.shape[1]}")
        if not torch.isfinite(m).all():
            raise ValueError("means must be finite, got NaN or inf entries")
        try:
            s = float(sigma)
        except (TypeError, ValueError):
            raise ValueError(f"sigma must be a positive finite number, got {sigma!r}") from None
        if not math.isfinite(s) or s <= 0:
            raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
        k = m.shape[0]
        if priors is None:
            p = torch.full((k,), 1.0 / k, dtype=torch.float64)
        else:
            p = torch.as_tensor(np.asarray(priors, dtype=np.float64) if not isinstance(priors, torch.Tensor) else priors)
            p = p.detach().to(device="cpu", dtype=torch.float64).clone().reshape(-1)
            if p.numel() != k:
                raise ValueError(f"priors must have length K = {k}, got length {p.numel()}")
            if not torch.isfinite(p).all() or (p < 0).any():
                raise ValueError(f"priors must be finite and non-negative, got {p.tolist()}")
            if abs(float(p.sum()) - 1.0) > 1e-6:
                raise ValueError(f"priors must sum to 1 (tolerance 1e-6), got sum {float(p.sum())!r}")
        self._means = m
        self._sigma = s
        self._priors = p
        self._grid_resolution = check_int("grid_resolution", grid_resolution, GRID_MIN)
        self._quad: _Quadrature | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def random(
        cls,
        num_classes: int,
        components_per_class: int,
        generator_or_seed: "torch.Generator | int",
        mean_range: tuple[float, float] = DEFAULT_MEAN_RANGE,
        sigma_range: tuple[float, float] = DEFAULT_SIGMA_RANGE,
        priors: "Sequence[float] | None" = None,
        *,
        grid_resolution: int = DEFAULT_GRID_RESOLUTION,
    ) -> "GaussianMixtureProblem":
        """Draw a problem: means iid uniform in the square ``mean_range^2``, then sigma
        uniform in ``sigma_range`` (in that order, from one generator).

        Defaults: means in [-5, 5]^2, sigma in [0.3, 1.0]. For N = 5 (60 draws each) the
        Bayes risk's 10th-50th-90th percentiles are 2-9-20% at K = 2, 7-17-29% at K = 3 and
        12-32-42% at K = 5 (a spread like the paper's Figure 2 and Figure 3 quartiles).
        """
        k = check_int("num_classes", num_classes, 2)
        n = check_int("components_per_class", components_per_class, 1)
        lo, hi = check_range("mean_range", mean_range, allow_equal=True)
        slo, shi = check_range("sigma_range", sigma_range, positive=True, allow_equal=True)
        g = as_generator(generator_or_seed)
        means = lo + (hi - lo) * torch.rand((k, n, 2), generator=g, dtype=torch.float64)
        sigma = slo + (shi - slo) * float(torch.rand((), generator=g, dtype=torch.float64))
        return cls(means, sigma, priors, grid_resolution=grid_resolution)

    def with_grid_resolution(self, grid_resolution: int) -> "GaussianMixtureProblem":
        """The same problem with another quadrature resolution."""
        return GaussianMixtureProblem(self._means, self._sigma, self._priors, grid_resolution=grid_resolution)

    def to_dict(self) -> dict:
        """Plain-Python description (JSON-serialisable); inverse of :meth:`from_dict`."""
        return {
            "means": self._means.tolist(),
            "sigma": self._sigma,
            "priors": self._priors.tolist(),
            "grid_resolution": self._grid_resolution,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "GaussianMixtureProblem":
        return cls(d["means"], d["sigma"], d.get("priors"), grid_resolution=d.get("grid_resolution", DEFAULT_GRID_RESOLUTION))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_quad"] = None  # the grid is a cache: rebuild after unpickling
        return state

    def __repr__(self) -> str:
        return (
            f"GaussianMixtureProblem(num_classes={self.num_classes}, "
            f"components_per_class={self.components_per_class}, sigma={self._sigma:.4g})"
        )

    # ------------------------------------------------------------------ properties
    @property
    def num_classes(self) -> int:
        """K."""
        return int(self._means.shape[0])

    @property
    def components_per_class(self) -> int:
        """N."""
        return int(self._means.shape[1])

    @property
    def means(self) -> torch.Tensor:
        """float64 [K, N, 2] (a copy)."""
        return self._means.clone()

    @property
    def sigma(self) -> float:
        return self._sigma

    @property
    def priors(self) -> torch.Tensor:
        """float64 [K] (a copy)."""
        return self._priors.clone()

    @property
    def grid_resolution(self) -> int:
        return self._grid_resolution

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """The quadrature box ``(x_min, x_max, y_min, y_max)``: means +/- TAIL_SIGMAS sigma."""
        lo = self._means.reshape(-1, 2).min(0).values - TAIL_SIGMAS * self._sigma
        hi = self._means.reshape(-1, 2).max(0).values + TAIL_SIGMAS * self._sigma
        return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])

    @property
    def uncovered_mass_bound(self) -> float:
        """Upper bound on the probability mass not covered by the kept grid cells."""
        tail = 4.0 * 0.5 * math.erfc(TAIL_SIGMAS / math.sqrt(2.0))
        return tail + self._quadrature().dropped_mass

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, generator: "torch.Generator | int") -> tuple[torch.Tensor, torch.Tensor]:
        """Draw n iid labelled points.

        Returns: x float32 [n, 2], y int64 [n]. Classes by the priors, components uniformly.
        """
        n = check_int("n", n, 1)
        g = as_generator(generator)
        y = torch.multinomial(self._priors, n, replacement=True, generator=g)
        comp = torch.randint(0, self.components_per_class, (n,), generator=g)
        z = torch.randn((n, 2), generator=g, dtype=torch.float64)
        x = self._means[y, comp] + self._sigma * z
        return x.to(torch.float32), y

    # ------------------------------------------------------------------ densities
    def log_density(self, x: "torch.Tensor | np.ndarray") -> torch.Tensor:
        """Class-conditional log densities.

        Args: x [n, 2] (any float dtype). Returns float64 [n, K] with entries log g_k(x).
        """
        x = self._as_points("x", x)
        k, n_comp = self.num_classes, self.components_per_class
        const = -math.log(n_comp) - math.log(2.0 * math.pi * self._sigma**2)
        out = torch.empty((x.shape[0], k), dtype=torch.float64)
        inv = 1.0 / (2.0 * self._sigma**2)
        mx, my = self._means[..., 0], self._means[..., 1]  # [K, N]
        for start in range(0, x.shape[0], _CHUNK):
            xc = x[start : start + _CHUNK]
            dx, dy = xc[:, 0, None, None] - mx, xc[:, 1, None, None] - my  # [c, K, N]
            d2 = dx.mul_(dx).add_(dy.mul_(dy))  # the squared distance, dx^2 + dy^2 (one rounding each)
            out[start : start + _CHUNK] = torch.logsumexp(d2.mul_(-inv), dim=2) + const
        return out

    def log_joint(self, x: "torch.Tensor | np.ndarray") -> torch.Tensor:
        """float64 [n, K]: ``log pi_k + log g_k(x)`` (-inf where pi_k = 0)."""
        return self.log_density(x) + torch.log(self._priors)

    def bayes_predict(self, x: "torch.Tensor | np.ndarray") -> torch.Tensor:
        """The Bayes classifier: int64 [n] with ``argmax_k log pi_k + log g_k(x)``; x [n, 2]."""
        return self.log_joint(x).argmax(dim=1)

    # ------------------------------------------------------------------ quadrature
    def grid(self) -> QuadratureGrid:
        """The (cached) quadrature grid: points float32 [G, 2], weights float64 [G] (cell
        areas) and ``pi_k g_k(x)`` float64 [G, K]. Evaluate predictions at ``points`` and
        pass them to :meth:`risk_from_predictions`."""
        q = self._quadrature()
        return QuadratureGrid(q.points, q.weights, q.joint_density)

    def _quadrature(self) -> _Quadrature:
        if self._quad is None:
            self._quad = self._build_quadrature()
        return self._quad

    def _build_quadrature(self) -> _Quadrature:
        x0, x1, y0, y1 = self.bounds
        step = max(x1 - x0, y1 - y0) / self._grid_resolution
        nx = math.ceil((x1 - x0) / step - 1e-9)
        ny = math.ceil((y1 - y0) / step - 1e-9)
        # centre the (possibly slightly larger) cell block on the box
        cx0 = 0.5 * (x0 + x1) - 0.5 * nx * step
        cy0 = 0.5 * (y0 + y1) - 0.5 * ny * step
        xs = cx0 + (torch.arange(nx, dtype=torch.float64) + 0.5) * step
        ys = cy0 + (torch.arange(ny, dtype=torch.float64) + 0.5) * step
        pts = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), dim=-1).reshape(-1, 2)  # raster: i*ny + j
        log_joint = self.log_joint(pts)
        joint = log_joint.exp()
        labels = log_joint.argmax(dim=1)
        area = step * step
        mass = joint.sum(1) * area
        order = torch.argsort(mass)
        csum = torch.cumsum(mass[order], 0)
        n_drop = int(torch.searchsorted(csum, torch.tensor(DROP_BUDGET, dtype=torch.float64), right=True))
        dropped = float(csum[n_drop - 1]) if n_drop > 0 else 0.0
        keep = torch.sort(order[n_drop:]).values
        return _Quadrature(
            points=pts[keep].to(torch.float32).contiguous(),
            weights=torch.full((keep.numel(),), area, dtype=torch.float64),
            joint_density=joint[keep].contiguous(),
            bayes_labels=labels[keep].contiguous(),
            full_index=keep,
            shape=(nx, ny),
            step=step,
            dropped_mass=dropped,
        )

    def _check_predictions(self, pred: "torch.Tensor | np.ndarray", n: int, name: str) -> torch.Tensor:
        """Labels int64 [..., n] from labels [..., n] or scores [n, K] / [M, n, K]."""
        p = torch.as_tensor(pred).detach().cpu()
        k = self.num_classes
        if p.is_floating_point() or p.is_complex():
            if p.dim() >= 2 and p.shape[-1] == k and p.shape[-2] == n:
                p = p.argmax(dim=-1)
            else:
                raise ValueError(
                    f"{name} must be integer labels of shape [{n}] or [M, {n}], or float scores of "
                    f"shape [{n}, {k}] or [M, {n}, {k}]; got dtype {p.dtype} and shape {tuple(p.shape)}"
                )
        if p.dtype == torch.bool or p.dim() not in (1, 2) or p.shape[-1] != n:
            raise ValueError(
                f"{name} must be integer labels of shape [{n}] or [M, {n}]; got dtype {p.dtype} "
                f"and shape {tuple(p.shape)}"
            )
        p = p.to(torch.int64)
        if p.numel() and (int(p.min()) < 0 or int(p.max()) >= k):
            raise ValueError(
                f"{name} must be labels in [0, {k - 1}], got values in [{int(p.min())}, {int(p.max())}]"
            )
        return p

    def risk_from_predictions(self, pred: "torch.Tensor | np.ndarray") -> torch.Tensor:
        """Risk of predictions made at :meth:`grid` points.

        Args: pred int labels [G] or [M, G] (or float scores [G, K] / [M, G, K]).
        Returns: float64 tensor of shape [] or [M]: ``1 - sum_c w_c pi_{h_c} g_{h_c}(x_c)``.
        """
        q = self._quadrature()
        p = self._check_predictions(pred, q.points.shape[0], "pred")
        wf = q.joint_density * q.weights[:, None]  # [G, K]
        return 1.0 - _sum_selected(wf, p)

    def excess_risk_from_predictions(self, pred: "torch.Tensor | np.ndarray") -> torch.Tensor:
        """``R(h) - R(h*)`` on the grid, as ``sum_c w_c (max_k pi_k g_k - pi_{h_c} g_{h_c})``,
        which is >= 0 cell by cell. pred as in :meth:`risk_from_predictions`; returns a
        float64 fraction of shape [] or [M]."""
        q = self._quadrature()
        p = self._check_predictions(pred, q.points.shape[0], "pred")
        wf = q.joint_density * q.weights[:, None]
        gap = wf.max(dim=1, keepdim=True).values - wf  # [G, K], >= 0 entrywise
        return _sum_selected(gap, p).clamp_min(0.0)

    def predict_on_grid(self, predict: Predictor, batch_size: int = _PREDICT_BATCH) -> torch.Tensor:
        """Labels int64 [G] of ``predict`` at the grid points (see :meth:`risk` for ``predict``)."""
        q = self._quadrature()
        return self._predict_points(predict, q.points, batch_size)

    def _predict_points(self, predict: Predictor, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        if not callable(predict):
            raise TypeError(f"predict must be callable, got {type(predict).__name__}")
        batch_size = check_int("batch_size", batch_size, 1)
        parts = []
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                xb = x[start : start + batch_size]
                parts.append(self._check_predictions(predict(xb), xb.shape[0], "predict(x)"))
        return torch.cat(parts)

    def bayes_risk(self) -> float:
        """R* = R(h*) by quadrature (see the module docstring for the error)."""
        q = self._quadrature()
        return float(self.risk_from_predictions(q.bayes_labels))

    def risk(self, predict: Predictor, batch_size: int = _PREDICT_BATCH) -> float:
        """R(h) by quadrature.

        Args:
            predict: maps float32 [n, 2] to int labels [n] or scores [n, K] (argmax taken);
                called under ``torch.no_grad()`` on batches of at most ``batch_size`` rows.
        """
        return float(self.risk_from_predictions(self.predict_on_grid(predict, batch_size)))

    def excess_risk(self, predict: Predictor, batch_size: int = _PREDICT_BATCH) -> ExcessRisk:
        """``R(h) - R(h*)`` on one grid, absolute (>= 0) and relative to R*."""
        pred = self.predict_on_grid(predict, batch_size)
        absolute = float(self.excess_risk_from_predictions(pred))
        r_star = self.bayes_risk()
        if r_star > 0:
            rel = 100.0 * absolute / r_star
        else:
            rel = math.inf if absolute > 0 else 0.0
        return ExcessRisk(absolute, 100.0 * absolute, rel, r_star + absolute, r_star)

    def risk_error_estimate(self, pred: "torch.Tensor | np.ndarray") -> torch.Tensor:
        """A posteriori estimate of the quadrature error of :meth:`risk_from_predictions`.

        Uncovered mass plus, over the cells c whose label a differs from the label of one of
        their four neighbours, ``w_c max_b |pi_a g_a(x_c) - pi_b g_b(x_c)|`` with b over the
        neighbours' labels (see the module docstring). pred as in
        :meth:`risk_from_predictions`; returns float64 of shape [] or [M].
        """
        q = self._quadrature()
        p = self._check_predictions(pred, q.points.shape[0], "pred")
        nx, ny = q.shape
        rows = p[None] if p.dim() == 1 else p
        wf_full = torch.zeros((nx * ny, self.num_classes), dtype=torch.float64)
        wf_full[q.full_index] = q.joint_density * q.weights[:, None]
        wf_full = wf_full.reshape(nx, ny, -1)
        out = []
        for row in rows:
            lab = torch.full((nx * ny,), -1, dtype=torch.int64)
            lab[q.full_index] = row
            lab = lab.reshape(nx, ny)
            own = wf_full.gather(2, lab.clamp_min(0)[..., None])[..., 0]
            jump = torch.zeros((nx, ny), dtype=torch.float64)
            padded = torch.nn.functional.pad(lab[None, None].double(), (1, 1, 1, 1), value=-1.0)[0, 0].long()
            for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                nb = padded[1 + di : 1 + di + nx, 1 + dj : 1 + dj + ny]
                differs = (nb >= 0) & (lab >= 0) & (nb != lab)
                other = wf_full.gather(2, nb.clamp_min(0)[..., None])[..., 0]
                jump = torch.where(differs, torch.maximum(jump, (own - other).abs()), jump)
            out.append(jump.sum())
        est = torch.stack(out) + self.uncovered_mass_bound
        return est[0] if p.dim() == 1 else est

    # ------------------------------------------------------------------ Monte Carlo
    def monte_carlo_risk(
        self, predict: Predictor, n: int, generator: "torch.Generator | int", batch_size: int = _PREDICT_BATCH
    ) -> MonteCarloRisk:
        """Risk of ``predict`` on n fresh samples, with its standard error
        ``sqrt(p (1 - p) / (n - 1))`` (0 when n == 1)."""
        n = check_int("n", n, 1)
        x, y = self.sample(n, generator)
        wrong = (self._predict_points(predict, x, batch_size) != y).double()
        p = float(wrong.mean())
        se = math.sqrt(p * (1.0 - p) / (n - 1)) if n > 1 else 0.0
        return MonteCarloRisk(p, se)

    def mmlb(self, num_samples: int = DEFAULT_MMLB_SAMPLES, generator: "torch.Generator | int" = 0) -> MMLBResult:
        """Mixup misclassification lower bound with alpha = 1 (lam ~ U(0, 1)), Monte Carlo.

        Stratified by class: each class with pi_k > 0 gets ``num_samples // K'`` mixed points
        (K' such classes), ``lam x + (1 - lam) x'`` with x, x' iid from class k; the class's
        misclassification rate p_k is weighted by pi_k^2. With equal priors the normalised
        standard error is at most ``0.5 / sqrt(num_samples)`` (0.0016 for the default 1e5),
        and ``stderr = normalised_stderr * sum_k pi_k^2``.
        """
        active = [k for k in range(self.num_classes) if float(self._priors[k]) > 0]
        num_samples = check_int("num_samples", num_samples, 2 * len(active))
        g = as_generator(generator)
        m = num_samples // len(active)
        n_comp = self.components_per_class
        value, var = 0.0, 0.0
        for k in active:
            i = torch.randint(0, n_comp, (m,), generator=g)
            j = torch.randint(0, n_comp, (m,), generator=g)
            z = torch.randn((2, m, 2), generator=g, dtype=torch.float64)
            lam = torch.rand((m, 1), generator=g, dtype=torch.float64)
            x = self._means[k, i] + self._sigma * z[0]
            xp = self._means[k, j] + self._sigma * z[1]
            mixed = lam * x + (1.0 - lam) * xp
            p = float((self.bayes_predict(mixed) != k).double().mean())
            w = float(self._priors[k]) ** 2
            value += w * p
            var += w * w * p * (1.0 - p) / (m - 1)
        total = float((self._priors**2).sum())
        se = math.sqrt(var)
        return MMLBResult(value, se, value / total, se / total)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _as_points(name: str, x: "torch.Tensor | np.ndarray") -> torch.Tensor:
        t = torch.as_tensor(x).detach().cpu()
        if t.dim() != 2 or t.shape[1] != 2:
            raise ValueError(f"{name} must have shape [n, 2], got shape {tuple(t.shape)}")
        return t.to(torch.float64)


def spiral(
    n: int,
    generator: "torch.Generator | int",
    arms: int = 2,
    noise: float = 0.05,
    turns: float = 1.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interleaved spiral arms (the paper's Figure 1 data set).

    Arm a holds the points ``r (cos t, sin t) + noise * eps`` with ``u ~ U(0, 1)``,
    ``r = 0.1 + 0.9 u`` (radius in [0.1, 1]), ``t = 2 pi (turns u + a / arms)`` and
    ``eps ~ N(0, I)``. Classes are balanced (sizes differ by at most one) and shuffled.

    Args:
        n: number of points (>= arms).
        generator: torch.Generator or int seed.
        arms: number of arms = classes (>= 2).
        noise: standard deviation of the isotropic Gaussian noise (>= 0, finite).
        turns: turns of each arm (> 0, finite).
    Returns: x float32 [n, 2], y int64 [n] in [0, arms).
    """
    arms = check_int("arms", arms, 2)
    n = check_int("n", n, arms)
    noise_f = check_real("noise", noise, 0)
    turns_f = check_real("turns", turns, 0, low_open=True)
    g = as_generator(generator)
    y = torch.arange(n, dtype=torch.int64) % arms
    y = y[torch.randperm(n, generator=g)]
    u = torch.rand(n, generator=g, dtype=torch.float64)
    r = 0.1 + 0.9 * u
    t = 2.0 * math.pi * (turns_f * u + y.double() / arms)
    x = torch.stack([r * torch.cos(t), r * torch.sin(t)], dim=1)
    x = x + noise_f * torch.randn((n, 2), generator=g, dtype=torch.float64)
    return x.to(torch.float32), y
