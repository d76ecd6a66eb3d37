"""Figures of the paper, one function per figure.

Every function draws on its own ``matplotlib.figure.Figure`` with the Agg canvas and writes
a PNG; nothing touches pyplot's global state, so the functions are safe in worker processes
and tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib import colormaps

from .toy import GaussianMixtureProblem, as_generator

__all__ = ["class_colours", "plot_toy_problem", "figure2"]


def class_colours(num_classes: int) -> tuple[list, list]:
    """(dark, light) RGBA colours for each class: tab20 pairs for K <= 10, else hsv."""
    if num_classes <= 10:
        cmap = colormaps["tab20"]
        return [cmap(2 * k) for k in range(num_classes)], [cmap(2 * k + 1) for k in range(num_classes)]
    cmap = colormaps["hsv"]
    dark = [cmap(k / num_classes) for k in range(num_classes)]
    light = [tuple(0.6 + 0.4 * np.asarray(c[:3])) + (1.0,) for c in dark]
    return dark, light


def _save(fig: Figure, path: "str | os.PathLike", dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def plot_toy_problem(
    problem: GaussianMixtureProblem,
    n_samples: int,
    generator: "torch.Generator | int",
    path: "str | os.PathLike",
    title: "str | None" = None,
    *,
    resolution: int = 400,
    dpi: int = 150,
) -> Path:
    """Figure 2: samples coloured by class over the filled Bayes decision regions.

    Args:
        problem: the toy problem.
        n_samples: number of points drawn with ``problem.sample`` (>= 1).
        generator: torch.Generator or int seed for the samples.
        path: PNG file to write (parent folders are created).
        title: figure title; default names K, N, sigma and the Bayes risk.
        resolution: pixels along each axis of the decision-region image (>= 16).
        dpi: PNG resolution.
    Returns: the path written.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 16:
        raise ValueError(f"resolution must be an int >= 16, got {resolution!r}")
    x, y = problem.sample(n_samples, as_generator(generator))
    k = problem.num_classes
    mu = problem.means.reshape(-1, 2)
    pad = 3.0 * problem.sigma
    lo = torch.minimum(mu.min(0).values - pad, x.double().min(0).values)
    hi = torch.maximum(mu.max(0).values + pad, x.double().max(0).values)
    gx = torch.linspace(float(lo[0]), float(hi[0]), resolution, dtype=torch.float64)
    gy = torch.linspace(float(lo[1]), float(hi[1]), resolution, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1).reshape(-1, 2)
    regions = problem.bayes_predict(pts).reshape(resolution, resolution).numpy()

    dark, light = class_colours(k)
    fig = Figure(figsize=(6.0, 5.4))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(
        regions,
        origin="lower",
        extent=(float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])),
        cmap=ListedColormap(light),
        vmin=-0.5,
        vmax=k - 0.5,
        interpolation="nearest",
        aspect="equal",
    )
    ax.contour(gx.numpy(), gy.numpy(), regions, levels=np.arange(k - 1) + 0.5, colors="k", linewidths=0.6)
    xn, yn = x.numpy(), y.numpy()
    for c in range(k):
        sel = yn == c
        ax.scatter(xn[sel, 0], xn[sel, 1], s=9, color=dark[c], edgecolors="k", linewidths=0.2, label=f"class {c}", zorder=3)
    means = problem.means.numpy()
    for c in range(k):
        ax.scatter(means[c, :, 0], means[c, :, 1], marker="X", s=60, color=dark[c], edgecolors="k", linewidths=0.8, zorder=4)
    ax.scatter([], [], marker="X", s=60, color="w", edgecolors="k", linewidths=0.8, label="component means")
    if title is None:
        title = (
            f"Toy problem: K = {k}, N = {problem.components_per_class}, "
            f"sigma = {problem.sigma:.2f}, Bayes risk = {100 * problem.bayes_risk():.1f}%"
        )
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_xlim(float(lo[0]), float(hi[0]))
    ax.set_ylim(float(lo[1]), float(hi[1]))
    ax.legend(loc="upper right", fontsize=8, framealpha=0.85, markerscale=1.2)
    fig.tight_layout()
    return _save(fig, path, dpi)


def figure2(out_path: "str | os.PathLike" = "docs/figure2.png", seed: int = 0, n_samples: int = 1000) -> Path:
    """The paper's Figure 2: one problem with K = 3, N = 5 (default ranges) drawn from
    ``seed``, with ``n_samples`` samples (seed + 1 for the samples). Returns the path."""
    problem = GaussianMixtureProblem.random(3, 5, seed)
    return plot_toy_problem(problem, n_samples, seed + 1, out_path)
