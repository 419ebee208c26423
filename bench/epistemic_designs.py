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

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from darkfield_nb.data import PairedDataset, normalize_input
from darkfield_nb.epistemic import (
    FeatureDensity,
    MultiLevelDensity,
    OODThreshold,
    Placement,
    apply_placement,
    distance_to_sigma,
    ensemble_predict,
    image_auroc,
    image_score,
    mc_strategy,
    rank_vs_median,
    set_rate,
)
from darkfield_nb.ggd import ggd_std
from darkfield_nb.io import IMAGE_SUFFIXES, read_image
from darkfield_nb.labels import DEVICE_BITS, LUNG, SPLITS
from darkfield_nb.metrics import DARKFIELD_DATA_RANGE, mse, ssim
from darkfield_nb.models import DiscriminatorConfig, GeneratorConfig, ProgressiveGenerator
from darkfield_nb.ood import pixel_auroc
from darkfield_nb.physics import generate_dataset
from darkfield_nb.train import TrainConfig, upgan_stages
from darkfield_nb.train.progressive import make_datasets
from darkfield_nb.train.stage import make_discriminator, train_stage
from darkfield_nb.uncertainty import mc_dropout_predict

SIZE = 128
DATA_SEED = 11
# name -> (placement or None for no dropout, training seed)
MODELS: dict[str, tuple[Placement | None, int]] = {
    "det_s0": (None, 0),
    "det_s1": (None, 1),
    "det_s2": (None, 2),
    "det_s3": (None, 3),
    "det_s4": (None, 4),
    "det_s5": (None, 5),  # det_s5 .. det_s9: trained because seeds 2, 3, 4 failed to train
    "det_s6": (None, 6),
    "det_s7": (None, 7),
    "det_s8": (None, 8),
    "det_s9": (None, 9),
    "dec_ch_p0.1": (Placement("decoder", 0.1, "channel"), 0),
    "dec_ch_p0.3": (Placement("decoder", 0.3, "channel"), 0),
    "dec_el_p0.3": (Placement("decoder", 0.3, "element"), 0),
    "encdec_ch_p0.3": (Placement("encoder_decoder", 0.3, "channel"), 0),
}


# Ensembles: the first five seeds as trained, and the seeds whose training did not fail (final
# validation L1 at most twice that of det_s0; seeds 2, 3, 4, 5, 7, 9 collapsed in this recipe)
ENSEMBLE_AS_TRAINED = ("det_s0", "det_s1", "det_s2", "det_s3", "det_s4")
ENSEMBLE_CANDIDATES = tuple(f"det_s{i}" for i in range(10))


def trained_ok(work: Path, names) -> list[str]:
    """Members whose final validation L1 is at most twice that of det_s0."""
    l1 = {}
    for n in names:
        meta = work / "models" / n / "meta.json"
        if meta.exists():
            l1[n] = json.loads(meta.read_text())["last_epoch"]["val_l1"]
    ref = l1.get("det_s0")
    return [n for n in names if n in l1 and ref is not None and l1[n] <= 2 * ref]


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


# ----------------------------------------------------------------------------- evaluation
def body_mask(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Body pixels of a simulated image: normalized input above 0.05 or any label bit, holes
    filled (the masks carry no body label; air outside the patient normalizes to about 0)."""
    return ndimage.binary_fill_holes((x > 0.05) | (mask != 0))


def load_real(real_dir: Path, size: int) -> list[tuple[str, torch.Tensor]]:
    """Real radiographs resized (area) to ``size`` square, normalized like the training inputs."""
    out = []
    for path in sorted(real_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        img = torch.from_numpy(read_image(path).astype(np.float32))[None, None]
        img = F.interpolate(img, size=(size, size), mode="area")
        out.append((path.name, normalize_input(img)))
    return out


class Design:
    """One epistemic design: ``predict(x)`` gives (mean, aleatoric, epistemic, total, extra)
    with ``extra`` the per-pixel raw score (distance) and per-image distance for densities."""

    def __init__(self, name: str, trained: str, kind: str, predict) -> None:
        self.name, self.trained, self.kind, self.predict = name, trained, kind, predict


def mc_design(work: Path, name: str, model_name: str, where: str, rate: float, samples: int):
    model = load_model(work, model_name)
    set_rate(model, rate, where=where)
    strategy = mc_strategy(model)

    def predict(x):
        r = mc_dropout_predict(model, x, samples=samples, seed=0, strategy=strategy)
        return r.mean, r.aleatoric, r.epistemic, r.total, None

    return Design(name, model_name, f"MC T={samples}", predict)


def ensemble_design(work: Path, names: list[str]):
    members = [load_model(work, n) for n in names]

    def predict(x):
        r = ensemble_predict(members, x)
        return r.mean, r.aleatoric, r.epistemic, r.total, None

    label = f"ensemble K={len(names)} ({','.join(n.removeprefix('det_') for n in names)})"
    return Design(label, "+".join(names), f"K={len(names)}", predict)


def density_design(work: Path, level: int | tuple[int, ...], train_ds, val_ds):
    model = load_model(work, "det_s0")
    train = [train_ds[i]["input"][None] for i in range(len(train_ds))]
    if isinstance(level, tuple):
        dens = MultiLevelDensity(model, levels=level).fit(train)
    else:
        dens = FeatureDensity(model, level=level).fit(train)
    # sigma scale: 95th percentile of validation pixel distances and median aleatoric sigma
    dists, sig = [], []
    for i in range(len(val_ds)):
        x = val_ds[i]["input"][None]
        dists.append(dens.pixel_map(x).flatten())
        with torch.no_grad():
            out = model(x)[-1]
        sig.append(ggd_std(out.alpha, out.beta).flatten())
    d_ref = float(torch.quantile(torch.cat(dists).double(), 0.95))
    s_ref = float(torch.cat(sig).median())

    multi = isinstance(dens, MultiLevelDensity)

    def predict(x):
        if multi:  # features, distances and the prediction from one forward pass
            d, img, out = dens.evaluate(x)
        else:
            with torch.no_grad():
                out = model(x)[-1]
            d, img = dens.pixel_map(x), dens.image_distance(x)
        ale = ggd_std(out.alpha, out.beta)
        epi = distance_to_sigma(d, d_ref, s_ref)
        return out.mu, ale, epi, (ale**2 + epi**2).sqrt(), (d, img)

    if isinstance(level, tuple):
        lvl = f"levels {level[0]}-{level[-1]}"
    else:
        lvl = "bottleneck" if level == -1 else f"level {level}"
    return Design(f"Mahalanobis {lvl}", "det_s0", "1 pass + density", predict)


def time_designs(designs: list[Design], base, size: int, repeats: int) -> dict[str, float]:
    """Fastest of ``repeats`` round-robin runs of each design and of one deterministic pass of
    ``base`` at ``size`` px; returns each design's ratio to that pass."""
    x = normalize_input(torch.rand(1, 1, size, size))
    times: dict[str, list[float]] = {d.name: [] for d in designs} | {"forward": []}
    with torch.no_grad():
        base(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            base(x)
            times["forward"].append(time.perf_counter() - t0)
            for d in designs:
                t0 = time.perf_counter()
                d.predict(x)
                times[d.name].append(time.perf_counter() - t0)
    fwd = min(times.pop("forward"))
    return {"forward_s": fwd} | {k: min(v) / fwd for k, v in times.items()}


def _np(t) -> np.ndarray:
    return t[0, 0].detach().double().numpy()


def score_design(d: Design, ood_ds, test_ds, val_ds, real) -> dict:
    """Pixel AUROCs per OOD image, per-image scores of every split, val quality."""
    res: dict = {"pixel": [], "scores": {}}
    for i in range(len(ood_ds)):
        item = ood_ds[i]
        x, mask = item["input"][None], item["mask"][0].numpy()
        mean, ale, epi, tot, extra = d.predict(x)
        dev = (mask & DEVICE_BITS) > 0
        lung = ((mask & LUNG) > 0) & ~dev
        body = body_mask(item["input"][0].numpy(), mask) & ~dev
        raw = _np(extra[0]) if extra is not None else _np(epi)
        row = {"case": ood_ds.rows[i]["case"]}
        for name, m in (("epi", raw), ("tot", _np(tot))):
            row[f"{name}_lung"] = pixel_auroc(m, dev, lung)
            row[f"{name}_body"] = pixel_auroc(m, dev, body)
        res["pixel"].append(row)
        res["scores"].setdefault("ood", []).append(_image_scores(epi, extra))
    ssim_v, mse_v, ratio = [], [], []
    for split, ds in (("test", test_ds), ("val", val_ds)):
        for i in range(len(ds)):
            item = ds[i]
            mean, ale, epi, tot, extra = d.predict(item["input"][None])
            res["scores"].setdefault(split, []).append(_image_scores(epi, extra))
            if split == "val":
                tgt = item["target"][None]
                ssim_v.append(float(ssim(tgt, mean.float(), data_range=DARKFIELD_DATA_RANGE)))
                mse_v.append(float(mse(tgt, mean.float())))
                ratio.append(float(epi.mean() / ale.mean()))
    for name, x in real:
        _, _, epi, _, extra = d.predict(x)
        res["scores"].setdefault("real", []).append(_image_scores(epi, extra) | {"name": name})
    res["val_ssim"], res["val_mse"] = float(np.mean(ssim_v)), float(np.mean(mse_v))
    res["epi_over_ale_val"] = float(np.mean(ratio))
    return res


def _image_scores(epi, extra) -> dict:
    """Per-image scores: q99 of the epistemic map (and of the distance map, plus the pooled
    distance, for densities)."""
    out = {"q99_epi": image_score(epi[0, 0], q=0.99), "mean_epi": float(epi.mean())}
    if extra is not None:
        out["q99_dist"] = image_score(extra[0][0, 0], q=0.99)
        out["pooled_dist"] = float(extra[1][0])
    return out


def summarize(name: str, r: dict, score_key: str) -> dict:
    """Case means of the pixel AUROCs; per-image AUROC, calibrated flags, real-image ranks."""
    cases = ("pacemaker", "cables", "clips")
    s = {"design": name}
    for col in ("epi_lung", "epi_body", "tot_lung", "tot_body"):
        s[col] = {c: float(np.mean([p[col] for p in r["pixel"] if p["case"] == c])) for c in cases}
    sc = {k: np.array([v[score_key] for v in rows]) for k, rows in r["scores"].items()}
    s["score"] = score_key
    s["image_auroc"] = image_auroc(sc["ood"], sc["test"])
    thr = OODThreshold.calibrate(sc["val"], 0.05, score_key)
    s["threshold"] = thr.threshold
    s["flagged"] = {k: float(thr.flag(v).mean()) for k, v in sc.items()}
    s["real"] = [
        {"name": row["name"]} | rank_vs_median(row[score_key], sc["test"])
        for row in r["scores"]["real"]
    ]
    s["real_above_median"] = sum(x["above_median"] for x in s["real"])
    for k in ("val_ssim", "val_mse", "epi_over_ale_val"):
        s[k] = r[k]
    return s


def build_designs(work: Path, samples: int, train_ds, val_ds) -> list[Design]:
    have = {n for n in MODELS if (work / "models" / n / "generator.pt").exists()}
    designs = []
    mc = [
        ("dec_ch_p0.1", "decoder", 0.1),
        ("dec_ch_p0.3", "decoder", 0.1),
        ("dec_ch_p0.3", "decoder", 0.3),
        ("dec_ch_p0.3", "last", 0.3),
        ("dec_ch_p0.3", "bottleneck", 0.3),
        ("dec_ch_p0.3", "decoder", 0.5),
        ("dec_el_p0.3", "decoder", 0.3),
        ("encdec_ch_p0.3", "encoder_decoder", 0.3),
    ]
    for model_name, where, rate in mc:
        if model_name in have:
            name = f"MC {where} p{rate} ({model_name})"
            designs.append(mc_design(work, name, model_name, where, rate, samples))
    for group in (ENSEMBLE_AS_TRAINED, trained_ok(work, ENSEMBLE_CANDIDATES)[:5]):
        members = [n for n in group if n in have]
        if len(members) >= 2:
            designs.append(ensemble_design(work, members))
    if "det_s0" in have:
        designs.append(density_design(work, -1, train_ds, val_ds))
        designs.append(density_design(work, 2, train_ds, val_ds))
        designs.append(density_design(work, (0, 1, 2, 3, 4), train_ds, val_ds))
    return designs


def cmd_eval(args) -> None:
    data = args.work / "data"
    split = {s: PairedDataset(data, split=s, pad_multiple=1, check=False) for s in SPLITS}
    real = load_real(args.real_dir, SIZE) if args.real_dir.is_dir() else []
    designs = build_designs(args.work, args.samples, split["train"], split["val"])
    if args.designs:
        designs = [d for d in designs if any(k in d.name for k in args.designs)]
    base = load_model(args.work, "det_s0")
    cost = time_designs(designs, base, 256, args.repeats)
    print(f"one deterministic pass at 256 px: {cost['forward_s'] * 1e3:.1f} ms", flush=True)
    rows = []
    for d in designs:
        r = score_design(d, split["ood"], split["test"], split["val"], real)
        keys = ["q99_epi"] + (["q99_dist", "pooled_dist"] if d.kind.endswith("density") else [])
        for key in keys:
            s = summarize(d.name, r, key) | {"trained": d.trained, "cost": cost[d.name]}
            rows.append(s)
            print(json.dumps(s, default=float), flush=True)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load": os.getloadavg(),
        "threads": torch.get_num_threads(),
        "forward_256_s": cost["forward_s"],
        "n": {k: len(v) for k, v in split.items()} | {"real": len(real)},
    }
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=float))
    text = markdown(rows, meta)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


def cmd_time(args) -> None:
    """Only the cost table: every design timed round-robin at 256 px, ``--repeats`` rounds."""
    data = args.work / "data"
    split = {s: PairedDataset(data, split=s, pad_multiple=1, check=False) for s in SPLITS}
    designs = build_designs(args.work, args.samples, split["train"], split["val"])
    if args.designs:
        designs = [d for d in designs if any(k in d.name for k in args.designs)]
    cost = time_designs(designs, load_model(args.work, "det_s0"), 256, args.repeats)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": os.getloadavg()}
    print(json.dumps({"meta": meta, "cost": cost}, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "cost": cost}, indent=1))


def _c(d: dict) -> str:
    return " / ".join(f"{v:.2f}" for v in d.values())


def markdown(rows: list[dict], meta: dict) -> str:
    """Two tables: pixel AUROCs; per-image score, cost and quality."""
    lines = [
        "| design | trained | epistemic vs lung | epistemic vs body | total vs lung "
        "| total vs body |",
        "|---|---|---|---|---|---|",
    ]
    seen = set()
    for r in rows:
        if r["design"] in seen:
            continue
        seen.add(r["design"])
        lines.append(
            f"| {r['design']} | {r['trained']} | {_c(r['epi_lung'])} | {_c(r['epi_body'])} "
            f"| {_c(r['tot_lung'])} | {_c(r['tot_body'])} |"
        )
    lines += [
        "",
        "| design | per-image score | image AUROC | flagged val / test / OOD "
        "| real > ID median | real / ID median | cost (x 1 pass) | val SSIM | val MSE "
        "| epi / ale (val) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f = r["flagged"]
        ratios = ", ".join(f"{x['over_median']:.2f}" for x in r["real"])
        lines.append(
            f"| {r['design']} | {r['score']} | {r['image_auroc']:.3f} | "
            f"{f['val']:.2f} / {f['test']:.2f} / {f['ood']:.2f} | "
            f"{r['real_above_median']}/{len(r['real'])} | {ratios} | {r['cost']:.1f}x | "
            f"{r['val_ssim']:.3f} | {r['val_mse']:.4f} | {r['epi_over_ale_val']:.3f} |"
        )
    lines.append("")
    lines.append(
        f"{meta['date']}; one pass at 256 px {meta['forward_256_s'] * 1e3:.0f} ms; "
        f"threads {meta['threads']}; load {tuple(round(v, 1) for v in meta['load'])}; "
        f"images {meta['n']}"
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=("data", "train", "eval", "time"))
    ap.add_argument("--work", type=Path, default=Path(".cache/epistemic_designs"))
    ap.add_argument("--patients", type=int, default=80)
    ap.add_argument("--ood", type=int, default=18)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--only", nargs="*", default=None, help="model names (train step)")
    ap.add_argument("--designs", nargs="*", default=None, help="eval: name substrings")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--real-dir", type=Path, default=Path("/work/shared/real_cxr"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.step == "data":
        cmd_data(args)
    elif args.step == "time":
        cmd_time(args)
    elif args.step == "train":
        cmd_train(args)
    else:
        cmd_eval(args)


if __name__ == "__main__":
    main()
