"""Batch synthesis throughput of one checkpoint on one device, at the model's own size.

    python bench/gpu_synthesis.py CKPT DATA_DIR WORK [--n 1000] [--device cuda]

Two figures, each on ``--n`` radiographs (the data set's attenuation images, repeated under
new names): the model alone (T = 20 MC passes on batches already on the device, no I/O) and
``darkfield-nb predict``'s pipeline end to end (decode, resample, MC, write four TIFFs per
image). Images/s = n / wall seconds after one warm-up batch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darkfield_nb.hardware import pick_device  # noqa: E402
from darkfield_nb.inference import PredictConfig, load_model, predict_folder  # noqa: E402
from darkfield_nb.inference.mc import mc_predict_batch  # noqa: E402


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def model_only(model, size: int, n: int, batch: int, dev: torch.device, samples: int) -> dict:
    """Images/s of ``mc_predict_batch`` on random inputs of ``size`` px (the model's cost)."""
    x = torch.rand(batch, 1, size, size, device=dev)
    ctx = torch.autocast("cuda", dtype=torch.float16) if dev.type == "cuda" else torch.no_grad()
    with torch.no_grad(), ctx:
        mc_predict_batch(model, x, samples=samples, seed=0)
        _sync(dev)
        t0 = time.perf_counter()
        done = 0
        while done < n:
            mc_predict_batch(model, x, samples=samples, seed=0)
            done += batch
        _sync(dev)
    secs = time.perf_counter() - t0
    return {"images": done, "seconds": secs, "images_per_s": done / secs, "batch": batch}


def time_synthesis(ckpt, data, work, n: int = 1000, device: str = "cuda", samples: int = 20):
    dev = pick_device(device)
    loaded = load_model(ckpt, dev)
    size = int(loaded.geometry.size[0]) if hasattr(loaded.geometry, "size") else 512
    work = Path(work)
    shutil.rmtree(work, ignore_errors=True)
    inputs = work / "inputs"
    inputs.mkdir(parents=True)
    sources = sorted((Path(data) / "attenuation").glob("*.png"))
    for i in range(n):
        os.link(sources[i % len(sources)], inputs / f"r{i:05d}.png")
    out = {"size": size, "n": n, "samples": samples}
    batch = 32 if dev.type == "cuda" else 2
    out["model_only"] = model_only(loaded.model, size, min(n, 512), batch, dev, samples)
    cfg = PredictConfig(samples=samples, progress=False)
    warm = work / "warm"
    warm.mkdir()
    for p in sorted(inputs.glob("*.png"))[:batch]:
        os.link(p, warm / p.name)

    def run(folder: Path, out_dir: Path):
        return predict_folder(
            loaded.model,
            folder,
            out_dir,
            geometry=loaded.geometry,
            checkpoint_sha256=loaded.sha256,
            config=cfg,
            device=dev,
        )

    run(warm, work / "warm_out")
    _sync(dev)
    t0 = time.perf_counter()
    report = run(inputs, work / "out")
    _sync(dev)
    secs = time.perf_counter() - t0
    out["pipeline"] = {
        "images": len(report.written),
        "seconds": secs,
        "images_per_s": len(report.written) / secs,
        "failed": len(report.failed),
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("data")
    ap.add_argument("work")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    print(
        json.dumps(
            time_synthesis(args.checkpoint, args.data, args.work, args.n, args.device), indent=1
        )
    )


if __name__ == "__main__":
    main()
