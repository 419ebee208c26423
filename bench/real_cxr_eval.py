"""Issue-9 figures of a checkpoint on the real radiographs: mean D in the air outside the body
(normalized input < 0.15 connected to the image border), lung D (predict's fixed central-lung
region), and the same PNG upsampled to 1024 px.

    python bench/real_cxr_eval.py CKPT OUT_DIR   (runs `darkfield-nb predict` twice)
"""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from darkfield_nb.data import normalize_input
from darkfield_nb.io import read_image
from darkfield_nb.paths import real_cxr_dir

ckpt, out = sys.argv[1], Path(sys.argv[2])

real = real_cxr_dir()
up = out / "inputs_1024"
up.mkdir(parents=True, exist_ok=True)
for p in sorted(real.glob("*.png")):
    im = Image.open(p)
    if not (up / p.name).exists():
        im.resize((1024, 1024), Image.BICUBIC).save(up / p.name)
res = {}
for src, tag in ((real, "native"), (up, "1024")):
    o = out / tag
    subprocess.run(
        [
            "darkfield-nb",
            "predict",
            str(src),
            "--out",
            str(o),
            "--checkpoint",
            ckpt,
            "--quiet",
            "--preview",
        ],
        check=False,
    )
    rows = {r["id"]: r for r in csv.DictReader(open(o / "summary.csv"))}
    for stem, r in rows.items():
        if r.get("status") not in ("written", "skipped", "done", "ok") and not r.get("lung_D"):
            continue
        src_file = next(src.glob(stem + ".*"))
        x = normalize_input(read_image(src_file))
        d = read_image(o / "darkfield" / f"{stem}.tif")
        dark = x < 0.15
        lab, n = ndimage.label(dark)
        border = set(np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))) - {0}
        air = np.isin(lab, list(border))
        res[f"{stem}@{tag}"] = {
            "lung_D": float(r["lung_D"]),
            "air_D": float(d[air].mean()) if air.any() else None,
            "air_fraction": float(air.mean()),
            "mean_total": float(r["mean_total"]),
            "ood_score": r.get("ood_score"),
        }
print(json.dumps(res, indent=1))
json.dump(res, open(out / "real_eval.json", "w"), indent=1)
