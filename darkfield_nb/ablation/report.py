"""Collect an ablation's runs into a tidy table and a summary figure.

The table has one row per run: ``run``, ``experiment``, ``status`` ("done", "failed",
"missing"), ``error``, one column per factor (its level label), ``seed``, every parameter
(prefixed ``param_``), and every scalar figure of merit of the run's ``results.json``
(per-stage lists become ``mse_stage1``, ``mse_stage2``, ...).

The figure plots each metric (rows) against each factor of each experiment (columns): the
seeds as points, and their mean with one standard deviation as a bar (seaborn). The markdown
table gives, per experiment and level, each metric's mean and sample standard deviation over the
completed seeds, ``mean +/- sd`` with ``sd = sqrt(sum (x - mean)^2 / (n - 1))``, and how many
seeds completed out of how many were run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from darkfield_nb.io import atomic_path

from .grid import Run
from .runner import ERROR, RESULTS, Outcome, is_complete, run_dir

SUMMARY_METRICS = (
    "ssim",
    "psnr",
    "mse",
    "coverage_90",
    "nll",
    "spearman_sigma_error",
    "auroc_epistemic",
    "auroc_total",
)


def _flatten(record: dict) -> dict:
    row = {}
    for key, value in record.items():
        if key in ("params", "run"):
            continue
        if isinstance(value, (int, float)) or value is None:
            row[key] = value
        elif isinstance(value, list) and key.endswith("_per_stage"):
            base = key.removesuffix("_per_stage")
            for k, v in enumerate(value):
                row[f"{base}_stage{k + 1}"] = v
    return row


def collect(
    out: str | os.PathLike, runs: list[Run], outcomes: list[Outcome] | None = None
) -> pd.DataFrame:
    """One row per run of ``runs`` from the files under ``out`` (see the module docstring)."""
    by_name = {o.name: o for o in outcomes or []}
    rows = []
    for run in runs:
        folder = run_dir(out, run)
        row = {"run": run.name, "experiment": run.experiment, **run.factors, "seed": run.seed}
        row.update({f"param_{k}": v for k, v in run.params.items()})
        if is_complete(out, run):
            row["status"], row["error"] = "done", ""
            row.update(_flatten(json.loads((folder / RESULTS).read_text())))
        else:
            outcome = by_name.get(run.name)
            error = (
                (folder / ERROR).read_text().splitlines()[0] if (folder / ERROR).exists() else ""
            )
            row["status"] = (
                "failed" if (outcome and outcome.status == "failed") or error else "missing"
            )
            row["error"] = outcome.error if outcome and outcome.error else error
        rows.append(row)
    return pd.DataFrame(rows)


TABLE_METRICS = ("ssim", "mse", "coverage_90", "nll", "spearman_sigma_error", "auroc_total")


def summary_table(frame: pd.DataFrame, runs: list[Run], metrics=TABLE_METRICS) -> str:
    """A markdown table: one row per (experiment, factor level), ``mean +/- sd`` of each metric
    over the completed seeds (sd with n - 1; "-" for one seed) and ``done / run`` seeds."""
    metrics = [m for m in metrics if m in frame]
    lines = [
        "| experiment | level | seeds done | " + " | ".join(metrics) + " |",
        "|---" * (3 + len(metrics)) + "|",
    ]
    seen = []
    for run in runs:
        for factor, level in run.factors.items():
            if (run.experiment, factor, level) not in seen:
                seen.append((run.experiment, factor, level))
    for exp, factor, level in seen:
        rows = frame[(frame["experiment"] == exp) & (frame[factor] == level)]
        done = rows[rows["status"] == "done"]
        cells = []
        for m in metrics:
            values = done[m].dropna()
            if values.empty:
                cells.append("")
            elif len(values) == 1:
                cells.append(f"{values.iloc[0]:.4g} +/- -")
            else:
                cells.append(f"{values.mean():.4g} +/- {values.std(ddof=1):.2g}")
        lines.append(f"| {exp} | {level} | {len(done)} / {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_figure(
    frame: pd.DataFrame, runs: list[Run], path: str | os.PathLike, metrics=SUMMARY_METRICS
) -> Path | None:
    """Save the metric-by-factor figure to ``path`` (PNG); None when no run is done."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import seaborn as sns

    done = frame[frame["status"] == "done"] if "status" in frame else frame.iloc[0:0]
    metrics = [m for m in metrics if m in done and done[m].notna().any()]
    panels = []  # (experiment, factor)
    for run in runs:
        for f in run.factors:
            if (run.experiment, f) not in panels:
                panels.append((run.experiment, f))
    if done.empty or not metrics or not panels:
        return None
    fig, axes = plt.subplots(
        len(metrics), len(panels), figsize=(3.2 * len(panels), 2.4 * len(metrics)), squeeze=False
    )
    for j, (exp, factor) in enumerate(panels):
        sub = done[(done["experiment"] == exp) & done[factor].notna()]
        order = list(dict.fromkeys(r.factors[factor] for r in runs if factor in r.factors))
        for i, metric in enumerate(metrics):
            ax = axes[i, j]
            data = sub[[factor, metric]].dropna()
            if not data.empty:  # the runs as dots, their mean +- sd as a bar over them
                where = {"data": data, "x": factor, "y": metric, "order": order, "ax": ax}
                sns.stripplot(**where, color="0.35", size=4, jitter=0.15)
                sns.pointplot(
                    **where, errorbar="sd", color="C3", markers="_", linestyles="none", capsize=0.2
                )
            ax.set_xlabel(factor if i == len(metrics) - 1 else "")
            ax.set_ylabel(metric if j == 0 else "")
            if i == 0:
                ax.set_title(f"{exp}: {factor}" if exp else factor, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
