"""How much of a patient's mean lung D can a network read from the radiograph? (issue 9)

A small CNN is trained DIRECTLY for the per-image number, on many more simulated patients than
the generator saw, and scored on patients of a seed never used for training: an empirical
ceiling of what is learnable from the input for issue 9's target, Spearman(true, predicted
per-image lung D) >= 0.5.

    OMP_NUM_THREADS=1 python bench/lung_d_regressor.py [--json OUT.json] [--work DIR]

One command from a clean state: it makes the data with ``darkfield-nb make-data`` (training set
seed 31, 1500 patients; test set seed 41, 400 patients; 128 px, no OOD patients), caches the
arrays and the trained models under ``--work`` (default ``/work/runs/s21/regr``), and reuses
whatever is already there (``--variants input`` or ``mask`` trains only one, so two processes
can train the two variants side by side before a last run reports both).

- **Lung D** (as ``bench/simulator_eval.py``): the mean of the target D over the true lung
  mask, ``t = mean_{x: mask(x) & LUNG} D(x)``.
- **Training set**: the train and val splits of seed 31 (1274 of its 1500 patients;
  ``--train-splits``), of which a seeded 10 % holdout decides early stopping and the rest
  trains. The test set: all 400 patients of seed 41.
- **Model** (:class:`RegressorConfig`, 0.52 M parameters): 6 blocks of [3x3 conv stride 2,
  BN, ReLU, 3x3 conv, BN, ReLU], channels 16-32-48-64-96-128, global average pool, head
  Linear(128, 64) - ReLU - Dropout(0.2) - Linear(64, 1) predicting the standardized
  ``(t - mean) / sd`` of the training set; MSE, Adam (lr 1e-3, weight decay 1e-4, cosine
  schedule over 30 epochs), batch 32, random horizontal flips; the epoch with the best holdout
  Spearman is kept (stop after 8 epochs without a better one, not before epoch 12, or at the
  wall-clock cap). Predictions average the image and its mirror.
  Variant ``input``: the normalized attenuation image only. Variant ``mask``: the same plus the
  TRUE lung mask as a second channel (an easier, upper-bound setting).
- **References** on the same test set: ``case-type oracle``, each image predicted by its case
  type's mean lung D on the training set (knows the disease label); ``ridge``, ridge regression
  of ``log t`` on the twelve global input descriptors of ``bench/lung_d_information.py``
  (measured with the true lung and heart masks), fitted on the training set.
- **Figures**: Spearman with a 95 % percentile bootstrap interval over test patients (2000
  resamples, one image per patient), Pearson, per case the mean true and predicted lung D and
  the within-case Spearman; the Spearman on the training images themselves (fit).
- **Ceiling** (``bench/lung_d_ceiling.py``'s first, on this test set): the lung D of the same
  400 patients simulated again with the dark-field coefficient fixed at its mean: what a
  predictor that saw everything but each patient's coefficient would reach.

More training data (every image of further seeds joins the training set; the references are
then fitted on the larger set too):

    OMP_NUM_THREADS=1 python bench/lung_d_regressor.py --variants input --extra-train 32:1500
    OMP_NUM_THREADS=1 python bench/lung_d_regressor.py --variants input \
        --extra-train 32:1500 33:1500 34:1500 --max-epochs 20 --max-minutes 17

Seen on 2026-11-26 (CPU, 2 shared cores, one thread per model, two or three models training
side by side), seed-41 test set, 400 patients (Spearman [bootstrap 95 % interval], Pearson):

- CNN, input only, 1274 training images: 0.258 [0.158, 0.348], 0.375 (21 epochs, 8.8 min;
  fit-set Spearman 0.531: it overfits);
- CNN, input + true lung mask, 1274: 0.236 [0.132, 0.331], 0.381 (21 epochs, 9.2 min);
- CNN, input only, 2774 (+ seed 32): 0.338 [0.239, 0.427], 0.483 (24 epochs, 10.9 min);
- CNN, input only, 5774 (+ seeds 32-34): **0.472 [0.381, 0.553]**, 0.582 (20 epochs,
  8.9 min); per case mean true / predicted: emphysema 0.203 / 0.223, pneumothorax
  0.173 / 0.177, healthy 0.250 / 0.255; training seed 1 (``--seed 1``: other holdout, other
  initialization) 0.464 [0.374, 0.543], 0.545 (20 epochs, 10.4 min);
- case-type oracle 0.431 [0.337, 0.513]; ridge on the descriptors 0.279 [0.174, 0.371];
  all but the coefficient 0.675 [0.607, 0.733] (the ceiling).

The learnable part grows with the number of training images and has not levelled off at 5774:
the target (0.5) lies inside the interval of the largest run and below the 0.675 ceiling.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from scipy.stats import pearsonr, spearmanr
from sklearn.linear_model import RidgeCV

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.lung_d_information import descriptors  # noqa: E402
from darkfield_nb.data import PairedDataset  # noqa: E402
from darkfield_nb.hardware import pick_device  # noqa: E402
from darkfield_nb.labels import LUNG, has_label  # noqa: E402
from darkfield_nb.level import LevelConfig, LevelNet, predict_standardized  # noqa: E402
from darkfield_nb.level.fit import LevelData, train_level_net  # noqa: E402
from darkfield_nb.physics import generate_dataset, materials  # noqa: E402

ID_SPLITS = ["train", "val", "test"]
VARIANTS = ("input", "mask")
PENALTIES = np.logspace(-2, 4, 13)


@dataclass
class DataSpec:
    """One simulated set made by ``darkfield-nb make-data``."""

    seed: int
    patients: int
    size: int = 128

    def folder(self, work: Path) -> Path:
        return work / f"data_seed{self.seed}_n{self.patients}_{self.size}px"


#: the regressor is the library's lung-level network and its training (darkfield_nb.level)
RegressorConfig = LevelConfig
Regressor = LevelNet


def make_data(spec: DataSpec, work: Path) -> Path:
    """The folder of ``spec``, made with ``darkfield-nb make-data`` unless it already exists."""
    out = spec.folder(work)
    if (out / "manifest.csv").exists():
        return out
    cmd = [sys.executable, "-m", "darkfield_nb", "make-data", "--out", str(out)]
    cmd += ["--patients", str(spec.patients), "--ood", "0", "--size", str(spec.size)]
    cmd += ["--seed", str(spec.seed), "--quiet", "--overwrite"]
    print("making", out, flush=True)
    subprocess.run(cmd, check=True)
    return out


def make_fixed_coefficient(spec: DataSpec, work: Path) -> Path:
    """The patients of ``spec`` simulated again with every lung's dark-field coefficient fixed
    at its mean (``materials.EPSILON_LUNG_SD_PER_M = 0``; the draw still consumes the
    generator, so anatomy, disease, framing and display are the same), as in
    ``bench/lung_d_ceiling.py``."""
    out = work / (spec.folder(work).name + "_fixedcoef")
    if (out / "manifest.csv").exists():
        return out
    print("making", out, flush=True)
    sd = materials.EPSILON_LUNG_SD_PER_M
    materials.EPSILON_LUNG_SD_PER_M = 0.0
    try:
        generate_dataset(out, spec.patients, spec.size, spec.seed, ood_patients=0, progress=False)
    finally:
        materials.EPSILON_LUNG_SD_PER_M = sd
    return out


def load_arrays(root: Path) -> dict[str, np.ndarray]:
    """Per in-distribution image: input (N, H, W), lung mask, true lung D, case, patient, split,
    the twelve input descriptors; cached as ``arrays.npz`` inside ``root``."""
    cache = root / "arrays.npz"
    if cache.exists():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    with open(root / "manifest.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    ds = PairedDataset(root, split=ID_SPLITS, pad_multiple=1)
    keys = ("x", "lung", "true", "case", "patient", "split", "desc")
    out: dict[str, list] = {k: [] for k in keys}
    for i in range(len(ds)):
        item = ds[i]
        mask = item["mask"][0].numpy().astype(np.int64)
        lung = has_label(mask, LUNG)
        if not lung.any():
            raise ValueError(f"{root}: image {item['id']} has no lung pixel in its mask")
        x = item["input"][0].numpy()
        out["x"].append(x.astype(np.float32))
        out["lung"].append(lung)
        out["true"].append(float(item["target"][0].numpy()[lung].mean()))
        out["case"].append(rows[item["id"]]["case"])
        out["patient"].append(item["patient"])
        out["split"].append(item["split"])
        out["desc"].append(descriptors(x, mask))
    arrays = {k: np.asarray(v) for k, v in out.items()}
    np.savez(cache, **arrays)
    return arrays


def inputs(a: dict[str, np.ndarray], variant: str) -> torch.Tensor:
    """(N, C, H, W): the normalized attenuation image, plus the true lung mask for ``mask``."""
    x = torch.from_numpy(a["x"]).float()[:, None]
    if variant == "mask":
        x = torch.cat([x, torch.from_numpy(a["lung"]).float()[:, None]], 1)
    return x


def predict(model: nn.Module, x: torch.Tensor, device, batch: int = 64) -> np.ndarray:
    """Model output averaged over the image and its mirror (left-right)."""
    return predict_standardized(model, x, device, batch)


def train(
    a: dict[str, np.ndarray], variant: str, cfg: RegressorConfig, device
) -> tuple[nn.Module, dict]:
    """``darkfield_nb.level.fit.train_level_net`` on the training set (minus its seeded
    holdout; the best holdout Spearman is kept)."""
    data = LevelData(inputs(a, variant).numpy(), a["true"], a["patient"])
    model, info = train_level_net(data, cfg, device=device)
    return model.to(device), info


def trained(
    a: dict[str, np.ndarray], variant: str, cfg: RegressorConfig, work: Path, device, tag: str
):
    """The model of ``variant``: loaded from ``work/models`` when its config matches, else
    trained and saved there."""
    seed = f"_seed{cfg.seed}" if cfg.seed else ""
    path = work / "models" / f"regressor_{variant}_{tag}{seed}.pt"
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if saved["config"] == asdict(cfg):
            model = Regressor(2 if variant == "mask" else 1, cfg)
            model.load_state_dict(saved["state"])
            return model.to(device), saved["info"]
        print(f"{path}: saved with another config, training again", flush=True)
    model, info = train(a, variant, cfg, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    torch.save({"config": asdict(cfg), "state": state, "info": info}, path)
    return model, info


def bootstrap_spearman(t: np.ndarray, p: np.ndarray, n: int = 2000, seed: int = 0):
    """95 % percentile interval of Spearman over patients resampled with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(t), size=(n, len(t)))
    rhos = [spearmanr(t[i], p[i])[0] for i in idx]
    return [float(v) for v in np.percentile(rhos, [2.5, 97.5])]


def figures(t: np.ndarray, p: np.ndarray, case: np.ndarray) -> dict:
    """Spearman (bootstrap interval), Pearson, per-case means and within-case Spearman."""
    per_case = {}
    for c in np.unique(case):
        k = case == c
        rho = spearmanr(t[k], p[k])[0] if k.sum() > 2 and np.ptp(p[k]) > 0 else float("nan")
        per_case[str(c)] = {
            "n": int(k.sum()),
            "true": float(t[k].mean()),
            "pred": float(p[k].mean()),
            "spearman": float(rho),
        }
    return {
        "spearman": float(spearmanr(t, p)[0]),
        "spearman_ci95": bootstrap_spearman(t, p),
        "pearson": float(pearsonr(t, p)[0]),
        "per_case": per_case,
    }


def references(fit: dict, test: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(test, fit) predictions of the case-type oracle and the descriptor ridge."""
    means = {c: fit["true"][fit["case"] == c].mean() for c in np.unique(fit["case"])}
    if missing := set(np.unique(test["case"])) - set(means):
        raise ValueError(f"test cases {sorted(missing)} do not occur in the training set")
    oracle = (np.array([means[c] for c in test["case"]]), np.array([means[c] for c in fit["case"]]))
    mu, sd = fit["desc"].mean(0), fit["desc"].std(0) + 1e-12
    r = RidgeCV(alphas=PENALTIES).fit((fit["desc"] - mu) / sd, np.log(fit["true"]))
    ridge = (
        np.exp(r.predict((test["desc"] - mu) / sd)),
        np.exp(r.predict((fit["desc"] - mu) / sd)),
    )
    return {"case-type oracle": oracle, "ridge on 12 descriptors (true masks)": ridge}


def table(results: dict) -> str:
    """Markdown tables: overall figures, then mean true / predicted and within-case Spearman."""
    names = list(results["predictors"])
    lines = ["| predictor | Spearman [95 % CI] | Pearson | fit-set Spearman |", "|---|---|---|---|"]
    for name in names:
        r = results["predictors"][name]
        lo, hi = r["spearman_ci95"]
        lines.append(
            f"| {name} | {r['spearman']:.3f} [{lo:.3f}, {hi:.3f}] | {r['pearson']:.3f} "
            f"| {r['fit_spearman']:.3f} |".replace("| nan |", "| - |")
        )
    cases = list(results["predictors"][names[0]]["per_case"])
    lines += [
        "",
        "| case (n) | true | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for c in cases:
        pc = [results["predictors"][k]["per_case"][c] for k in names]
        cells = [
            f"{q['pred']:.3f} ({q['spearman']:+.2f})"
            if np.isfinite(q["spearman"])
            else f"{q['pred']:.3f} (-)"
            for q in pc
        ]
        lines.append(f"| {c} ({pc[0]['n']}) | {pc[0]['true']:.3f} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Per case: mean predicted lung D (within-case Spearman).")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/work/runs/s21/regr"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--variants", default="input,mask")
    ap.add_argument("--train-patients", type=int, default=1500)
    ap.add_argument("--test-patients", type=int, default=400)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--train-splits", default="train,val", help="splits of seed 31 to train on")
    ap.add_argument(
        "--extra-train",
        nargs="*",
        default=[],
        metavar="SEED:PATIENTS",
        help="more sets whose every image joins the training set (e.g. 32:1500)",
    )
    ap.add_argument("--max-minutes", type=float, default=RegressorConfig.max_minutes)
    ap.add_argument("--max-epochs", type=int, default=RegressorConfig.max_epochs)
    ap.add_argument("--seed", type=int, default=RegressorConfig.seed, help="training seed")
    ap.add_argument("--device", default="cpu", help='"auto" picks a GPU when there is one')
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    variants = [v for v in args.variants.split(",") if v]
    if bad := [v for v in variants if v not in VARIANTS]:
        raise SystemExit(f"--variants: unknown {bad}; choose from {VARIANTS}")
    cfg = RegressorConfig(
        max_minutes=args.max_minutes,
        max_epochs=args.max_epochs,
        seed=args.seed,
        min_epochs=min(RegressorConfig.min_epochs, args.max_epochs),
    )
    fit_spec = DataSpec(31, args.train_patients, args.size)
    test_spec = DataSpec(41, args.test_patients, args.size)
    fit = load_arrays(make_data(fit_spec, args.work))
    keep = np.isin(fit["split"], args.train_splits.split(","))
    fit = {k: v[keep] for k, v in fit.items()}
    fit["patient"] = np.char.add("s31-", fit["patient"])
    extra = [DataSpec(*map(int, e.split(":")), args.size) for e in args.extra_train]
    for spec in extra:
        if spec.seed == 41:
            raise SystemExit("--extra-train: seed 41 is the test set")
        more = load_arrays(make_data(spec, args.work))
        more["patient"] = np.char.add(f"s{spec.seed}-", more["patient"])
        fit = {k: np.concatenate([fit[k], more[k]]) for k in fit}
    tag = "+".join(f"s{d.seed}n{d.patients}" for d in [fit_spec, *extra])
    test = load_arrays(make_data(test_spec, args.work))
    print(f"training set {len(fit['true'])} images, test set {len(test['true'])}", flush=True)
    t, case = test["true"], test["case"]
    results = {
        "train_data": [asdict(d) for d in [fit_spec, *extra]],
        "train_splits": args.train_splits,
        "test_data": asdict(test_spec),
        "config": asdict(cfg),
        "device": str(device),
        "threads": args.threads,
        "n_fit": len(fit["true"]),
        "n_test": len(t),
        "predictors": {},
        "training": {},
    }
    for v in variants:
        model, info = trained(fit, v, cfg, args.work, device, tag)
        m, sd = info["target_mean"], info["target_sd"]
        p = m + sd * predict(model, inputs(test, v), device)
        p_fit = m + sd * predict(model, inputs(fit, v), device)
        name = f"CNN, {'input only' if v == 'input' else 'input + true lung mask'}"
        if extra:
            name += f", trained on {len(fit['true'])}"
        results["predictors"][name] = figures(t, p, case)
        results["predictors"][name]["fit_spearman"] = float(spearmanr(fit["true"], p_fit)[0])
        results["training"][v] = info
    for name, (p, p_fit) in references(fit, test).items():
        results["predictors"][name] = figures(t, p, case)
        results["predictors"][name]["fit_spearman"] = float(spearmanr(fit["true"], p_fit)[0])
    blind = load_arrays(make_fixed_coefficient(test_spec, args.work))
    if not (np.array_equal(blind["lung"], test["lung"]) and np.array_equal(blind["case"], case)):
        raise RuntimeError("the fixed-coefficient test set does not repeat the test patients")
    if np.allclose(blind["true"], t):
        raise RuntimeError("fixing the dark-field coefficient did not change lung D")
    name = "all but the coefficient (same patients, coefficient fixed)"
    results["predictors"][name] = figures(t, blind["true"], case)
    results["predictors"][name]["fit_spearman"] = float("nan")
    results["table"] = table(results)
    print(results["table"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
