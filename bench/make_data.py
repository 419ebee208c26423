"""Time the simulator: 269 pairs (the size of the paper's data set) at 512 and 1024 pixels.

Usage: python bench/make_data.py [--patients 269] [--sizes 512 1024] [--workers N] [--compare-fixed]

Writes to a temporary folder (deleted afterwards) and prints seconds and pairs/s per size for
the default simulator (varied framing, vendor looks, half the patients with a disease), plus
the per-pair split between rendering and writing measured in the same run. With
``--compare-fixed`` it also times the first simulator's single framing and look
(``FramingRanges.fixed()``, ``DisplayRanges.fixed()``) in the same run and prints the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from darkfield_nb.io import write_image
from darkfield_nb.physics import (
    DisplayRanges,
    FramingRanges,
    generate_dataset,
    make_patient,
    simulate,
)
from darkfield_nb.physics.dataset import default_workers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=269)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--compare-fixed", action="store_true", help="also time the fixed framing")
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
        variants = [("varied", {})]
        if args.compare_fixed:
            fixed = {"framing": FramingRanges.fixed(), "display": DisplayRanges.fixed()}
            variants.append(("fixed", fixed))
        times = {}
        for name, kw in variants:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                generate_dataset(
                    Path(tmp) / "d",
                    args.patients,
                    size,
                    seed=0,
                    progress=False,
                    workers=workers,
                    **kw,
                )
                times[name] = time.perf_counter() - t0
        dt = times["varied"]
        print(
            f"size {size:5d}: {dt:6.1f} s for {args.patients} pairs = "
            f"{args.patients / dt:5.2f} pairs/s  (one process: render {t_render:.3f} s + "
            f"write {t_write:.3f} s per pair)"
        )
        if "fixed" in times:
            print(
                f"            fixed framing {times['fixed']:6.1f} s; varied / fixed = "
                f"{dt / times['fixed']:.2f}"
            )


if __name__ == "__main__":
    main()
