"""Time the simulator: 269 pairs (the size of the paper's data set) at 512 and 1024 pixels.

Usage: python bench/make_data.py [--patients 269] [--sizes 512 1024] [--workers N]

Writes to a temporary folder (deleted afterwards) and prints seconds and pairs/s per size,
plus the per-pair split between rendering and writing measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from darkfield_nb.io import write_image
from darkfield_nb.physics import generate_dataset, make_patient, simulate
from darkfield_nb.physics.dataset import default_workers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=269)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    workers = args.workers or default_workers()
    print(f"{args.patients} pairs per size, {workers} worker process(es)")
    for size in args.sizes:
        # one process: how a pair's time splits between rendering and writing
        t0 = time.perf_counter()
        pairs = [simulate(make_patient(0, i, "healthy"), size) for i in range(4)]
        t_render = (time.perf_counter() - t0) / 4
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            for i, p in enumerate(pairs):
                write_image(Path(tmp) / f"a{i}.png", p.attenuation)
                write_image(Path(tmp) / f"d{i}.tif", p.darkfield)
                write_image(Path(tmp) / f"m{i}.png", p.mask)
            t_write = (time.perf_counter() - t0) / 4
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            generate_dataset(
                Path(tmp) / "d", args.patients, size, seed=0, progress=False, workers=workers
            )
            dt = time.perf_counter() - t0
        print(
            f"size {size:5d}: {dt:6.1f} s for {args.patients} pairs = "
            f"{args.patients / dt:5.2f} pairs/s  (one process: render {t_render:.3f} s + "
            f"write {t_write:.3f} s per pair)"
        )


if __name__ == "__main__":
    main()
