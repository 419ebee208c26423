"""Issue 11's targets on one trained model: which density pixel map and which distance-to-sigma
conversion flag the simulated devices, chosen on half of the device cases, reported on the rest.

    python bench/ood_targets.py select   [--json out.json]   # variants of the pixel map / sigma
    python bench/ood_targets.py detector [--json out.json]   # the default detector, end to end

Data: a paired folder with ``train`` / ``val`` / ``test`` / ``ood`` splits and label masks
(default ``/work/runs/phantom256v2``), the model ``data_samples/candidate_v2/pretrained.pt``
(its last trained stage), the real radiographs of ``--real``.

Halves: within each device case (pacemaker, cables, clips) the images sorted by id; the even
positions are the *tune* half (every choice below is made on it), the odd ones the *report*
half. Pixel AUROC: device pixels against lung pixels and against body pixels without device
(``ood.body_mask``), mean over the images of a case.

``select``: one forward pass per image; Mahalanobis distances of every encoder level's
features (``L0``..``L4``) and of the 3 x 3 patches of levels 0 and 1 (``P0``, ``P1``), fitted
on ``--per-image`` random pixel vectors of each training image; maps combined as the mean or
max of per-level distances over their training median; total maps
``sqrt(ale^2 + DistanceSigma(u)^2)`` for the conversion's quantile and power on a grid, with
the validation ``inflation`` (mean total / aleatoric sigma).

``detector``: ``epistemic.store.fit_ood_detector`` with its defaults, then its maps, per-image
scores (device cases against ``test``; threshold the 95th percentile of ``val``), the flagged
fractions, the real radiographs against the test median, and the cost of the detector's pass
as a ratio to one deterministic pass (``ood.time_costs``, fastest of ``--rounds``).
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

from darkfield_nb import checkpoint
from darkfield_nb.data import PairedDataset
from darkfield_nb.epistemic import DistanceSigma, GaussianDensity, image_auroc, patch_features
from darkfield_nb.epistemic.density import encoder_outputs
from darkfield_nb.epistemic.store import batches, detector_from_entry, fit_ood_detector
from darkfield_nb.ggd import ggd_std
from darkfield_nb.labels import DEVICE_BITS, LUNG
from darkfield_nb.ood import body_mask, load_real, pixel_auroc, rank_vs_median, time_costs

DEVICES = ("pacemaker", "cables", "clips")
REFS = ("lung", "body")
FEATURES = {"L0": (0, 1), "L1": (1, 1), "L2": (2, 1), "L3": (3, 1), "L4": (4, 1)}
FEATURES |= {"P0": (0, 3), "P1": (1, 3)}


def load(args):
    ck = checkpoint.load_checkpoint(args.checkpoint)
    model = checkpoint.generator_from_checkpoint(ck, torch.device("cpu")).eval()
    stage = int(ck.get("stages_trained", model.config.n_stages)) - 1
    ds = {
        s: PairedDataset(args.data, split=s, pad_multiple=1, check=False, load_masks=s != "train")
        for s in ("train", "val", "test", "ood")
    }
    return model, stage, ds


def halves(ds_ood) -> dict[str, str]:
    """id -> "tune" | "report": alternate positions of each device case sorted by id."""
    out = {}
    for c in DEVICES:
        ids = sorted(r["id"] for r in ds_ood.rows if r.get("case") == c)
        out |= {i: "tune" if j % 2 == 0 else "report" for j, i in enumerate(ids)}
    return out


def refs(x: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    dev = (mask & DEVICE_BITS) > 0
    return {
        "dev": dev,
        "lung": ((mask & LUNG) > 0) & ~dev,
        "body": body_mask(x, mask) & ~dev,
    }


def case_table(maps: list[np.ndarray], items: list[dict], half: dict[str, str]) -> dict:
    """{part: {case: {ref: mean AUROC}}} over the device images."""
    acc: dict = {}
    for m, it in zip(maps, items, strict=True):
        part = half[it["id"]]
        for ref in REFS:
            a = pixel_auroc(m, it["dev"], it[ref])
            acc.setdefault(part, {}).setdefault(it["case"], {}).setdefault(ref, []).append(a)
    return {
        p: {c: {r: float(np.mean(v)) for r, v in cs.items()} for c, cs in d.items()}
        for p, d in acc.items()
    }


def worst(table: dict, part: str = "tune") -> float:
    return min(table[part][c][r] for c in DEVICES for r in REFS)


def fmt(table: dict, part: str) -> str:
    return " | ".join(" / ".join(f"{table[part][c][r]:.3f}" for c in DEVICES) for r in REFS)


# ----------------------------------------------------------------------------- select
def _up(d: np.ndarray, n: int) -> np.ndarray:
    if d.shape[-1] == n:
        return d
    t = torch.from_numpy(d)[None, None]
    return F.interpolate(t, size=(n, n), mode="bilinear", align_corners=False)[0, 0].numpy()


def cmd_select(args) -> dict:
    model, stage, ds = load(args)
    levels = sorted({lv for lv, _ in FEATURES.values()})
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()

    def feats(x):
        f, out = encoder_outputs(model, x, levels, stage)
        return {k: patch_features(f[lv].double(), p) for k, (lv, p) in FEATURES.items()}, out

    train = {k: [] for k in FEATURES}
    for i in range(len(ds["train"])):
        g, _ = feats(ds["train"][i]["input"][None])
        for k, t in g.items():
            v = t[0].reshape(t.shape[1], -1).T.numpy()
            train[k].append(v[rng.choice(v.shape[0], min(args.per_image, v.shape[0]), False)])
    dens, med = {}, {}
    for k, v in train.items():
        v = np.concatenate(v)
        dens[k] = GaussianDensity.fit(v)
        med[k] = float(np.median(dens[k].distance(v)))
    print(f"fitted {len(ds['train'])} training images in {time.perf_counter() - t0:.0f} s")

    def record(split, i):
        it = ds[split][i]
        x = it["input"][None]
        g, out = feats(x)
        n = x.shape[-1]
        r = {"id": it["id"], "case": ds[split].rows[i].get("case", "")}
        for k, t in g.items():
            c, h, w = t.shape[1:]
            d = dens[k].distance(t[0].reshape(c, -1).T.numpy()).reshape(h, w)
            r[k] = _up(d, n) / med[k]
        r["ale"] = ggd_std(out.alpha, out.beta)[0, 0].double().numpy()
        return r | refs(x[0, 0].numpy(), it["mask"][0].numpy())

    val = [record("val", i) for i in range(len(ds["val"]))]
    dev = [
        record("ood", i) for i in range(len(ds["ood"])) if ds["ood"].rows[i].get("case") in DEVICES
    ]
    print(f"scored val and device images at {time.perf_counter() - t0:.0f} s")
    half = halves(ds["ood"])
    combos = {k: [k] for k in FEATURES}
    combos |= {"L0-L4": [f"L{i}" for i in range(5)], "P0+P1": ["P0", "P1"]}
    combos |= {"P0+P1+L2": ["P0", "P1", "L2"], "P0+P1+L2-L4": ["P0", "P1", "L2", "L3", "L4"]}
    rows = []
    for name, keys in combos.items():
        for how in ("mean", "max") if len(keys) > 1 else ("mean",):
            red = np.mean if how == "mean" else np.max
            t = case_table([red([r[k] for k in keys], 0) for r in dev], dev, half)
            rows.append({"map": f"{name} ({how})", "table": t})
            print(
                f"{name + ' (' + how + ')':24s} worst tune {worst(t):.3f} | tune {fmt(t, 'tune')}"
                f" || report {fmt(t, 'report')}",
                flush=True,
            )
    best = max(rows, key=lambda r: worst(r["table"]))
    print(f"chosen on the tune half: {best['map']}")
    keys = combos[best["map"].split(" (")[0]]
    red = np.mean if best["map"].endswith("(mean)") else np.max

    def u(r):
        return red([r[k] for k in keys], 0)

    u_val = np.concatenate([u(r).ravel() for r in val])
    a_val = np.concatenate([r["ale"].ravel() for r in val])
    sig = []
    for q in (0.5, 0.75, 0.9, 0.95):
        for power in (1.0, 2.0, 3.0):
            conv = DistanceSigma.calibrate(u_val, a_val, q, power)
            tot = [np.sqrt(r["ale"] ** 2 + conv(u(r)) ** 2) for r in dev]
            t = case_table(tot, dev, half)
            infl = conv.inflation(u_val, a_val)
            sig.append({"quantile": q, "power": power, "inflation": infl, "table": t})
            print(
                f"q {q:.2f} power {power:.0f}: inflation {infl:.3f}, worst tune {worst(t):.3f}"
                f" | tune {fmt(t, 'tune')} || report {fmt(t, 'report')}",
                flush=True,
            )
    ok = [s for s in sig if s["inflation"] <= args.max_inflation]
    pick = max(ok, key=lambda s: worst(s["table"])) if ok else None
    if pick:
        print(
            f"chosen (inflation <= {args.max_inflation}): q {pick['quantile']}, "
            f"power {pick['power']}"
        )
    ale = case_table([r["ale"] for r in dev], dev, half)
    print(f"aleatoric alone: tune {fmt(ale, 'tune')} || report {fmt(ale, 'report')}")
    return {"maps": rows, "chosen_map": best["map"], "sigma": sig, "aleatoric": ale}


# ----------------------------------------------------------------------------- detector
def cmd_detector(args) -> dict:
    model, stage, ds = load(args)
    t0 = time.perf_counter()
    entry = fit_ood_detector(model, args.data, device="cpu", stage=stage)
    det = detector_from_entry(model, entry)
    print(f"fitted in {time.perf_counter() - t0:.0f} s; conversion {det.conversion}")
    half = halves(ds["ood"])
    items, dmaps, tmaps, amaps = [], [], [], []
    for i in range(len(ds["ood"])):
        if ds["ood"].rows[i].get("case") not in DEVICES:
            continue
        it = ds["ood"][i]
        p = det.predict(it["input"][None])
        items.append(
            {"id": it["id"], "case": ds["ood"].rows[i]["case"]}
            | refs(it["input"][0].numpy(), it["mask"][0].numpy())
        )
        dmaps.append(p.distance[0, 0].double().numpy())
        tmaps.append(p.total[0, 0].double().numpy())
        amaps.append(p.aleatoric[0, 0].double().numpy())
    tables = {
        n: case_table(m, items, half)
        for n, m in (("epistemic", dmaps), ("total", tmaps), ("aleatoric", amaps))
    }
    for n, t in tables.items():
        for part in ("tune", "report"):
            print(f"{n:>10} {part:>6}: lung | body = {fmt(t, part)}")
    scores = {}
    for s in ("val", "test", "ood"):
        scores[s] = np.concatenate([det.density.evaluate(x)[1] for x in batches(ds[s])])
    cases = [r.get("case", "") for r in ds["ood"].rows]
    dev = scores["ood"][[c in DEVICES for c in cases]]
    real = {n: float(det.density.evaluate(x)[1][0]) for n, x in load_real(args.real, 256)}
    thr = det.threshold
    flagged = {s: float(thr.flag(v).mean()) for s, v in scores.items()}
    flagged["devices"] = float(thr.flag(dev).mean())
    m = len(scores["test"])
    out = {
        "pixel_auroc": tables,
        "image_auroc": image_auroc(dev, scores["test"]),
        "flagged": flagged,
        "flagged_test_se": float(np.sqrt(0.05 * 0.95 / m)),
        "real": {n: rank_vs_median(v, scores["test"]) for n, v in real.items()},
        "conversion": det.conversion.to_dict(),
    }
    print(
        f"per image: AUROC {out['image_auroc']:.3f} (device cases against test); flagged "
        f"{flagged} (test sampling SE {out['flagged_test_se']:.3f})"
    )
    for n, r in out["real"].items():
        print(f"  {n}: {r['over_median']:.2f}x the test median, above: {r['above_median']}")
    x0 = ds["test"][0]["input"][None]
    out["cost"] = time_costs(model, det, x0, samples=20, rounds=args.rounds)
    out["load_average"] = os.getloadavg()
    print(f"cost: {out['cost']} (load average {out['load_average']})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=("select", "detector"))
    ap.add_argument("--data", default="/work/runs/phantom256v2")
    ap.add_argument("--checkpoint", default="data_samples/candidate_v2/pretrained.pt")
    ap.add_argument("--real", default="/work/shared/real_cxr")
    ap.add_argument("--per-image", type=int, default=400, help="training pixel vectors per image")
    ap.add_argument("--max-inflation", type=float, default=1.2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = cmd_select(args) if args.step == "select" else cmd_detector(args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
        print("wrote", args.json)


if __name__ == "__main__":
    main()
