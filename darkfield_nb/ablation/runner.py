"""Run an ablation grid through papermill, resumably, and collect the results.

``darkfield-nb ablate --grid GRID.yaml --out DIR [--jobs N] [--dry-run]`` (:func:`main`) lays
out ``DIR`` as::

    DIR/runs/<run name>/executed.ipynb   the executed notebook (kept also when it failed)
    DIR/runs/<run name>/results.json     its figures of merit plus "params" and "run"
    DIR/runs/<run name>/error.txt        why the last attempt failed (removed on success)
    DIR/runs/<run name>/params.json      the parameters of the last attempt (a change of
                                         parameters discards the old training folder)
    DIR/runs/<run name>/ablation_train/  what the notebook trained
    DIR/ablation_data/                   simulated data shared by the runs
    DIR/results.csv, DIR/summary.png     one row per run; metrics against each factor
    DIR/summary.md                       mean +/- sd over seeds per experiment and level

A run is complete when its ``results.json`` exists and records exactly the run's parameters; a
complete run is skipped, any other (never run, failed, interrupted, parameters changed) is run
again after its old results file is removed. ``results.json`` is written atomically (by the
notebook, then once more here with the parameters added), so an interrupted run never looks
complete. A failing run is reported and the others go on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from darkfield_nb.io import atomic_write_text
from darkfield_nb.paths import repo_root

from .experiment import DATA_DIR, TRAIN_DIR
from .grid import Run, load_grid

RESULTS = "results.json"
EXECUTED = "executed.ipynb"
ERROR = "error.txt"
PARAMS = "params.json"
DEFAULT_NOTEBOOK = "11_ablation.ipynb"
CELL_TIMEOUT_S = 3600


@dataclass
class Outcome:
    """What happened to one run: status "done", "skipped" or "failed", seconds, error text."""

    name: str
    status: str
    seconds: float = 0.0
    error: str = ""


def run_dir(out: str | os.PathLike, run: Run) -> Path:
    return Path(out) / "runs" / run.name


def is_complete(out: str | os.PathLike, run: Run) -> bool:
    """True when the run's results file exists, parses and records the run's parameters."""
    path = run_dir(out, run) / RESULTS
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("params") == run.params


def execute_run(run: Run, out: str, notebook: str, cell_timeout: int = CELL_TIMEOUT_S) -> Outcome:
    """Execute ``notebook`` for one run with papermill (complete runs are skipped)."""
    import papermill

    if is_complete(out, run):
        return Outcome(run.name, "skipped")
    folder = run_dir(out, run)
    folder.mkdir(parents=True, exist_ok=True)
    results = folder / RESULTS
    results.unlink(missing_ok=True)
    stored = folder / PARAMS
    if stored.exists() and json.loads(stored.read_text()) != run.params:
        shutil.rmtree(folder / TRAIN_DIR, ignore_errors=True)  # trained with other parameters
    atomic_write_text(stored, json.dumps(run.params, indent=1, sort_keys=True))
    params = {
        **run.params,
        "run_dir": str(folder.resolve()),
        "results_path": str(results.resolve()),
        "data_cache": str((Path(out) / DATA_DIR).resolve()),
    }
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            notebook,
            str(folder / EXECUTED),
            parameters=params,
            cwd=str(Path(notebook).resolve().parent),
            kernel_name="python3",
            progress_bar=False,
            execution_timeout=cell_timeout,
        )
        record = json.loads(results.read_text())
        if not isinstance(record, dict):
            raise ValueError(f"{results}: expected a JSON object")
        record.update(params=run.params, run=run.name)
        atomic_write_text(results, json.dumps(record, indent=1))
        (folder / ERROR).unlink(missing_ok=True)
        return Outcome(run.name, "done", time.perf_counter() - start)
    except Exception as err:  # noqa: BLE001 - one failing run must not stop the others
        if isinstance(err, papermill.PapermillExecutionError):
            message = f"cell {err.cell_index}: {err.ename}: {err.evalue}"
        else:
            message = f"{type(err).__name__}: {err}\n{traceback.format_exc()}"
        atomic_write_text(folder / ERROR, message + "\n")
        return Outcome(run.name, "failed", time.perf_counter() - start, message.splitlines()[0])


def run_grid(
    runs: list[Run],
    out: str | os.PathLike,
    notebook: str | os.PathLike,
    *,
    jobs: int = 1,
    cell_timeout: int = CELL_TIMEOUT_S,
    log=print,
) -> list[Outcome]:
    """Execute every incomplete run (``jobs`` at a time, in separate processes when > 1)."""
    out, notebook = str(out), str(notebook)
    outcomes: list[Outcome] = []

    def report(o: Outcome) -> None:
        extra = f" ({o.seconds:.0f} s)" if o.status != "skipped" else ""
        log(f"[{len(outcomes)}/{len(runs)}] {o.status:>7} {o.name}{extra} {o.error}".rstrip())

    if jobs <= 1:
        for run in runs:
            outcomes.append(execute_run(run, out, notebook, cell_timeout))
            report(outcomes[-1])
        return outcomes
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(execute_run, r, out, notebook, cell_timeout) for r in runs]
        for run, fut in zip(runs, futures, strict=True):
            try:
                outcomes.append(fut.result())
            except Exception as err:  # noqa: BLE001 - a crashed worker fails its run only
                outcomes.append(Outcome(run.name, "failed", error=f"{type(err).__name__}: {err}"))
            report(outcomes[-1])
    return outcomes


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="darkfield-nb ablate",
        description="Run an ablation grid (YAML) through the ablation notebook with papermill.",
    )
    p.add_argument("--grid", required=True, help="grid YAML (fixed, factors, seeds)")
    p.add_argument("--out", required=True, help="output folder (resumed when it exists)")
    p.add_argument("--jobs", type=int, default=1, help="runs executed at once (default 1)")
    p.add_argument("--dry-run", action="store_true", help="print the runs and exit")
    p.add_argument(
        "--notebook",
        default=None,
        help=f"notebook to run (default: the grid's, else notebooks/{DEFAULT_NOTEBOOK})",
    )
    p.add_argument(
        "--cell-timeout",
        type=int,
        default=CELL_TIMEOUT_S,
        help=f"seconds one notebook cell may take (default {CELL_TIMEOUT_S})",
    )
    return p


def resolve_notebook(grid_path: Path, named: str | None, given: str | None) -> Path:
    """``--notebook``, else the grid's ``notebook`` (relative to the grid file, then to
    ``notebooks/``), else ``notebooks/11_ablation.ipynb`` of the repository."""
    if given:
        candidates = [Path(given)]
    elif named:
        candidates = [grid_path.parent / named, repo_root() / "notebooks" / named]
    else:
        candidates = [repo_root() / "notebooks" / DEFAULT_NOTEBOOK]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"{grid_path}: notebook not found (looked at {[str(c) for c in candidates]})"
    )


def main(argv: list[str] | None = None) -> int:
    """``darkfield-nb ablate``: 0 when every run is complete, 1 when any failed, 2 on bad input."""
    from .report import collect, summary_figure, summary_table

    args = _parser().parse_args(argv)
    grid_path = Path(args.grid)
    try:
        runs, named = load_grid(grid_path)
        notebook = resolve_notebook(grid_path, named, args.notebook)
    except (ValueError, FileNotFoundError) as err:
        print(f"darkfield-nb ablate: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.dry_run:
        print(f"{len(runs)} runs of {notebook} into {out}:")
        for r in runs:
            state = "complete" if is_complete(out, r) else "to run"
            print(f"  {r.name}  [{state}]  {json.dumps(r.params, sort_keys=True)}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    outcomes = run_grid(runs, out, notebook, jobs=args.jobs, cell_timeout=args.cell_timeout)
    frame = collect(out, runs, outcomes)
    csv_path = out / "results.csv"
    atomic_write_text(csv_path, frame.to_csv(index=False))
    figure = summary_figure(frame, runs, out / "summary.png")
    atomic_write_text(out / "summary.md", summary_table(frame, runs))
    failed = [o for o in outcomes if o.status == "failed"]
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    print(
        f"{counts['done']} run, {counts['skipped']} already complete, {counts['failed']} failed; "
        f"{csv_path}" + (f", {figure}" if figure else "")
    )
    for o in failed:
        print(f"FAILED {o.name}: {o.error} (see {run_dir(out, Run(o.name, '', {}, 0)) / ERROR})")
    return 1 if failed else 0
