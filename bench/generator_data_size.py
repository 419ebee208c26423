"""Does the pixel-wise generator rank patients by lung D better when it sees more patients?
(issue 9; follows ``bench/lung_d_regressor.py``, where a scalar CNN went from Spearman 0.26 to
0.47 between 1,274 and 5,774 training images)

One single-stage generator (``recipes.single_stage_baseline``'s losses; base width 16, batch
norm, ``head_reg`` dropout) per training folder, trained for the SAME number of optimizer steps
on whole 128 px images, so only the number of distinct patients differs; then, on a test folder
of a seed neither saw, one deterministic pass per image and

    t_i = mean of the target D over image i's true lung mask (as bench/simulator_eval.py),
    p_i = mean of the predicted D over the same pixels,

Spearman(t, p) with a 95 % percentile bootstrap interval over patients (2,000 resamples), the
mean lung D bias mean(p) / mean(t) - 1 and the pixel MSE.

    OMP_NUM_THREADS=1 python bench/generator_data_size.py train DATA OUT [--steps N]
    python bench/generator_data_size.py score OUT1 [OUT2 ...] --test TEST [--json OUT.json]

``train`` uses the folder's ``train`` split (``val`` for the training loop's validation).
Folders: ``darkfield-nb make-data --size 128 --ood 0 --seed S --patients N``. Seen on
2026-11-26: see ``bench/RESULTS.md`` ("generator and the number of training patients").
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darkfield_nb import checkpoint  # noqa: E402
from darkfield_nb.data import PairedDataset  # noqa: E402
from darkfield_nb.labels import LUNG  # noqa: E402
from darkfield_nb.train import recipes, train_progressive  # noqa: E402
from darkfield_nb.train.recipes import _mc_dropout_generator  # noqa: E402

BATCH = 8


def config(steps: int, n_train: int, steps_per_epoch: int = 250):
    """The single-stage baseline's losses on a width-16 generator, whole images, ``steps``
    optimizer steps in epochs of at most ``steps_per_epoch`` (fewer when the ``n_train``
    training images give fewer batches: then more epochs, so both runs take ``steps`` steps)."""
    base = recipes.single_stage_baseline()
    per_epoch = min(
        steps_per_epoch, max(1, n_train // BATCH)
    )  # the loader drops the last part batch
    epochs = max(1, round(steps / per_epoch))
    stage = replace(base.stages[0], epochs=epochs, batch_size=BATCH, warmup_epochs=1)
    return replace(
        base,
        model=_mc_dropout_generator(1, 16, "head_reg"),
        stages=[stage],
        crop_size=None,
        max_steps_per_epoch=steps_per_epoch,
        val_max_images=48,
    )


def lung_means(model, root: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """(true, predicted) per-image lung D and the pixel MSE over the whole test folder."""
    ds = PairedDataset(root, split=["train", "val", "test"], pad_multiple=1)
    model.eval()
    t, p, se, n = [], [], 0.0, 0
    with torch.no_grad():
        for i in range(len(ds)):
            item = ds[i]
            y = item["target"][0].numpy()
            lung = (item["mask"][0].numpy().astype(int) & LUNG) > 0
            mu = model(item["input"][None])[-1].mu[0, 0].numpy()
            if lung.sum() < 64:
                continue
            t.append(float(y[lung].mean()))
            p.append(float(mu[lung].mean()))
            se, n = se + float(((mu - y) ** 2).sum()), n + y.size
    return np.array(t), np.array(p), se / n


def score(run: Path, test: Path) -> dict:
    model = checkpoint.load(run / "model.pt")
    t, p, mse = lung_means(model, test)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(t), (2000, len(t)))
    boot = [stats.spearmanr(t[k], p[k])[0] for k in idx]
    return {
        "run": str(run),
        "n_test": int(len(t)),
        "spearman": float(stats.spearmanr(t, p)[0]),
        "spearman_95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        "pearson": float(stats.pearsonr(t, p)[0]),
        "bias": float(p.mean() / t.mean() - 1),
        "mse": mse,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train")
    tr.add_argument("data", type=Path)
    tr.add_argument("out", type=Path)
    tr.add_argument("--steps", type=int, default=1500)
    tr.add_argument("--steps-per-epoch", type=int, default=250)
    sc = sub.add_parser("score")
    sc.add_argument("runs", type=Path, nargs="+")
    sc.add_argument("--test", type=Path, required=True)
    sc.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.cmd == "train":
        torch.set_num_threads(1)
        n_train = len(PairedDataset(args.data, split="train", pad_multiple=1))
        cfg = config(args.steps, n_train, args.steps_per_epoch)
        print(f"{n_train} training images, {cfg.stages[0].epochs} epochs", flush=True)
        train_progressive(args.data, args.out, cfg, device="cpu", progress=False)
        return
    rows = [score(r, args.test) for r in args.runs]
    for r in rows:
        lo, hi = r["spearman_95"]
        print(
            f"{r['run']}: Spearman {r['spearman']:.3f} [{lo:.3f}, {hi:.3f}], Pearson "
            f"{r['pearson']:.3f}, bias {100 * r['bias']:+.1f} %, MSE {r['mse']:.5f} "
            f"({r['n_test']} test images)"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
