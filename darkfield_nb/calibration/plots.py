"""Figures for calibration: reliability (coverage) diagrams, PIT histograms, binned RMSE,
sparsification curves, coverage per region, risk against lambda, and a gallery of the pixels an
interval misses. Each function draws on a given matplotlib Axes (or makes a figure) and returns
it; lines differ in style as well as colour so that the figures read in black and white."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .risk import RCPSResult
from .sparsification import Sparsification

STYLES = ("-", "--", "-.", ":")


def _ax(ax, size=(4, 3.6)):
    if ax is None:
        _, ax = plt.subplots(figsize=size)
    return ax


def reliability_diagram(curves: dict[str, tuple[np.ndarray, np.ndarray]], ax=None, title=""):
    """Observed against nominal coverage of central intervals, one line per entry of ``curves``
    (label -> (levels, observed)), with the diagonal (calibrated)."""
    ax = _ax(ax)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, label="calibrated")
    palette = sns.color_palette("colorblind", len(curves))
    for k, (label, (p, obs)) in enumerate(curves.items()):
        ax.plot(p, obs, STYLES[k % 4], color=palette[k], lw=1.8, label=label)
    ax.set(
        xlabel="nominal coverage p",
        ylabel="observed coverage",
        xlim=(0, 1),
        ylim=(0, 1),
        title=title,
    )
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="upper left")
    return ax


def pit_histogram(pits: dict[str, np.ndarray], ax=None, bins: int = 20, title=""):
    """Density histograms of PIT values u = F(y) (flat at 1 when calibrated; a U shape means
    over-confidence, a hump under-confidence)."""
    ax = _ax(ax)
    palette = sns.color_palette("colorblind", len(pits))
    for k, (label, u) in enumerate(pits.items()):
        ax.hist(
            np.ravel(u),
            bins=bins,
            range=(0, 1),
            density=True,
            histtype="step",
            lw=1.8,
            ls=STYLES[k % 4],
            color=palette[k],
            label=label,
        )
    ax.axhline(1.0, color="0.6", lw=1)
    ax.set(xlabel="PIT u = F(y)", ylabel="density", xlim=(0, 1), title=title)
    ax.legend(fontsize=8)
    return ax


def binned_rmse_plot(bins: dict[str, dict], ax=None, title=""):
    """RMSE against root mean predicted variance per sigma bin (``binned_rmse`` outputs)."""
    ax = _ax(ax)
    top = max(max(b["rmv"].max(), b["rmse"].max()) for b in bins.values())
    ax.plot([0, top], [0, top], color="0.6", lw=1, label="calibrated")
    palette = sns.color_palette("colorblind", len(bins))
    markers = "osD^"
    for k, (label, b) in enumerate(bins.items()):
        ax.plot(
            b["rmv"],
            b["rmse"],
            STYLES[k % 4],
            marker=markers[k % 4],
            ms=3,
            color=palette[k],
            label=label,
        )
    ax.set(xlabel="RMV (predicted sigma, D)", ylabel="RMSE (D)", title=title)
    ax.legend(fontsize=8)
    return ax


def sparsification_plot(curves: dict[str, Sparsification] | Sparsification, ax=None, title=""):
    """Sparsification curves with their oracles (thin) and the random baseline."""
    ax = _ax(ax)
    if isinstance(curves, Sparsification):
        curves = {"model": curves}
    palette = sns.color_palette("colorblind", len(curves))
    first = next(iter(curves.values()))
    ax.plot(first.fractions, first.random, color="0.6", lw=1, label="random")
    for k, (label, s) in enumerate(curves.items()):
        ax.plot(
            s.fractions,
            s.model,
            STYLES[k % 4],
            color=palette[k],
            lw=1.8,
            label=f"{label} (AUSE/random {s.ause_over_random:.2f})",
        )
        oracle = "oracle (thin)" if k == 0 else None
        ax.plot(s.fractions, s.oracle, STYLES[k % 4], color=palette[k], lw=0.8, label=oracle)
    unit = "relative " if first.normalized else ""
    ax.set(
        xlabel="fraction of pixels removed (most uncertain first)",
        ylabel=f"{unit}{first.metric.upper()} of the rest",
        title=title,
    )
    ax.legend(fontsize=7)
    return ax


def coverage_by_region_plot(
    table: dict[str, dict[str, float]], nominal: float = 0.9, ax=None, title=""
):
    """Grouped bars: coverage per region (outer keys) and method (inner keys), nominal line."""
    import pandas as pd

    ax = _ax(ax, (6, 3.2))
    rows = [
        {"region": r, "method": m, "coverage": v}
        for r, d in table.items()
        for m, v in d.items()
        if v is not None
    ]
    frame = pd.DataFrame(rows)
    sns.barplot(data=frame, x="region", y="coverage", hue="method", palette="colorblind", ax=ax)
    for k, bar in enumerate(ax.patches):
        bar.set_hatch(["", "//", "..", "xx"][(k // max(1, len(table))) % 4])
    ax.axhline(nominal, color="k", ls="--", lw=1, label=f"nominal {nominal:.2f}")
    low = max(0.0, min(frame["coverage"].min(), nominal) - 0.05)
    ax.set(ylim=(low, 1.0), title=title, xlabel="")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


def risk_plot(res: RCPSResult, test_risk: np.ndarray | None = None, ax=None, title=""):
    """Calibration mean loss R_hat and its Hoeffding-Bentkus bound R+ against lambda, the target
    alpha, the chosen lambda_hat, and (optionally) the test images' mean loss."""
    ax = _ax(ax, (5, 3.4))
    ax.plot(res.lambdas, res.r_hat, "-", color="C0", label="calibration risk R_hat")
    ax.plot(res.lambdas, res.ucb, "--", color="C1", label="upper bound R+ (HB)")
    if test_risk is not None:
        ax.plot(res.lambdas, test_risk, ":", color="C2", lw=2, label="test risk")
    ax.axhline(res.alpha, color="k", lw=1, label=f"alpha = {res.alpha:g}")
    if np.isfinite(res.lambda_hat):
        ax.axvline(res.lambda_hat, color="C3", ls="-.", label=f"lambda_hat = {res.lambda_hat:.3f}")
    ax.axvline(1.0, color="0.6", lw=0.8, label="lambda = 1 (uncalibrated)")
    ax.set(
        xlabel="lambda (multiple of the 90 % half-widths)",
        ylabel="share of pixels missed",
        ylim=(0, min(1, 4 * res.alpha)),
        title=title,
    )
    ax.legend(fontsize=7)
    return ax


def miss_gallery(y, mu, lo, hi, ids=None, titles=("target", "|error|", "width", "missed")):
    """One row per image: target, |error|, interval width and the missed pixels (outside
    [lo, hi]) in red over the target. Arrays are (N, H, W)."""
    y, mu, lo, hi = (np.asarray(a) for a in (y, mu, lo, hi))
    n = y.shape[0]
    fig, axes = plt.subplots(n, 4, figsize=(10, 2.5 * n), squeeze=False)
    vmax = np.percentile(y, 99.5)
    for i in range(n):
        miss = (y[i] < lo[i]) | (y[i] > hi[i])
        axes[i, 0].imshow(y[i], cmap="gray", vmin=0, vmax=vmax)
        err = axes[i, 1].imshow(np.abs(y[i] - mu[i]), cmap="magma")
        width = axes[i, 2].imshow(hi[i] - lo[i], cmap="viridis")
        axes[i, 3].imshow(y[i], cmap="gray", vmin=0, vmax=vmax)
        overlay = np.zeros((*miss.shape, 4))
        overlay[miss] = (1, 0, 0, 0.9)
        axes[i, 3].imshow(overlay)
        fig.colorbar(err, ax=axes[i, 1], fraction=0.046)
        fig.colorbar(width, ax=axes[i, 2], fraction=0.046)
        name = f"{ids[i]}: " if ids is not None else ""
        for j, t in enumerate(titles):
            axes[i, j].set_title(
                f"{name}{t}" + (f" ({100 * miss.mean():.1f} %)" if j == 3 else ""), fontsize=8
            )
            axes[i, j].axis("off")
    fig.tight_layout()
    return fig
