"""Image panels: radiographs beside dark-field images and their uncertainty maps.

One colour convention everywhere, so panels can be compared across notebooks: attenuation in
grey (as a radiologist sees it), dark-field D in ``magma`` on a fixed 0..``D_MAX`` scale, standard
deviations in ``viridis``, each map from 0 to its own 99th percentile (epistemic sigma is often
a hundred times smaller than aleatoric sigma: on one shared scale it would be invisible; read
the colour bars).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

D_MAX = 0.6  # top of the dark-field colour scale (D units; simulated lungs reach about 0.5)
D_CMAP = "magma"
SIGMA_CMAP = "viridis"


def _np(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().float().cpu().numpy()
    a = np.asarray(a, dtype=np.float32)
    return a.reshape(a.shape[-2:])


def _show(ax, image, title: str, cmap: str, vmin=None, vmax=None, colorbar: bool = True):
    im = ax.imshow(_np(image), cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    return im


def show_pairs(items: Sequence[dict], titles: Sequence[str] | None = None, mask_bit: int = 0):
    """Attenuation (top) and dark-field (bottom) for ``PairedDataset`` items, one column each.

    ``mask_bit`` (e.g. ``labels.LUNG``) outlines that label of each item's mask in cyan.
    """
    n = len(items)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.2), squeeze=False)
    for j, item in enumerate(items):
        title = titles[j] if titles else str(item.get("id", j))
        _show(axes[0, j], item["input"], title, "gray", colorbar=False)
        _show(axes[1, j], item["target"], "dark-field D", D_CMAP, 0.0, D_MAX)
        if mask_bit and "mask" in item:
            outline = (_np(item["mask"]).astype(np.int64) & mask_bit) > 0
            for ax in axes[:, j]:
                ax.contour(outline, levels=[0.5], colors="cyan", linewidths=0.6)
    fig.tight_layout()
    return fig


def _sigma_max(sigma) -> float:
    return float(max(np.percentile(_np(sigma), 99), 1e-9))


def case_panel(
    radiograph,
    stage_means: Sequence,
    aleatoric,
    epistemic,
    target=None,
    title: str = "",
    mean_labels: Sequence[str] | None = None,
):
    """One row: input, target (if known), each stage's mean (labelled ``stage k`` unless
    ``mean_labels`` says otherwise), aleatoric and epistemic sigma (each on its own scale)."""
    panels = [("input", radiograph, "gray", None, None)]
    if target is not None:
        panels.append(("target D", target, D_CMAP, 0.0, D_MAX))
    labels = mean_labels or [f"stage {k + 1}" for k in range(len(stage_means))]
    for label, mean in zip(labels, stage_means, strict=True):
        panels.append((label, mean, D_CMAP, 0.0, D_MAX))
    panels.append(("aleatoric sigma", aleatoric, SIGMA_CMAP, 0.0, _sigma_max(aleatoric)))
    panels.append(("epistemic sigma", epistemic, SIGMA_CMAP, 0.0, _sigma_max(epistemic)))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 2.8), squeeze=False)
    for ax, (name, image, cmap, vmin, vmax) in zip(axes[0], panels, strict=True):
        _show(ax, image, name, cmap, vmin, vmax, colorbar=cmap != "gray")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def synthesis_panel(radiograph, synthesis, target=None, title: str = ""):
    """A synthesized image (``darkfield_nb.synthesis.Synthesis``) beside its radiograph."""
    return case_panel(
        radiograph,
        [synthesis.darkfield],
        synthesis.aleatoric,
        synthesis.epistemic,
        target=target,
        title=title,
        mean_labels=["synthesized D"],
    )


def plot_history(history: Sequence[dict], keys: Sequence[str] = ("train_l1", "val_l1", "val_ssim")):
    """Training curves: one panel per key over the run's epochs, a dashed line where a new
    stage starts (``history`` as written by ``darkfield_nb.train``)."""
    if not history:
        raise ValueError("plot_history: the history is empty")
    x = np.arange(1, len(history) + 1)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 2.8), squeeze=False)
    starts = [
        i + 1 for i in range(1, len(history)) if history[i]["stage"] != history[i - 1]["stage"]
    ]
    for ax, key in zip(axes[0], keys, strict=True):
        ax.plot(x, [float(h.get(key, np.nan)) for h in history], marker=".", lw=1)
        for s in starts:
            ax.axvline(s - 0.5, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("epoch (all stages)")
        ax.set_title(key, fontsize=9)
    fig.tight_layout()
    return fig


def attention_figure(radiograph, previous_mean, gate, stage: int):
    """What stage ``stage + 1`` is guided by: the input, stage ``stage``'s mean (1-based label)
    and its normalized aleatoric sigma ``gate`` (``ProgressiveGenerator.attention_map``, mean 1),
    each with its own colour bar; the gate in ``viridis`` on its full range."""
    panels = [
        ("input", radiograph, "gray"),
        (f"stage {stage} mean", previous_mean, D_CMAP),
        (f"stage {stage} normalized sigma", gate, SIGMA_CMAP),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    for ax, (name, image, cmap) in zip(axes, panels, strict=True):
        _show(ax, image, name, cmap)
    return fig


def first_of_each_case(
    rows: Sequence[dict], *, by_split: bool = False, limit: int | None = None
) -> list[int]:
    """Indices of the first row of each case, in order of first appearance (at most ``limit``).

    A row's case is its ``case`` column, or its ``split`` where there is no such column; with
    ``by_split`` the same case in two splits (e.g. emphysema in ``train`` and ``ood``) counts
    twice. ``rows`` as ``PairedDataset.rows``.
    """
    first: dict = {}
    for i, row in enumerate(rows):
        case = row.get("case", row["split"])
        first.setdefault((row["split"], case) if by_split else case, i)
    return list(first.values())[:limit]
