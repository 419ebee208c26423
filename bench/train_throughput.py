"""Training throughput (images per second) of plain fp32 eager versus the optimized path, measured
in one run on the same model and data.

Each variant runs the real training loop (``darkfield_nb.train.train_stage``: generator and
conditional discriminator steps, loss checks, gradient clipping) on random in-memory
images for ``--epochs`` short epochs of ``--steps`` steps; the first epoch is a warm-up (it
also pays torch.compile's compilation) and the fastest later epoch counts. The variants run
round-robin ``--repeats`` times and each keeps its best, so that load from other processes on a
shared machine hits them alike. Variants:

  fp32          float32, eager, contiguous (NCHW)                    the baseline
  bf16+cl       bf16 autocast + channels_last, eager
  bf16+cl+comp  the same under torch.compile (default on CUDA only: on a CPU, compiling the
                generator and discriminator takes minutes, more than this benchmark's budget)

and the ratio of each to ``fp32``; the "optimized path" figure is the best of the others.
bf16 autocast pays off on GPUs with bf16 tensor cores (A100/H100); on a CPU without AMX it is
usually slower, which the ratio shows honestly.

    python bench/train_throughput.py                      # CPU: 128 px, a couple of minutes
    python bench/train_throughput.py --size 512 --device cuda --batch 8 --steps 20
    python bench/train_throughput.py --variants fp32 bf16+cl bf16+cl+comp --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import replace

import torch
from torch.utils.data import Dataset

from darkfield_nb.hardware import pick_device
from darkfield_nb.models import (
    DiscriminatorConfig,
    GeneratorConfig,
    build_generator,
    count_parameters,
)
from darkfield_nb.train import StageSchedule, TrainConfig, train_stage

VARIANTS = {
    "fp32": dict(amp="none", channels_last=False, compile=False),
    "bf16": dict(amp="bf16", channels_last=False, compile=False),
    "bf16+cl": dict(amp="bf16", channels_last=True, compile=False),
    "bf16+cl+comp": dict(amp="bf16", channels_last=True, compile=True),
    "fp32+comp": dict(amp="none", channels_last=False, compile=True),
}


class RandomPairs(Dataset):
    """``n`` fixed random (input, target) pairs of ``size`` x ``size`` held in memory."""

    def __init__(self, n: int, size: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 1, size, size, generator=g)
        self.y = 0.3 + 0.1 * torch.randn(n, 1, size, size, generator=g)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"input": self.x[i], "target": self.y[i], "pad": torch.zeros(4, dtype=torch.int64)}


def measure(variant: str, args, device: torch.device, data: Dataset) -> dict:
    """Images/s of one variant: the fastest epoch after the warm-up epoch."""
    opts = VARIANTS[variant]
    base = TrainConfig(
        model=GeneratorConfig(n_stages=args.stage + 1, base_width=args.base_width),
        discriminator=DiscriminatorConfig(width=args.disc_width),
        stages=[StageSchedule(epochs=args.epochs, batch_size=args.batch, warmup_epochs=0)],
        crop_size=None,
        max_steps_per_epoch=args.steps,
    )
    cfg = replace(base, **opts)
    torch.manual_seed(0)
    model = build_generator(cfg.model)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        hist = train_stage(model, args.stage, data, None, cfg, out, device=device, progress=False)
    total = time.perf_counter() - t0
    timed = [h["images_per_s"] for h in hist[1:]] or [hist[0]["images_per_s"]]
    return {
        "variant": variant,
        **opts,
        "images_per_s": max(timed),
        "warmup_images_per_s": hist[0]["images_per_s"],
        "final_loss": hist[-1]["train_loss"],
        "wall_s": total,
        "parameters": count_parameters(model),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--batch", type=int, default=4, help="images per step (default 4)")
    p.add_argument("--steps", type=int, default=3, help="steps per epoch (default 3)")
    p.add_argument("--epochs", type=int, default=2, help="epochs; the first is warm-up (2)")
    p.add_argument("--repeats", type=int, default=2, help="round-robin repeats, best kept (2)")
    p.add_argument("--stage", type=int, default=0, help="0-based stage trained (default 0)")
    p.add_argument("--base-width", type=int, default=16, help="generator base width (16)")
    p.add_argument("--disc-width", type=int, default=64, help="discriminator width (64)")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--variants",
        nargs="+",
        default=None,
        choices=sorted(VARIANTS),
        help="default: fp32 bf16+cl bf16+cl+comp on CUDA; fp32 bf16+cl on CPU (compiling takes "
        "minutes there)",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    args = p.parse_args()
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (one warm-up epoch, then timed ones)")
    device = pick_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.variants is None:
        args.variants = ["fp32", "bf16+cl"] + (["bf16+cl+comp"] if device.type == "cuda" else [])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    data = RandomPairs(args.batch * args.steps, args.size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {device} ({name}), torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}; {args.size}x{args.size}, batch {args.batch}, "
        f"{args.steps} steps x {args.epochs} epochs, training stage {args.stage}"
    )
    best: dict[str, dict] = {}
    for rep in range(args.repeats):  # round-robin, so that load from other processes hits all
        for v in args.variants:
            if "error" in best.get(v, {}):
                continue
            try:
                row = measure(v, args, device, data)
            except Exception as exc:  # e.g. torch.compile without a working compiler
                row = {"variant": v, "error": f"{type(exc).__name__}: {exc}"[:300]}
            if "error" in row:
                print(f"{v:14s} failed: {row['error']}")
            else:
                print(
                    f"[{rep + 1}/{args.repeats}] {v:14s} {row['images_per_s']:8.2f} images/s  "
                    f"(warm-up epoch {row['warmup_images_per_s']:.2f}, wall {row['wall_s']:.1f} s)"
                )
            if v not in best or row.get("images_per_s", -1) > best[v].get("images_per_s", -1):
                best[v] = row
    rows = [best[v] for v in args.variants]
    base = next((r for r in rows if r["variant"] == "fp32" and "error" not in r), None)
    if base is not None:
        for r in rows:
            if "error" not in r:
                r["ratio_vs_fp32"] = r["images_per_s"] / base["images_per_s"]
        others = [r for r in rows if r is not base and "error" not in r]
        print("\nratio to fp32 eager (higher is faster):")
        for r in rows:
            if "error" not in r:
                print(f"  {r['variant']:14s} {r['ratio_vs_fp32']:.2f}x")
        if others:
            best = max(others, key=lambda r: r["images_per_s"])
            print(
                f"optimized path: {best['variant']} at {best['ratio_vs_fp32']:.2f}x "
                f"fp32 eager ({best['images_per_s']:.2f} vs {base['images_per_s']:.2f} images/s)"
            )
    if args.json:
        meta = {"device": str(device), "device_name": name, "torch": torch.__version__}
        meta.update({k: getattr(args, k) for k in ("size", "batch", "steps", "epochs", "stage")})

        def finite(v):
            return None if isinstance(v, float) and not math.isfinite(v) else v

        clean = [{k: finite(v) for k, v in r.items()} for r in rows]
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"meta": meta, "results": clean}, fh, indent=2)


if __name__ == "__main__":
    main()
