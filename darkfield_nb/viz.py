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


def plot_severity_sweep(rows: Sequence[dict], axes=None):
    """Left: predicted against true mean lung D, one line per patient (severity rising along
    it, marker size ~ severity), the band of the 90 % interval as error bars, the identity
    line. Right: predicted against true lesion / rest D ratio. Returns the figure."""
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    else:
        fig = axes[0].figure
    ax, bx = axes
    patients = list(dict.fromkeys(r["patient_seed"] for r in rows))
    colors = plt.get_cmap("tab10")
    lo_all, hi_all = [], []
    for k, q in enumerate(patients):
        rs = sorted((r for r in rows if r["patient_seed"] == q), key=lambda r: r["severity"])
        t = np.array([r["true_lung_D"] for r in rs])
        p = np.array([r["pred_lung_D"] for r in rs])
        lo = np.array([r["pred_lung_D_lo"] for r in rs])
        hi = np.array([r["pred_lung_D_hi"] for r in rs])
        sev = np.array([r["severity"] for r in rs])
        col = colors(k % 10)
        ax.errorbar(
            t, p, yerr=[p - lo, hi - p], color=col, lw=1, capsize=3, alpha=0.8, label=f"patient {q}"
        )
        ax.scatter(t, p, s=15 + 60 * sev, color=col, zorder=3)
        lo_all += [t.min(), lo.min()]
        hi_all += [t.max(), hi.max()]
        tr = np.array([r["true_ratio"] for r in rs])
        pr = np.array([r["pred_ratio"] for r in rs])
        ok = np.isfinite(tr) & np.isfinite(pr)
        if ok.any():
            bx.plot(tr[ok], pr[ok], "-o", color=col, ms=4)
    span = (min(lo_all), max(hi_all))
    ax.plot(span, span, "k--", lw=1, label="identity")
    ax.set(
        xlabel="true mean lung D",
        ylabel="predicted mean lung D",
        title="lung D (bars: mean of the 90 % bounds)",
    )
    ax.legend(fontsize=7)
    bx.plot([0, 1.3], [0, 1.3], "k--", lw=1)
    bx.set(
        xlabel="true lesion / rest D",
        ylabel="predicted lesion / rest D",
        title="lesion vs rest of lung",
        xlim=(0, 1.3),
        ylim=(0, 1.3),
    )
    fig.tight_layout()
    return fig
