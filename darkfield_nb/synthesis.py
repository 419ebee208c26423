"""Synthesize dark-field images with uncertainty maps from ordinary radiographs.

``synthesize`` turns one radiograph (any size, raw values as ``io.read_image`` returns them) into
four maps in physical dark-field units D: the Monte Carlo dropout mean and the aleatoric,
epistemic and total standard deviations (total^2 = aleatoric^2 + epistemic^2).
``synthesize_folder`` does that for a folder or a list of files and writes

    <out>/darkfield/<stem>.tif   <out>/aleatoric/<stem>.tif
    <out>/epistemic/<stem>.tif   <out>/total/<stem>.tif

each atomically. It is resumable: an input whose four outputs exist is skipped. A file that cannot
be read is reported (file and problem) and the run goes on; the report lists every failure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from darkfield_nb.data import normalize_input
from darkfield_nb.hardware import pick_device
from darkfield_nb.io import IMAGE_SUFFIXES, read_image, write_image
from darkfield_nb.uncertainty import mc_dropout_predict

MAPS = ("darkfield", "aleatoric", "epistemic", "total")


@dataclass
class Synthesis:
    """Maps of one synthesized image, each (H, W) float32 in D units."""

    darkfield: np.ndarray
    aleatoric: np.ndarray
    epistemic: np.ndarray
    total: np.ndarray


@dataclass
class SynthesisReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@torch.no_grad()
def synthesize(
    model: torch.nn.Module,
    image: np.ndarray,
    *,
    samples: int = 20,
    device: str | torch.device = "cpu",
    seed: int = 0,
    stage: int = -1,
) -> Synthesis:
    """Predict the dark-field image of one radiograph with MC dropout (``samples`` passes).

    ``stage``: which stage's output (0-based; -1 the last). ``device``: "auto" | "cpu" |
    "cuda" | a ``torch.device`` (``hardware.pick_device``).
    """
    if image.ndim != 2:
        raise ValueError(f"synthesize: expected a 2-D radiograph, got shape {image.shape}")
    x = torch.from_numpy(normalize_input(image).astype(np.float32))[None, None]
    device = pick_device(device)
    model = model.to(device).eval()
    result = mc_dropout_predict(model, x.to(device), samples=samples, seed=seed, stage=stage)
    maps = [result.mean, result.aleatoric, result.epistemic, result.total]
    return Synthesis(*(m[0, 0].float().cpu().numpy() for m in maps))


def list_radiographs(folder: str | os.PathLike) -> list[Path]:
    """Files in ``folder`` (not recursive) whose suffix ``io.read_image`` knows, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _outputs(out_dir: Path, stem: str) -> dict[str, Path]:
    return {name: out_dir / name / f"{stem}.tif" for name in MAPS}


def synthesize_folder(
    model: torch.nn.Module,
    inputs: str | os.PathLike | list,
    out_dir: str | os.PathLike,
    *,
    samples: int = 20,
    device: str | torch.device = "cpu",
    seed: int = 0,
    stage: int = -1,
    progress: bool = True,
) -> SynthesisReport:
    """Synthesize every radiograph of ``inputs`` (a folder or a list of files) into ``out_dir``."""
    paths = list_radiographs(inputs) if not isinstance(inputs, list) else [Path(p) for p in inputs]
    if not paths:
        raise FileNotFoundError(f"{inputs}: no radiographs with a known suffix {IMAGE_SUFFIXES}")
    stems = [p.stem for p in paths]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:
        raise ValueError(f"{inputs}: several files share the name(s) {clash}; outputs would clash")
    out_dir = Path(out_dir)
    device = pick_device(device)
    report = SynthesisReport()
    for path in tqdm(paths, desc="synthesize", disable=not progress):
        targets = _outputs(out_dir, path.stem)
        if all(t.exists() for t in targets.values()):
            report.skipped.append(path)
            continue
        try:
            image = read_image(path)
        except (ValueError, ImportError) as err:
            report.failed[str(path)] = str(err)
            continue
        maps = synthesize(model, image, samples=samples, device=device, seed=seed, stage=stage)
        for name, target in targets.items():
            write_image(target, getattr(maps, name).astype(np.float32))
        report.written.append(path)
    return report
