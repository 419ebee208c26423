"""Pictures. Plot helpers return a matplotlib Figure (or draw into a given Axes) and hold no
logic that a test would need: the numbers come from the library (``uncertainty``, ``losses``).

Generalized-Gaussian (GGD) plots:

* :func:`plot_ggd_family`: densities at equal standard deviation as beta moves, linear and log.
* :func:`plot_nll_landscape`: mean loss over a grid of constant (alpha, beta).
* :func:`plot_residual_fits`: residual histogram with fitted GGD densities.
* :func:`format_table`: a list of dicts as a fixed-width text table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

from .ggd import GGDFit, ggd_std, nll_grid


def _gennorm_pdf(y: np.ndarray, mu: float, alpha: float, beta: float) -> np.ndarray:
    return stats.gennorm(beta, loc=mu, scale=alpha).pdf(y)


def plot_ggd_family(
    betas: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 8.0),
    sigma: float = 1.0,
    span: float = 5.0,
    n: int = 1001,
) -> plt.Figure:
    """GGD densities with the same standard deviation ``sigma`` for several shapes beta:
    left linear (the peak and shoulders), right log-scale (the tails). alpha is chosen per beta
    as sigma / sqrt(Gamma(3/beta) / Gamma(1/beta))."""
    y = np.linspace(-span * sigma, span * sigma, n)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    for i, beta in enumerate(betas):
        alpha = sigma / float(ggd_std(1.0, beta))
        pdf = _gennorm_pdf(y, 0.0, alpha, beta)
        label = f"beta={beta:g} (alpha={alpha:.2f})"
        color = cmap(i / max(1, len(betas) - 1))
        for ax in axes:
            ax.plot(y / sigma, pdf * sigma, color=color, label=label)
    axes[0].set_title("density at equal sigma")
    axes[1].set_yscale("log")
    axes[1].set_ylim(1e-8, 10.0)
    axes[1].set_title("same, log scale: the tails")
    for ax in axes:
        ax.set_xlabel("residual / sigma")
        ax.set_ylabel("density x sigma")
    axes[0].legend(fontsize=8)
    return fig


def plot_nll_landscape(
    residuals: np.ndarray,
    alphas: np.ndarray,
    betas: np.ndarray,
    kind: str = "exact",
    fit: GGDFit | None = None,
    ax: plt.Axes | None = None,
    title: str = "",
    levels: int = 30,
) -> plt.Axes:
    """Contours of the mean loss of constant (alpha, beta) over ``residuals`` (log-alpha axis),
    minus its grid minimum, with the fitted optimum marked if ``fit`` is given."""
    grid = nll_grid(residuals, alphas, betas, kind=kind)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4), constrained_layout=True)
    rel = grid - grid.min()
    cs = ax.contourf(alphas, betas, np.log10(rel + 1e-4), levels=levels, cmap="magma_r")
    ax.figure.colorbar(cs, ax=ax, label="log10(loss - min + 1e-4)")
    ax.set_xscale("log")
    ax.set_xlabel("alpha")
    ax.set_ylabel("beta")
    if fit is not None:
        ax.plot(fit.alpha, fit.beta, "c*", ms=14, mec="k", label=f"optimum beta={fit.beta:.2f}")
        ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or f"{kind} loss")
    return ax


def plot_residual_fits(
    residuals: np.ndarray,
    fits: Mapping[str, GGDFit],
    ax: plt.Axes | None = None,
    bins: int = 200,
    title: str = "",
) -> plt.Axes:
    """Histogram of residuals (density, log scale) with each fitted GGD density overlaid."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.8), constrained_layout=True)
    r = np.asarray(residuals).ravel()
    lim = np.quantile(np.abs(r), 0.9995)
    ax.hist(r, bins=bins, range=(-lim, lim), density=True, color="0.8", label="residuals")
    y = np.linspace(-lim, lim, 801)
    for name, f in fits.items():
        label = f"{name}: beta={f.beta:.2f}, sigma={f.sigma:.3g}"
        ax.plot(y, _gennorm_pdf(y, 0.0, f.alpha, f.beta), label=label)
    ax.set_yscale("log")
    ax.set_xlabel("residual")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return ax


def format_table(rows: Sequence[Mapping[str, object]], digits: int = 4) -> str:
    """Rows of equal keys as a fixed-width text table (floats with ``digits`` significant)."""
    if not rows:
        return ""
    keys = list(rows[0])

    def cell(v: object) -> str:
        return f"{v:.{digits}g}" if isinstance(v, float) else str(v)

    cells = [[cell(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.rjust(w) for k, w in zip(keys, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)
