"""Where things live (``darkfield_nb.paths``): defaults, environment overrides, user paths, and a
notebook run from directories other than ``notebooks/``.

The reference for every default is this file's own location (``tests/`` sits in the repository
root), not ``repo_root()``, so a wrong ``repo_root`` cannot make the defaults agree with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from darkfield_nb import paths

REPO = Path(__file__).resolve().parents[1]
ENV_VARS = ("DARKFIELD_NB_SAMPLES", "DARKFIELD_NB_RUNS", "DARKFIELD_NB_REAL_CXR")


@pytest.fixture
def clean_env(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_are_beside_the_package(clean_env, tmp_path):
    clean_env.chdir(tmp_path)  # the defaults must not depend on the working directory
    assert paths.repo_root() == REPO
    assert paths.sample_data_dir() == REPO / "data_samples"
    assert paths.pretrained_checkpoint() == REPO / "data_samples" / "pretrained.pt"
    assert paths.runs_dir() == REPO / "runs"
    # the meaning tests/test_io.py gives the real radiographs' folder
    assert paths.real_cxr_dir() == REPO.parent / "shared" / "real_cxr"
    for p in (paths.sample_data_dir(), paths.runs_dir(), paths.real_cxr_dir()):
        assert p.is_absolute()


def test_environment_overrides(clean_env, tmp_path):
    clean_env.setenv("DARKFIELD_NB_SAMPLES", str(tmp_path / "samples"))
    clean_env.setenv("DARKFIELD_NB_RUNS", str(tmp_path / "runs"))
    clean_env.setenv("DARKFIELD_NB_REAL_CXR", str(tmp_path / "cxr"))
    assert paths.sample_data_dir() == tmp_path / "samples"
    assert paths.pretrained_checkpoint() == tmp_path / "samples" / "pretrained.pt"
    assert paths.runs_dir() == tmp_path / "runs"
    assert paths.real_cxr_dir() == tmp_path / "cxr"


def test_empty_environment_variable_means_the_default(clean_env):
    for name in ENV_VARS:
        clean_env.setenv(name, "")
    assert paths.sample_data_dir() == REPO / "data_samples"
    assert paths.runs_dir() == REPO / "runs"
    assert paths.real_cxr_dir() == REPO.parent / "shared" / "real_cxr"


def test_environment_path_expands_the_home_folder(clean_env, tmp_path):
    clean_env.setenv("HOME", str(tmp_path))
    clean_env.setenv("DARKFIELD_NB_RUNS", "~/my_runs")
    assert paths.runs_dir() == tmp_path / "my_runs"


def test_resolve_empty_means_the_default(tmp_path):
    assert paths.resolve("", tmp_path / "d") == tmp_path / "d"
    assert paths.resolve(None, str(tmp_path / "d")) == tmp_path / "d"
    assert isinstance(paths.resolve(None, str(tmp_path)), Path)


def test_resolve_relative_user_path_is_against_the_working_directory(clean_env, tmp_path):
    clean_env.chdir(tmp_path)
    clean_env.setenv("DARKFIELD_NB_RUNS", "/elsewhere")  # a user's path ignores the overrides
    assert paths.resolve("out/run1", paths.runs_dir()) == tmp_path / "out" / "run1"
    assert paths.resolve(Path("x"), "unused") == tmp_path / "x"
    assert paths.resolve(str(REPO / "data_samples"), "unused") == REPO / "data_samples"


# --- notebook 02 run with the papermill command line from outside notebooks/ ---------------------


def _files(root: Path) -> set[Path]:
    skip = {".git", "__pycache__", ".venv", ".ipynb_checkpoints", ".pytest_cache", ".ruff_cache"}
    found = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip]
        found.update(Path(folder, f).relative_to(root) for f in files)
    return found


@pytest.mark.notebooks
@pytest.mark.parametrize("where", ["repository root", "unrelated folder"])
def test_notebook_runs_from_anywhere(where, tmp_path):
    pytest.importorskip("papermill", reason="install the 'notebooks' extra")
    runs, work = tmp_path / "runs", tmp_path / "work"
    work.mkdir()
    cwd = REPO if where == "repository root" else work
    notebook = Path("notebooks/02_generalized_gaussian.ipynb")
    if cwd != REPO:
        notebook = REPO / notebook
    out = tmp_path / "out.ipynb"
    env = {**os.environ, "DARKFIELD_NB_RUNS": str(runs)}
    before = _files(REPO)
    cmd = [sys.executable, "-m", "papermill", str(notebook), str(out), "-p", "preset", "smoke"]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"papermill from the {where} failed:\n{done.stderr[-3000:]}"
    figures = sorted(p.name for p in (runs / "02_ggd").glob("*.png"))
    assert figures, f"no figures written to {runs / '02_ggd'}"
    assert _files(REPO) == before, f"files appeared in the repository: {_files(REPO) - before}"
    assert list(work.iterdir()) == []  # nothing written into the working folder either


@pytest.mark.notebooks
def test_notebook_relative_run_dir_is_against_the_working_directory(tmp_path):
    pytest.importorskip("papermill", reason="install the 'notebooks' extra")
    notebook = REPO / "notebooks" / "02_generalized_gaussian.ipynb"
    env = {**os.environ, "DARKFIELD_NB_RUNS": str(tmp_path / "not_used")}
    cmd = [sys.executable, "-m", "papermill", str(notebook), "out.ipynb", "-p", "preset", "smoke"]
    cmd += ["-p", "run_dir", "mine"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"papermill failed:\n{done.stderr[-3000:]}"
    assert sorted((tmp_path / "mine" / "02_ggd").glob("*.png")), "figures not under cwd/mine"
    assert not (tmp_path / "not_used").exists()
