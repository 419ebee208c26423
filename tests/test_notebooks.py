"""Execute every ``notebooks/NN_*.ipynb`` in numbered order with papermill at its smoke preset.

All notebooks share one temporary run folder, so a later notebook finds what an earlier one left
(checkpoints, predictions). Each notebook writes its figures of merit to ``<run>/<name>.json``
when given ``results_path``. A failing cell fails the test with the notebook and cell named.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

papermill = pytest.importorskip("papermill", reason="install the 'notebooks' extra")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
TIMEOUT_S = 300  # per notebook, at the smoke preset on 2 CPU cores

pytestmark = pytest.mark.notebooks


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("notebook_run")


def _failing_cell(nb_path: Path) -> str:
    """Describe the first cell of an executed notebook that holds an error output."""
    nb = json.loads(nb_path.read_text())
    for index, cell in enumerate(nb["cells"]):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                source = "".join(cell["source"]).strip().splitlines()
                first = source[0] if source else ""
                return (
                    f"cell {index} (execution count {cell.get('execution_count')}, "
                    f"starts {first!r}): {output['ename']}: {output['evalue']}"
                )
    return "no cell holds an error output"


def test_notebooks_are_numbered_uniquely():
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"
    assert len(numbers) == len(set(numbers)), f"duplicate notebook numbers: {numbers}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_at_smoke_preset(notebook: Path, run_dir: Path):
    out = run_dir / f"{notebook.stem}.out.ipynb"
    results = run_dir / f"{notebook.stem}.json"
    params = {"preset": "smoke", "run_dir": str(run_dir), "results_path": str(results)}
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(notebook),
            str(out),
            parameters=params,
            cwd=str(NOTEBOOK_DIR),
            kernel_name="python3",
            progress_bar=False,
            execution_timeout=TIMEOUT_S,
        )
    except papermill.PapermillExecutionError:
        pytest.fail(f"{notebook.name}: {_failing_cell(out)}", pytrace=False)
    elapsed = time.perf_counter() - start
    assert elapsed < TIMEOUT_S, f"{notebook.name} took {elapsed:.0f} s (budget {TIMEOUT_S} s)"
    if results.exists():
        json.loads(results.read_text())  # a results file, when written, must be valid JSON


def test_a_failing_cell_is_named(tmp_path):
    """The harness's own failure path: a notebook whose second code cell raises is reported
    with that cell's index, its first line and the exception."""
    nbformat = pytest.importorskip("nbformat")
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(
        cells=[new_code_cell("x = 1"), new_code_cell("# boom\nraise ValueError('bad')")]
    )
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    src, out = tmp_path / "fail.ipynb", tmp_path / "fail.out.ipynb"
    nbformat.write(nb, src)
    with pytest.raises(papermill.PapermillExecutionError):
        papermill.execute_notebook(str(src), str(out), kernel_name="python3", progress_bar=False)
    message = _failing_cell(out)
    assert message.startswith("cell ") and "'# boom'" in message and "ValueError: bad" in message
