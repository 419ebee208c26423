"""Ablation grids: a YAML file of fixed parameters and factors expands into named runs.

A grid file holds one experiment::

    notebook: 11_ablation.ipynb        # optional; default notebooks/11_ablation.ipynb
    fixed: {epochs: 2, image_size: 64}  # parameters of every run
    factors:                            # the cartesian product of these lists
      conditioning: [concat, attention]
      loss: [exact, surrogate]
    seeds: [0, 1, 2]                    # every point once per seed (the ``seed`` parameter)

or several under ``experiments:`` (each with its own ``fixed``, ``factors`` and ``seeds``; a
top-level ``fixed`` and ``seeds`` apply to all, the experiment's own win). A factor level is
either a value (``loss: [exact, surrogate]`` sets the parameter ``loss``) or a mapping that sets
several parameters together, labelled by its ``name`` key::

    architecture:
      - {name: progressive, n_stages: 3, base_width: 16}
      - {name: single, n_stages: 1, base_width: 28}

Each run is named from its experiment, factor labels and seed
(``conditioning__conditioning=attention__loss=exact__seed=1``): the name is stable, so a rerun
finds the folder of an earlier one.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GRID_KEYS = {"notebook", "fixed", "factors", "seeds", "experiments"}
EXPERIMENT_KEYS = {"fixed", "factors", "seeds"}


@dataclass
class Run:
    """One point of a grid: its folder name, experiment, factor labels and notebook parameters."""

    name: str
    experiment: str
    factors: dict[str, Any]
    seed: int
    params: dict[str, Any] = field(default_factory=dict)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", str(text)).strip("-") or "x"


def _label(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _levels(where: str, factor: str, values: Any) -> list[tuple[str, dict[str, Any]]]:
    """(label, parameters) for every level of one factor."""
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where}: factor {factor!r} must be a non-empty list, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, dict):
            if "name" not in v:
                raise ValueError(f"{where}: a mapping level of factor {factor!r} needs a 'name'")
            params = {k: x for k, x in v.items() if k != "name"}
            out.append((_label(v["name"]), params))
        else:
            out.append((_label(v), {factor: v}))
    labels = [lab for lab, _ in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{where}: factor {factor!r} has repeated levels {labels}")
    return out


def _seeds(where: str, seeds: Any) -> list[int]:
    seeds = [0] if seeds is None else seeds
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"{where}: seeds must be a non-empty list of integers, got {seeds!r}")
    return seeds


def expand_grid(grid: dict, where: str = "grid") -> list[Run]:
    """Every run of a grid mapping (see the module docstring), in a deterministic order."""
    if not isinstance(grid, dict):
        raise ValueError(f"{where}: expected a mapping at the top level")
    unknown = sorted(set(grid) - GRID_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(GRID_KEYS)}")
    fixed_all = dict(grid.get("fixed") or {})
    if "experiments" in grid:
        if "factors" in grid:
            raise ValueError(f"{where}: give either 'factors' or 'experiments', not both")
        experiments = grid["experiments"]
        if not isinstance(experiments, dict) or not experiments:
            raise ValueError(f"{where}: 'experiments' must be a non-empty mapping")
    else:
        experiments = {"": {"factors": grid.get("factors") or {}}}
    runs: list[Run] = []
    for exp_name, exp in experiments.items():
        here = f"{where}: experiment {exp_name!r}" if exp_name else where
        exp = exp or {}
        unknown = sorted(set(exp) - EXPERIMENT_KEYS)
        if unknown:
            raise ValueError(f"{here}: unknown key(s) {unknown}; known: {sorted(EXPERIMENT_KEYS)}")
        fixed = {**fixed_all, **(exp.get("fixed") or {})}
        seeds = _seeds(here, exp.get("seeds", grid.get("seeds")))
        factors = exp.get("factors") or {}
        names = list(factors)
        level_lists = [_levels(here, f, factors[f]) for f in names]
        for combo in itertools.product(*level_lists):
            for seed in seeds:
                params = dict(fixed)
                for _, p in combo:
                    params.update(p)
                params["seed"] = seed
                labels = {f: lab for f, (lab, _) in zip(names, combo, strict=True)}
                parts = ([_safe(exp_name)] if exp_name else []) + [
                    f"{_safe(f)}={_safe(lab)}" for f, lab in labels.items()
                ]
                name = "__".join([*parts, f"seed={seed}"])
                runs.append(Run(name, str(exp_name), labels, seed, params))
    seen: dict[str, Run] = {}
    for r in runs:
        if r.name in seen:
            raise ValueError(f"{where}: two runs share the name {r.name!r}")
        seen[r.name] = r
    return runs


def load_grid(path: str | os.PathLike) -> tuple[list[Run], str | None]:
    """(runs, notebook named in the file or None) of a YAML grid file."""
    import yaml

    path = Path(path)
    try:
        grid = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read the grid: {err}") from err
    runs = expand_grid(grid, where=str(path))
    return runs, grid.get("notebook")
