"""The kit's constants that the command line shows and the kit checks against, in a module that
does not import torch (``--help`` is built from them without loading it)."""

from __future__ import annotations

__all__ = ["DATASETS", "DEFAULT_MEAN_RANGE", "DEFAULT_SIGMA_RANGE", "PAPER_CNN_MIX_LAYER", "DEVICES", "FIGURE2_SEED", "GRID_MIN"]

#: Image data sets ``data.load_dataset`` knows by name.
DATASETS: tuple[str, ...] = ("digits", "cifar10", "fashion-mnist")
#: Default square ``[lo, hi]^2`` from which the toy problems' component means are drawn uniformly.
DEFAULT_MEAN_RANGE: tuple[float, float] = (-5.0, 5.0)
#: Default interval from which a toy problem's shared sigma is drawn uniformly.
DEFAULT_SIGMA_RANGE: tuple[float, float] = (0.3, 1.0)
#: Coarsest quadrature grid of a toy problem (cells along the longer side): on 60 of the depth study's
#: problems the Bayes risk at 16 cells is off by up to 1.5 pp from 256 cells, at 32 by 0.2 pp; at 8 it
#: even came out negative (7 of 60).
GRID_MIN = 32
#: Where the paper's CNN is mixed by manifold mixup: its flattened features, before the first
#: fully connected layer.
PAPER_CNN_MIX_LAYER = "flatten"
#: What a ``device`` setting may say (``devices.resolve_device`` reads it).
DEVICES = "cpu, cuda, cuda:N or auto"
#: The seed of the problem Figure 2 shows (seed + 1 draws its samples).
FIGURE2_SEED = 0
