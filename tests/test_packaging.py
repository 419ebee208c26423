"""The packaging files agree with each other: pyproject.toml, environment.yml, the CI pin."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11 reads TOML natively")
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
NAMED_PACKAGES = {
    "torch",
    "jupyterlab",
    "ipywidgets",
    "matplotlib",
    "seaborn",
    "numpy",
    "scipy",
    "papermill",
}


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def _all_requirements() -> set[str]:
    project = PYPROJECT["project"]
    names = _names(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        names |= _names(extra)
    return names


def test_named_packages_are_declared():
    missing = NAMED_PACKAGES - _all_requirements()
    assert not missing, f"pyproject.toml lacks {sorted(missing)}"


def test_dev_extra_pulls_in_the_other_extras():
    dev = " ".join(PYPROJECT["project"]["optional-dependencies"]["dev"])
    for extra in ("notebooks", "dicom"):
        assert extra in dev, f"dev extra does not include [{extra}]"


def test_torch_is_a_range_for_users_and_pinned_for_ci():
    torch_req = [r for r in PYPROJECT["project"]["dependencies"] if r.startswith("torch")]
    assert torch_req and "==" not in torch_req[0], "pyproject must keep a torch range"
    pins = (ROOT / ".ci" / "constraints.txt").read_text()
    assert re.search(r"^torch==\S+", pins, re.M), ".ci/constraints.txt must pin torch"


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python"))
    version = tuple(int(x) for x in python.split("=")[1].split("."))
    minimum = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert version >= tuple(int(x) for x in minimum.split(".")), "environment.yml python too old"
    assert "pip" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert any(re.fullmatch(r"-e \.\[dev\]", line) for line in pip_section), pip_section


def test_only_the_library_is_packaged():
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert include == ["darkfield_nb*"]


def test_console_script_points_at_cli_main():
    from darkfield_nb import cli

    target = PYPROJECT["project"]["scripts"]["darkfield-nb"]
    module, func = target.split(":")
    assert module == "darkfield_nb.cli" and callable(getattr(cli, func))


#: Import names of distributions whose names differ from them.
IMPORT_NAMES = {
    "scikit-learn": "sklearn",
    "scikit-image": "skimage",
    "uncertainty-toolbox": "uncertainty_toolbox",
    "pyyaml": "yaml",
}

SHIPPED_MODEL_RUN = """
import importlib.abc, sys
blocked = set(sys.argv[1].split(","))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is not a base dependency")

sys.meta_path.insert(0, Block())
import numpy as np
from darkfield_nb.inference import load_model
from darkfield_nb.synthesis import synthesize
loaded = load_model()
assert loaded.recalibration is not None and loaded.detector is not None
out = synthesize(loaded.model, np.random.default_rng(0).random((64, 64)), samples=2)
print(out.scale, out.ood_flag)
"""


def test_the_shipped_model_runs_with_the_base_dependencies_only():
    """The README's first command installs no extra: loading the shipped model (with its
    recalibration and OOD detector) and synthesizing must not import any package that only an
    extra declares (scikit-learn was one, through the isotonic recalibration)."""
    project = PYPROJECT["project"]
    base = _names(project["dependencies"])
    extras = set().union(*(_names(e) for e in project["optional-dependencies"].values()))
    blocked = {IMPORT_NAMES.get(n, n.replace("-", "_")) for n in extras - base - {"darkfield-nb"}}
    assert "sklearn" not in blocked and "skimage" in blocked
    run = subprocess.run(
        [sys.executable, "-c", SHIPPED_MODEL_RUN, ",".join(sorted(blocked))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
