"""Does the lung-level ensemble's disagreement flag unfamiliar images?

The standard deviation (ddof 1) of the shipped model's lung-level member estimates per image
(``LungLevel.member_estimates``, the ``lung_level_sd`` column of ``predict``): AUROC of device
images (pacemaker, cables, clips; and high-contrast exposures) against the in-distribution test
images of a paired set, and the value on the real radiographs of ``../shared/real_cxr``.

    python bench/lung_level_spread.py [DATA]   (default: /work/runs/s20/v5/data_s1, v5's set)
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darkfield_nb.data import PairedDataset, normalize_input  # noqa: E402
from darkfield_nb.inference import load_model  # noqa: E402
from darkfield_nb.inference.geometry import plan_resample, resize  # noqa: E402
from darkfield_nb.io import read_image  # noqa: E402
from darkfield_nb.paths import pretrained_checkpoint, real_cxr_dir  # noqa: E402
from darkfield_nb.synthesis import model_geometry  # noqa: E402

DEVICES = ("pacemaker", "cables", "clips")


def spread(level, x: np.ndarray) -> float:
    """Standard deviation (ddof 1) of the members' estimates for one model input (H, W)."""
    return float(level.member_estimates(x).std(axis=0, ddof=1)[0])


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/runs/s20/v5/data_s1")
    torch.set_num_threads(2)
    loaded = load_model(pretrained_checkpoint())
    level = loaded.level
    with open(root / "manifest.csv", newline="") as fh:
        case = {r["id"]: r["case"] for r in csv.DictReader(fh)}
    sd: dict[str, list[float]] = {}
    for split in ("test", "ood"):
        ds = PairedDataset(root, split=split, pad_multiple=1, load_masks=False)
        for i in range(len(ds)):
            item = ds[i]
            key = "test" if split == "test" else case[item["id"]]
            sd.setdefault(key, []).append(spread(level, item["input"][0].numpy()))
    test = np.array(sd["test"])
    print(f"test images: {len(test)}, member sd median {np.median(test):.4f}, max {test.max():.4f}")
    device_sd = np.concatenate([sd[c] for c in DEVICES])
    labels = np.r_[np.ones(len(device_sd)), np.zeros(len(test))]
    print(f"AUROC, devices vs test: {roc_auc_score(labels, np.r_[device_sd, test]):.3f}")
    for c in (*DEVICES, "high_contrast"):
        v = np.array(sd.get(c, []))
        if len(v):
            auc = roc_auc_score(np.r_[np.ones(len(v)), np.zeros(len(test))], np.r_[v, test])
            print(f"  {c}: AUROC {auc:.3f} ({len(v)} images)")
    geometry = model_geometry(loaded.model)
    for p in sorted(real_cxr_dir().glob("*")):
        if p.suffix.lower() not in (".png", ".dcm") or "monochrome1" in p.name:
            continue
        image = read_image(p)
        plan = plan_resample(image.shape, geometry, None, name=p.name)
        x = normalize_input(image).astype(np.float32)
        if not plan.identity:
            x = resize(x, plan.model_shape)
        s = spread(level, x)
        print(f"{p.name}: member sd {s:.4f} ({s / np.median(test):.1f} x the test median)")


if __name__ == "__main__":
    main()
