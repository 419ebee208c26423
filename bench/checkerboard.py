"""Grid texture and edge band of trained generators, measured in one run.

For each model (the shipped one by default; more with ``--model NAME=CHECKPOINT``), on the
``--split`` images of ``--data`` (whole images, as at inference), with the last stage:

  nyq_pred, nyq_target  share of AC power on the Nyquist row/column of the 2-D DFT
                        (``darkfield_nb.models.spectral.nyquist_power_ratio``), mean over images;
  nyq_ratio             nyq_pred / nyq_target: 1 when the prediction has the target's 2-px
                        texture, > 1 when the decoder adds a grid;
  sigma_bottom/interior aleatoric sigma over the bottom 4 rows / inside a 4-px frame, and
  sigma_border_ratio    ``border_ratio(sigma, 4)`` (outer 4 rows and columns over the interior);
  flipped_bottom_ratio  bottom-4-rows / interior sigma for the upside-down input: a band that
                        stays at the bottom when the anatomy moves to the top is positional;
  const_rel_std         std / |mean| over the map of mu, alpha, beta and sigma for a constant
                        input (0.5, the image size): 0 when no position can be told apart;
  mse, ssim             ``darkfield_nb.evaluation.evaluate`` (deterministic, no MC dropout).

``--crop C`` also prints, for the training split, the target's local noise (mean |D - G_2 * D|,
G_2 a Gaussian of 2 px) in the top 4 rows, the middle and the bottom 4 rows of a C x C crop,
averaged over every crop position the sampler can draw: the label noise a network trained on
crops sees at each crop edge (in the simulated chest images the lower half is noisier, so the
bottom edge of a crop is noisier than its top, a cue zero padding lets a network learn).

``--png DIR`` writes one figure per model: input, target, mu and sigma of the first image,
mu's Nyquist-band detail (mu minus its 3x3 mean), and mu and sigma on each ``--real``
radiograph (resized to the model's image size).

    python bench/checkerboard.py [--data data_samples] [--split test]
        [--model transpose=runs/a/last.pt --model resize=runs/b/last.pt] [--no-shipped]
        [--real /work/shared/real_cxr/00000001_000.png] [--png DIR] [--json out.json]
        [--crop 128]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from darkfield_nb import checkpoint
from darkfield_nb.data import PairedDataset, normalize_input
from darkfield_nb.evaluation import evaluate
from darkfield_nb.ggd import ggd_std
from darkfield_nb.io import read_image
from darkfield_nb.models.spectral import border_ratio, edge_profile, nyquist_power_ratio
from darkfield_nb.paths import pretrained_checkpoint, sample_data_dir


@torch.no_grad()
def _last(model, x: torch.Tensor) -> dict[str, np.ndarray]:
    out = model(x)[-1]
    maps = {"mu": out.mu, "alpha": out.alpha, "beta": out.beta,
            "sigma": ggd_std(out.alpha, out.beta)}  # fmt: skip
    return {k: v[0, 0].double().numpy() for k, v in maps.items()}


def measure(model, data: PairedDataset) -> dict:
    """The figures of the module docstring for one model on one data split."""
    nyq_p, nyq_t, bottom, interior, border, flipped = [], [], [], [], [], []
    for i in range(len(data)):
        item = data[i]
        x, y = item["input"][None], item["target"][0].double().numpy()
        m = _last(model, x)
        nyq_p.append(nyquist_power_ratio(m["mu"]))
        nyq_t.append(nyquist_power_ratio(y))
        prof = edge_profile(m["sigma"], 4)
        bottom.append(prof["bottom"])
        interior.append(prof["interior"])
        border.append(border_ratio(m["sigma"], 4))
        pf = edge_profile(_last(model, torch.flip(x, [-2]))["sigma"], 4)
        flipped.append(pf["bottom"] / pf["interior"])
    size = tuple(data[0]["input"].shape[-2:])
    const = _last(model, torch.full((1, 1, *size), 0.5))
    const_rel_std = {k: float(v.std() / max(abs(v.mean()), 1e-6)) for k, v in const.items()}
    const_prof = edge_profile(const["sigma"], 4)
    quality = evaluate(model, data, mc_samples=0, progress=False)
    return {
        "nyq_pred": float(np.mean(nyq_p)),
        "nyq_target": float(np.mean(nyq_t)),
        "nyq_ratio": float(np.mean(nyq_p) / np.mean(nyq_t)),
        "sigma_mean": float(np.mean(interior)),
        "sigma_bottom": float(np.mean(bottom)),
        "sigma_bottom_ratio": float(np.mean(bottom) / np.mean(interior)),
        "sigma_border_ratio": float(np.mean(border)),
        "flipped_bottom_ratio": float(np.mean(flipped)),
        "const_rel_std": const_rel_std,
        "const_sigma_bottom_ratio": const_prof["bottom"] / const_prof["interior"],
        "mse": float(quality["mse"][-1]),
        "ssim": float(quality["ssim"][-1]),
    }


def crop_edge_noise(data: PairedDataset, crop: int, k: int = 4) -> dict[str, float]:
    """Target noise at the top, middle and bottom ``k`` rows of a ``crop``-row random crop,
    averaged over all ``H - crop + 1`` crop offsets (uniform, as ``PairedDataset`` draws them)."""
    from scipy import ndimage

    rows = np.mean(
        [np.abs(y - ndimage.gaussian_filter(y, 2.0)).mean(1) for y in
         (data.load_raw(i)[1].astype(np.float64) for i in range(len(data)))],
        axis=0,
    )  # fmt: skip
    offsets = range(len(rows) - crop + 1)
    in_crop = np.mean([rows[o : o + crop] for o in offsets], axis=0)
    mid = crop // 2
    return {
        "image_top": float(rows[:k].mean()),
        "image_bottom": float(rows[-k:].mean()),
        "crop_top": float(in_crop[:k].mean()),
        "crop_middle": float(in_crop[mid - k : mid + k].mean()),
        "crop_bottom": float(in_crop[-k:].mean()),
    }


def _resized(path: str, size: tuple[int, int]) -> torch.Tensor:
    from skimage.transform import resize

    img = read_image(path)
    img = resize(img, size, order=1, anti_aliasing=True, preserve_range=True)
    return torch.from_numpy(normalize_input(img).astype(np.float32))[None, None]


def figure(model, data: PairedDataset, name: str, real: list[str], out: Path) -> Path:
    """Panels of the first image and the real radiographs for one model (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage

    item = data[0]
    m = _last(model, item["input"][None])
    detail = m["mu"] - ndimage.uniform_filter(m["mu"], 3, mode="nearest")
    panels = [("input", item["input"][0].numpy()), ("target D", item["target"][0].numpy()),
              ("mu", m["mu"]), ("aleatoric sigma", m["sigma"]),
              ("mu - 3x3 mean (x4 zoom)", detail[96:160, 96:160])]  # fmt: skip
    size = tuple(item["input"].shape[-2:])
    for path in real:
        r = _last(model, _resized(path, size))
        stem = Path(path).stem
        panels += [(f"{stem}: mu", r["mu"]), (f"{stem}: sigma", r["sigma"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, (title, img) in zip(np.atleast_1d(axes), panels, strict=True):
        lo, hi = np.percentile(img, [1, 99.5])
        ax.imshow(img, cmap="magma" if "sigma" in title else "gray", vmin=lo, vmax=hi,
                  interpolation="nearest")  # fmt: skip
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(name)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"checkerboard_{name}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(sample_data_dir()))
    p.add_argument("--split", default="test")
    p.add_argument("--model", action="append", default=[], metavar="NAME=CHECKPOINT")
    p.add_argument("--no-shipped", action="store_true", help="leave out the shipped model")
    p.add_argument("--real", action="append", default=[], help="a real radiograph to show")
    p.add_argument("--png", default=None, help="folder for one figure per model")
    p.add_argument("--json", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--crop", type=int, default=None, help="report crop-edge label noise")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [] if args.no_shipped else [("shipped", str(pretrained_checkpoint()))]
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep:
            p.error(f"--model {spec!r}: expected NAME=CHECKPOINT")
        models.append((name, path))
    data = PairedDataset(args.data, split=args.split, pad_multiple=1)
    results = {}
    if args.crop:
        noise = crop_edge_noise(PairedDataset(args.data, split="train", pad_multiple=1), args.crop)
        results["crop_edge_noise"] = noise
        print("target noise, train split:", {k: round(v, 5) for k, v in noise.items()})
    for name, path in models:
        model = checkpoint.load(path)
        cfg = model.config
        r = measure(model, data)
        r.update(upsample=cfg.upsample, padding_mode=cfg.padding_mode, checkpoint=path)
        results[name] = r
        c = r["const_rel_std"]
        print(
            f"{name:>18} [{cfg.upsample}, {cfg.padding_mode}]  "
            f"Nyquist pred/target {r['nyq_pred']:.2e}/{r['nyq_target']:.2e} = "
            f"{r['nyq_ratio']:.2f}  sigma bottom/interior {r['sigma_bottom_ratio']:.2f} "
            f"(flipped input {r['flipped_bottom_ratio']:.2f}) "
            f"border {r['sigma_border_ratio']:.2f}  "
            f"const std/mean mu {c['mu']:.1e} alpha {c['alpha']:.1e} beta {c['beta']:.1e} "
            f"sigma {c['sigma']:.1e}  MSE {r['mse']:.5f} SSIM {r['ssim']:.3f}",
            flush=True,
        )
        if args.png:
            print("   figure:", figure(model, data, name, args.real, Path(args.png)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
