"""The packaging files agree with each other: pyproject.toml, environment.yml, the CI pin."""

from __future__ import annotations

import re
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
