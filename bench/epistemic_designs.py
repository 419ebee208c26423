"""Which epistemic design flags what the model has never seen? MC dropout placements, rates and
kinds against a deep ensemble of the last stage and a Mahalanobis feature density.

Three steps, each resumable (files in ``--work``, default ``.cache/epistemic_designs``):

    python bench/epistemic_designs.py data    # simulate the data set once (fixed seed)
    python bench/epistemic_designs.py train   # train the models of MODELS (skips finished ones)
    python bench/epistemic_designs.py eval [--json out.json] [--markdown out.md]

Models: single-stage generators (``n_stages=1``: the "last stage" is the whole model), base
width 8, depth 4, 128 x 128 images, the stage-0 loss schedule of UP-GAN (L1 + GGD + LSGAN,
``upgan_stages``), ``--epochs`` epochs with one warm-up epoch, batch 8, fp32, seeds as listed.
Dropout placements are applied with :func:`darkfield_nb.epistemic.apply_placement` *before*
training; at inference a model trained with dropout at every decoder level is also sampled at
its last level or bottleneck only, and at other rates (:func:`darkfield_nb.epistemic.set_rate`).

Scores (simulated ``ood`` split with pacemaker / cables / clips; ``test`` split in
distribution; ``val`` split for calibration):
* pixel AUROC of the epistemic map and of the total map sqrt(aleatoric^2 + epistemic^2) for
  device pixels against lung pixels and against all body pixels, per case;
* per-image OOD AUROC (device images against in-distribution test images) of the per-image
  score :func:`darkfield_nb.epistemic.image_score`, and where each real radiograph ranks;
* cost of T = 20 passes (or K members) at 256 px on CPU, as a ratio to one deterministic pass
  of the same network (timed round-robin, fastest of ``--repeats``);
* validation SSIM and MSE of the mean prediction.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from darkfield_nb.epistemic import Placement, apply_placement
from darkfield_nb.models import DiscriminatorConfig, GeneratorConfig, ProgressiveGenerator
from darkfield_nb.physics import generate_dataset
from darkfield_nb.train import TrainConfig, upgan_stages
from darkfield_nb.train.progressive import make_datasets
from darkfield_nb.train.stage import make_discriminator, train_stage

SIZE = 128
DATA_SEED = 11
# name -> (placement or None for no dropout, training seed)
MODELS: dict[str, tuple[Placement | None, int]] = {
    "det_s0": (None, 0),
    "det_s1": (None, 1),
    "det_s2": (None, 2),
    "det_s3": (None, 3),
    "det_s4": (None, 4),
    "dec_ch_p0.1": (Placement("decoder", 0.1, "channel"), 0),
    "dec_ch_p0.3": (Placement("decoder", 0.3, "channel"), 0),
    "dec_el_p0.3": (Placement("decoder", 0.3, "element"), 0),
    "encdec_ch_p0.3": (Placement("encoder_decoder", 0.3, "channel"), 0),
}


def train_config(epochs: int, seed: int) -> TrainConfig:
    return TrainConfig(
        model=GeneratorConfig(n_stages=1, base_width=8, depth=4, dropout=0.0),
        discriminator=DiscriminatorConfig(width=16),
        stages=upgan_stages(epochs=epochs, warmup_epochs=1, batch_size=8)[:1],
        crop_size=SIZE,
        cache_data=True,
        seed=seed,
    )


def build(placement: Placement | None, seed: int) -> ProgressiveGenerator:
    torch.manual_seed(seed)
    model = ProgressiveGenerator(GeneratorConfig(n_stages=1, base_width=8, depth=4, dropout=0.0))
    if placement is not None:
        apply_placement(model, placement)
    return model


def load_model(work: Path, name: str) -> ProgressiveGenerator:
    placement, seed = MODELS[name]
    model = build(placement, seed)
    model.load_state_dict(torch.load(work / "models" / name / "generator.pt", weights_only=True))
    return model.eval()


def cmd_data(args) -> None:
    data = args.work / "data"
    if (data / "manifest.csv").exists():
        print(f"{data}: exists")
        return
    generate_dataset(
        data,
        args.patients,
        SIZE,
        seed=DATA_SEED,
        ood_patients=args.ood,
        ood_cases=("pacemaker", "cables", "clips"),
        progress=False,
    )
    print(f"{data}: written")


def cmd_train(args) -> None:
    data = args.work / "data"
    names = args.only or list(MODELS)
    for name in names:
        placement, seed = MODELS[name]
        out = args.work / "models" / name
        if (out / "generator.pt").exists():
            print(f"[{name}] done already", flush=True)
            continue
        out.mkdir(parents=True, exist_ok=True)
        cfg = train_config(args.epochs, seed)
        train_ds, val_ds = make_datasets(data, cfg)
        model = build(placement, seed)
        t0 = time.perf_counter()
        history = train_stage(
            model,
            0,
            train_ds,
            val_ds,
            cfg,
            out,
            discriminator=make_discriminator(cfg, 0),
            device="cpu",
            progress=False,
        )
        seconds = time.perf_counter() - t0
        torch.save(model.state_dict(), out / "generator.pt")
        meta = {
            "placement": None if placement is None else placement.to_dict(),
            "seed": seed,
            "epochs": args.epochs,
            "train_s": seconds,
            "last_epoch": history[-1],
        }
        (out / "meta.json").write_text(json.dumps(meta, indent=1, default=float))
        print(
            f"[{name}] {seconds:.0f} s, val_ssim {history[-1].get('val_ssim')}, "
            f"val_l1 {history[-1].get('val_l1')}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=("data", "train", "eval"))
    ap.add_argument("--work", type=Path, default=Path(".cache/epistemic_designs"))
    ap.add_argument("--patients", type=int, default=80)
    ap.add_argument("--ood", type=int, default=18)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--only", nargs="*", default=None, help="model names (train step)")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--real-dir", type=Path, default=Path("/work/shared/real_cxr"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.step == "data":
        cmd_data(args)
    elif args.step == "train":
        cmd_train(args)
    else:
        from epistemic_eval import cmd_eval  # noqa: PLC0415  (bench/ sibling module)

        cmd_eval(args)


if __name__ == "__main__":
    main()
