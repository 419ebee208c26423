"""The ablation runner: grid expansion, resume, failure isolation, the CSV; and one real run of
ablations/smoke.yaml through notebook 11. Most tests execute a tiny stand-in notebook that
counts its executions in a marker file, so resume can be checked by counting."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

papermill = pytest.importorskip("papermill", reason="install the 'notebooks' extra")
nbformat = pytest.importorskip("nbformat")

from darkfield_nb.ablation import (  # noqa: E402
    cached_dataset,
    expand_grid,
    load_grid,
    main,
    train_config,
)

ROOT = Path(__file__).resolve().parents[1]

STAND_IN = """\
import json
from pathlib import Path
with open(marker, "a") as fh:
    fh.write(f"x={x} seed={seed}\\n")
if x == fail_x:
    raise ValueError(f"bad parameter x={x}")
if crash_file and Path(crash_file).exists() and x == int(Path(crash_file).read_text()):
    raise RuntimeError("simulated crash")
Path(results_path).write_text(json.dumps({"score": 10 * x + seed, "per": [x, x + 1]}))
"""


@pytest.fixture
def stand_in(tmp_path) -> Path:
    from nbformat.v4 import new_code_cell, new_notebook

    params = new_code_cell(
        'x: int = 0\nseed: int = 0\nmarker: str = ""\nfail_x: int = -1\ncrash_file: str = ""\n'
        'run_dir: str = ""\nresults_path: str = ""\ndata_cache: str = ""'
    )
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[params, new_code_cell(STAND_IN)])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path = tmp_path / "stand_in.ipynb"
    nbformat.write(nb, path)
    return path


def _grid(tmp_path, notebook, **fixed) -> Path:
    grid = {
        "notebook": str(notebook),
        "fixed": {"marker": str(tmp_path / "marker.txt"), **fixed},
        "factors": {"x": [1, 2]},
        "seeds": [0],
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def _executions(tmp_path) -> list[str]:
    marker = tmp_path / "marker.txt"
    return marker.read_text().splitlines() if marker.exists() else []


def test_grid_expands_to_the_cartesian_product_with_seeds():
    runs = expand_grid(
        {
            "fixed": {"epochs": 2},
            "factors": {"a": [1, 2], "b": ["u", "v", "w"]},
            "seeds": [0, 1],
        }
    )
    assert len(runs) == 2 * 3 * 2
    assert len({r.name for r in runs}) == 12
    first = runs[0]
    assert first.name == "a=1__b=u__seed=0"
    assert first.params == {"epochs": 2, "a": 1, "b": "u", "seed": 0}
    assert {(r.params["a"], r.params["b"], r.seed) for r in runs} == {
        (a, b, s) for a in (1, 2) for b in "uvw" for s in (0, 1)
    }
    assert [r.name for r in runs] == [
        r.name
        for r in expand_grid(
            {
                "fixed": {"epochs": 2},
                "factors": {"a": [1, 2], "b": ["u", "v", "w"]},
                "seeds": [0, 1],
            }
        )
    ]  # stable


def test_grid_experiments_and_mapping_levels():
    runs = expand_grid(
        {
            "fixed": {"epochs": 1, "n_stages": 3},
            "seeds": [0, 1, 2],
            "experiments": {
                "arch": {
                    "factors": {
                        "architecture": [
                            {"name": "prog", "n_stages": 3, "base_width": 8},
                            {"name": "single", "n_stages": 1, "base_width": 14, "epochs": 3},
                        ]
                    }
                },
                "loss": {
                    "fixed": {"epochs": 2},
                    "factors": {"loss": ["exact", "surrogate"]},
                    "seeds": [5],
                },
            },
        }
    )
    arch = [r for r in runs if r.experiment == "arch"]
    assert len(arch) == 6 and len([r for r in runs if r.experiment == "loss"]) == 2
    single = next(r for r in arch if r.factors["architecture"] == "single")
    assert single.params == {"epochs": 3, "n_stages": 1, "base_width": 14, "seed": 0}
    assert single.name == "arch__architecture=single__seed=0"
    loss = [r for r in runs if r.experiment == "loss"]
    assert all(r.params["epochs"] == 2 and r.seed == 5 for r in loss)


@pytest.mark.parametrize(
    "grid, message",
    [
        ({"factor": {"a": [1]}}, "unknown key"),
        ({"factors": {"a": []}}, "non-empty list"),
        ({"factors": {"a": [1, 1]}}, "repeated levels"),
        ({"factors": {"a": [{"b": 1}]}}, "needs a 'name'"),
        ({"factors": {"a": [1]}, "seeds": ["x"]}, "seeds"),
    ],
)
def test_bad_grids_are_refused(grid, message):
    with pytest.raises(ValueError, match=message):
        expand_grid(grid, where="g.yaml")


def test_shipped_grids_use_only_notebook_parameters():
    declared = set(papermill.inspect_notebook(str(ROOT / "notebooks" / "11_ablation.ipynb")))
    paper, nb = load_grid(ROOT / "ablations" / "paper.yaml")
    smoke, _ = load_grid(ROOT / "ablations" / "smoke.yaml")
    assert nb == "11_ablation.ipynb" and len(smoke) == 2
    for run in paper + smoke:
        assert set(run.params) <= declared, set(run.params) - declared
    by_exp: dict[str, set] = {}
    for run in paper:
        by_exp.setdefault(run.experiment, set()).add(run.seed)
    assert set(by_exp) == {"progressive", "conditioning", "loss"}
    assert all(len(seeds) >= 3 for seeds in by_exp.values())
    for run in paper:  # every point builds a valid training config
        keys = (
            "n_stages",
            "base_width",
            "depth",
            "conditioning",
            "loss",
            "dropout",
            "dropout_stages",
            "epochs",
            "batch_size",
            "lr",
            "steps_per_epoch",
            "seed",
        )
        train_config(**{k: run.params[k] for k in keys})


def test_equal_parameters_in_the_progressive_experiment():
    from darkfield_nb.models import build_generator

    runs, _ = load_grid(ROOT / "ablations" / "paper.yaml")
    counts = {}
    for run in runs:
        if run.experiment == "progressive" and run.seed == 0:
            cfg = train_config(
                n_stages=run.params["n_stages"],
                base_width=run.params["base_width"],
                depth=run.params["depth"],
            )
            counts[run.factors["architecture"]] = sum(
                p.numel() for p in build_generator(cfg.model).parameters()
            )
    a, b = counts.values()
    assert abs(a - b) / a < 0.03, counts


def test_train_config_maps_the_factors():
    assert train_config(loss="surrogate").ggd_kind == "surrogate"
    assert train_config(lr=3e-4, epochs=4).stages[0].lr == 3e-4
    g = train_config(loss="gaussian").model
    assert g.beta_min < 2.0 < g.beta_max and g.beta_max - g.beta_min <= 2e-3
    lap = train_config(loss="laplace").model
    assert lap.beta_min < 1.0 < lap.beta_max
    assert train_config(conditioning="attention").model.conditioning == "attention"
    assert train_config(dropout_stages="all", n_stages=2).model.resolved_dropout_stages() == (0, 1)
    with pytest.raises(ValueError, match="conditioning='none' is not supported"):
        train_config(conditioning="none")
    with pytest.raises(ValueError, match="loss='huber'"):
        train_config(loss="huber")


def test_dry_run_lists_and_executes_nothing(tmp_path, stand_in, capsys):
    assert (
        main(["--grid", str(_grid(tmp_path, stand_in)), "--out", str(tmp_path / "o"), "--dry-run"])
        == 0
    )
    out = capsys.readouterr().out
    assert "2 runs" in out and "x=1__seed=0" in out and "x=2__seed=0" in out
    assert _executions(tmp_path) == [] and not (tmp_path / "o").exists()


def test_resume_runs_each_point_once(tmp_path, stand_in):
    crash = tmp_path / "crash"
    crash.write_text("2")  # point x=2 crashes, after point x=1 has finished
    grid = _grid(tmp_path, stand_in, crash_file=str(crash))
    out = tmp_path / "out"
    assert main(["--grid", str(grid), "--out", str(out)]) == 1
    assert _executions(tmp_path) == ["x=1 seed=0", "x=2 seed=0"]
    assert not (out / "runs" / "x=2__seed=0" / "results.json").exists()
    crash.unlink()
    assert main(["--grid", str(grid), "--out", str(out)]) == 0  # both done now
    assert _executions(tmp_path) == ["x=1 seed=0", "x=2 seed=0", "x=2 seed=0"]
    record = json.loads((out / "runs" / "x=2__seed=0" / "results.json").read_text())
    assert record["params"]["x"] == 2 and record["score"] == 20
    assert not (out / "runs" / "x=2__seed=0" / "error.txt").exists()
    # complete runs are skipped; one whose results were lost (killed mid-run) is run again
    (out / "runs" / "x=1__seed=0" / "results.json").unlink()
    assert main(["--grid", str(grid), "--out", str(out)]) == 0
    assert _executions(tmp_path).count("x=1 seed=0") == 2 and len(_executions(tmp_path)) == 4
    assert list(pd.read_csv(out / "results.csv")["status"]) == ["done", "done"]
    # a changed parameter makes every point stale
    grid_full = yaml.safe_load(grid.read_text())
    grid_full["fixed"]["fail_x"] = 99
    grid.write_text(yaml.safe_dump(grid_full))
    assert main(["--grid", str(grid), "--out", str(out)]) == 0
    assert len(_executions(tmp_path)) == 6


def test_a_failing_point_does_not_stop_the_other(tmp_path, stand_in, capsys):
    grid = _grid(tmp_path, stand_in, fail_x=1)
    out = tmp_path / "out"
    assert main(["--grid", str(grid), "--out", str(out), "--jobs", "2"]) == 1
    assert "FAILED x=1__seed=0" in capsys.readouterr().out
    frame = pd.read_csv(out / "results.csv").set_index("run")
    assert frame.loc["x=1__seed=0", "status"] == "failed"
    assert "bad parameter x=1" in frame.loc["x=1__seed=0", "error"]
    assert frame.loc["x=2__seed=0", "status"] == "done"
    assert frame.loc["x=2__seed=0", "score"] == 20
    failed = out / "runs" / "x=1__seed=0"
    assert (failed / "executed.ipynb").exists() and "bad parameter" in (
        failed / "error.txt"
    ).read_text()
    assert not (failed / "results.json").exists()


def test_csv_has_one_row_per_run_with_factors_params_and_metrics(tmp_path, stand_in):
    grid = yaml.safe_load(_grid(tmp_path, stand_in).read_text())
    grid["seeds"] = [0, 1]
    path = tmp_path / "g2.yaml"
    path.write_text(yaml.safe_dump(grid))
    out = tmp_path / "out"
    assert main(["--grid", str(path), "--out", str(out)]) == 0
    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == 4
    for _, row in frame.iterrows():
        assert row["score"] == 10 * row["x"] + row["seed"]
        assert row["param_x"] == row["x"] and row["param_seed"] == row["seed"]
        assert row["status"] == "done"
    assert {"run", "experiment", "x", "seed", "param_marker", "score"} <= set(frame.columns)
    assert "per" not in frame.columns  # lists other than *_per_stage are left out
    assert not (out / "summary.png").exists()  # no known metric in the stand-in's results


def test_cached_dataset_is_simulated_once(tmp_path):
    a = cached_dataset(tmp_path, 6, 32, 0, 1)
    stamp = (a / "manifest.csv").stat().st_mtime_ns
    b = cached_dataset(tmp_path, 6, 32, 0, 1)
    assert a == b and (b / "manifest.csv").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.slow
def test_smoke_grid_through_notebook_11(tmp_path):
    """ablations/smoke.yaml for real: both points train, evaluate and land in the CSV."""
    out = tmp_path / "smoke"
    assert main(["--grid", str(ROOT / "ablations" / "smoke.yaml"), "--out", str(out)]) == 0
    frame = pd.read_csv(out / "results.csv").set_index("n_stages")
    assert list(frame.index) == [1, 2] and set(frame["status"]) == {"done"}
    for col in ("mse", "psnr", "ssim", "coverage_90", "nll", "auroc_epistemic"):
        assert frame[col].notna().all(), col
    assert frame["mse"].between(0, 10).all() and frame["coverage_90"].between(0, 1).all()
    assert pd.isna(frame.loc[1, "mse_stage2"]) and frame.loc[2, "mse_stage2"] == frame.loc[2, "mse"]
    assert frame.loc[2, "n_parameters"] > frame.loc[1, "n_parameters"]
    assert (out / "summary.png").stat().st_size > 10_000


def test_cli_hands_ablate_to_the_ablation_runner(tmp_path, capsys):
    """`darkfield-nb ablate ... --dry-run` lists the smoke grid's two runs, nothing executed."""
    from darkfield_nb.cli import main

    grid = Path(__file__).resolve().parents[1] / "ablations" / "smoke.yaml"
    assert main(["ablate", "--grid", str(grid), "--out", str(tmp_path / "a"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 runs of ") and out.count("[to run]") == 2
    assert not (tmp_path / "a").exists()


def test_summary_table_gives_mean_and_sample_sd_over_completed_seeds():
    """Hand-built frame: level a has seeds 0-2 done, level b one done and one failed."""
    import numpy as np

    from darkfield_nb.ablation.grid import Run
    from darkfield_nb.ablation.report import summary_table

    runs = [Run(f"e__x={lv}__seed={s}", "e", {"x": lv}, s) for lv in ("a", "b") for s in (0, 1, 2)]
    ssim = {("a", 0): 0.40, ("a", 1): 0.46, ("a", 2): 0.49, ("b", 0): 0.30}
    rows = []
    for r in runs:
        key = (r.factors["x"], r.seed)
        done = key in ssim
        rows.append(
            {"experiment": "e", "x": r.factors["x"], "seed": r.seed,
             "status": "done" if done else "failed", "ssim": ssim.get(key)}
        )  # fmt: skip
    table = summary_table(pd.DataFrame(rows[:5]), runs, metrics=("ssim",))
    a = np.array([0.40, 0.46, 0.49])
    lines = table.strip().splitlines()
    assert lines[0] == "| experiment | level | seeds done | ssim |"
    assert lines[2] == f"| e | a | 3 / 3 | {a.mean():.4g} +/- {a.std(ddof=1):.2g} |"
    assert lines[3] == "| e | b | 1 / 2 | 0.3 +/- - |"
