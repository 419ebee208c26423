"""Where should dropout sit? Cost of MC dropout and how well the epistemic map flags devices,
for dropout in every stage ("all") against dropout in the last stage only ("last").

One run of this script:
1. simulates a small paired data set (``--patients`` in-distribution at ``--size`` px for
   training, plus ``--ood`` out-of-distribution patients with pacemakers, ECG cables and clips);
2. trains the same small 3-stage recipe twice, once per placement (same seed, same data);
3. times one deterministic forward and ``mc_dropout_predict`` with ``--samples`` passes for
   each trained model (ratio to its forward, fastest of ``--repeats``);
4. scores every OOD image: pixel AUROC of the epistemic (and aleatoric, total) sigma for device
   pixels against lung pixels (``darkfield_nb.ood.device_flagging``).

    python bench/dropout_placement.py [--size 128] [--patients 64] [--ood 12] [--epochs 4]
           [--samples 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from darkfield_nb.data import PairedDataset
from darkfield_nb.models import DiscriminatorConfig, GeneratorConfig
from darkfield_nb.ood import device_flagging
from darkfield_nb.physics import generate_dataset
from darkfield_nb.train import TrainConfig, train_progressive, upgan_stages
from darkfield_nb.uncertainty import mc_dropout_predict


def recipe(placement: str, epochs: int, size: int) -> TrainConfig:
    """The UP-GAN loss schedule on a width-8 three-stage generator, one warm-up epoch a stage."""
    return TrainConfig(
        model=GeneratorConfig(n_stages=3, base_width=8, dropout=0.1, dropout_stages=placement),
        discriminator=DiscriminatorConfig(width=16),
        stages=upgan_stages(epochs=epochs, warmup_epochs=1, batch_size=8),
        crop_size=size,
        cache_data=True,
        seed=0,
    )


def time_cost(models: dict, size: int, samples: int, repeats: int) -> dict:
    """Fastest of ``repeats`` round-robin timings (forward, then MC) of every model, so that
    load from other processes hits all placements alike."""
    x = torch.randn(1, 1, size, size)
    times = {name: {"forward": [], "mc": []} for name in models}
    with torch.no_grad():
        for model in models.values():
            model(x)
        for _ in range(repeats):
            for name, model in models.items():
                t0 = time.perf_counter()
                model(x)
                times[name]["forward"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                mc_dropout_predict(model, x, samples=samples, seed=0)
                times[name]["mc"].append(time.perf_counter() - t0)
    out = {}
    for name, t in times.items():
        fwd, mc = min(t["forward"]), min(t["mc"])
        out[name] = {"forward_s": fwd, "mc_s": mc, "mc_over_forward": mc / fwd}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--patients", type=int, default=64)
    ap.add_argument("--ood", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=4, help="epochs per stage")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    results = {"args": vars(args) | {"json": str(args.json)}}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate_dataset(
            data,
            args.patients,
            args.size,
            seed=7,
            ood_patients=args.ood,
            ood_cases=("pacemaker", "cables", "clips"),
            progress=False,
        )
        ood = PairedDataset(data, split="ood", pad_multiple=1)
        models, train = {}, {}
        for placement in ("last", "all"):
            t0 = time.perf_counter()
            run = train_progressive(
                data,
                Path(tmp) / placement,
                recipe(placement, args.epochs, args.size),
                device="cpu",
                progress=False,
            )
            train[placement] = (time.perf_counter() - t0, run.history[-1].get("val_ssim"))
            models[placement] = run.model.eval()
        costs = time_cost(models, args.size, args.samples, args.repeats)
        for placement, model in models.items():
            rows = device_flagging(model, ood, samples=args.samples, progress=False)
            summary = {
                "train_s": train[placement][0],
                "val_ssim_last_epoch": train[placement][1],
                **costs[placement],
                "n_ood_images": len(rows),
            }
            for name in ("epistemic", "aleatoric", "total"):
                vals = [r[f"auroc_{name}"] for r in rows]
                summary[f"auroc_{name}_mean"] = float(np.mean(vals))
                summary[f"auroc_{name}_by_case"] = {
                    case: float(np.mean([r[f"auroc_{name}"] for r in rows if r["case"] == case]))
                    for case in sorted({r["case"] for r in rows})
                }
            summary["epistemic_device_over_lung"] = statistics.mean(
                r["epistemic_device"] / max(r["epistemic_lung"], 1e-12) for r in rows
            )
            results[placement] = summary
            print(
                f"[{placement}] train {summary['train_s']:.0f} s (val SSIM "
                f"{summary['val_ssim_last_epoch']:.3f}); MC({args.samples}) / forward = "
                f"{summary['mc_over_forward']:.2f}x; device AUROC epistemic "
                f"{summary['auroc_epistemic_mean']:.3f} {summary['auroc_epistemic_by_case']}; "
                f"aleatoric {summary['auroc_aleatoric_mean']:.3f}; total "
                f"{summary['auroc_total_mean']:.3f}; epistemic device/lung "
                f"{summary['epistemic_device_over_lung']:.2f}x",
                flush=True,
            )
    ratio = results["all"]["mc_s"] / results["last"]["mc_s"]
    print(f"MC cost all / last = {ratio:.2f}x (same run)")
    results["mc_cost_all_over_last"] = ratio
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
