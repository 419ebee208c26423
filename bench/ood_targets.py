"""Issue 11's targets on one trained model: which density pixel map and which distance-to-sigma
conversion flag the simulated devices, chosen on half of the device cases, reported on the rest.

    python bench/ood_targets.py select   [--json out.json]   # variants of the pixel map / sigma
    python bench/ood_targets.py score    [--json out.json]   # per-image score, sigma conversion
    python bench/ood_targets.py detector [--json out.json]   # the default detector, end to end

Data: a paired folder with ``train`` / ``val`` / ``test`` / ``ood`` splits and label masks
(default ``/work/runs/phantom256v2``), the model ``data_samples/pretrained.pt`` (its last
trained stage; v3 since session 17, shipped with its detector), the real radiographs of ``--real``.

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

``score`` (session 17): the densities the checkpoint carries, one pass per image of ``val``,
``test``, the device cases and the real radiographs (cached in ``--cache``); per-image
statistics (the pooled distance; quantiles of the pixel map ``u`` over the body; the contrast
``Q_hi(u) / Q_lo(u)`` inside the predicted lung field ``erode(mu > t, e)``), each alone and
combined with the pooled distance (largest validation z-score of the logs, or smallest
empirical validation p-value; validation scores leave-one-out), per-image AUROC of the device
cases against the ``test`` images, both split into halves by sorted id (tune: even positions);
then the conversions ``sigma_ref * gain * max(u / u_ref - offset, 0) ** power`` on a grid with
their validation inflation (mean total / aleatoric sigma). Choices on the tune half only: the
per-image score with the best tune AUROC among those that keep every real radiograph above the
test median and flag at most 5 % + 2 standard errors of the test images; the conversion with
the best worst-case tune AUROC of the total map at inflation <= ``--max-inflation``.

``detector``: the detector the checkpoint carries (``--refit``: ``fit_ood_detector`` with its
defaults), its maps, per-image scores (device cases against ``test``, all and by half;
threshold the 95th percentile of ``val``), the flagged fractions, the real radiographs against
the test median, and the cost of the detector's pass as a ratio to one deterministic pass
(``ood.time_costs``, fastest of ``--rounds``).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from darkfield_nb import checkpoint
from darkfield_nb.data import PairedDataset
from darkfield_nb.epistemic import (
    DistanceSigma,
    GaussianDensity,
    LungContrast,
    MaxZScore,
    image_auroc,
    patch_features,
)
from darkfield_nb.epistemic.density import encoder_outputs
from darkfield_nb.epistemic.store import batches, detector_from_entry, fit_ood_detector, ood_of
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


def halves(ds_ood, cases=DEVICES) -> dict[str, str]:
    """id -> "tune" | "report": alternate positions of each case sorted by id (``cases``
    None: all images of the split as one group)."""
    out = {}
    for c in cases or (None,):
        ids = sorted(r["id"] for r in ds_ood.rows if c is None or r.get("case", "") == c)
        out |= {i: "tune" if j % 2 == 0 else "report" for j, i in enumerate(ids)}
    return out


def image_table(dev_scores, dev_ids, test_scores, test_ids, half, test_half) -> dict:
    """Per-image AUROC of device cases against test images: tune half, report half, all."""
    out = {"all": image_auroc(dev_scores, test_scores)}
    for part in ("tune", "report"):
        d = [s for s, i in zip(dev_scores, dev_ids, strict=True) if half[i] == part]
        t = [s for s, i in zip(test_scores, test_ids, strict=True) if test_half[i] == part]
        out[part] = image_auroc(d, t)
    return out


def scores_table(sc: dict, dev: list[dict], test: list[dict], half, test_half) -> dict:
    """:func:`image_table` of per-split scores ``sc`` (``"dev"``, ``"test"``) of the device
    records ``dev`` and the test records ``test`` (each with an ``"id"``)."""
    ids = [r["id"] for r in dev], [r["id"] for r in test]
    return image_table(sc["dev"], ids[0], sc["test"], ids[1], half, test_half)


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


# ----------------------------------------------------------------------------- score
def collect(args, model, stage, ds) -> dict:
    """One pass per image with the checkpoint's densities: u, pooled distance, mu, aleatoric
    sigma, the body from the input alone (``fg``, as at inference), and for labelled images
    the device / lung / body-without-device masks of :func:`refs`."""
    cache = Path(args.cache)
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    ck = checkpoint.load_checkpoint(args.checkpoint)
    det = detector_from_entry(model, ood_of(ck))

    def rec(x, item=None, case=""):
        u, pooled, out = det.density.evaluate(x)
        xx = x[0, 0].numpy()
        r = {"u": u[0, 0].double().numpy(), "pooled": float(pooled[0]), "case": case}
        r |= {"mu": out.mu[0, 0].double().numpy(), "x": xx}
        r["ale"] = ggd_std(out.alpha, out.beta)[0, 0].double().numpy()
        r["fg"] = ndimage.binary_fill_holes(xx > 0.05)  # body from the input alone
        if item is not None:
            r |= {"id": item["id"]} | refs(xx, item["mask"][0].numpy())
        return r

    data = {}
    for s in ("val", "test", "ood"):
        data[s] = [
            rec(ds[s][i]["input"][None], ds[s][i], ds[s].rows[i].get("case", ""))
            for i in range(len(ds[s]))
        ]
    data["real"] = [rec(x) | {"id": n} for n, x in load_real(args.real, 256)]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(pickle.dumps(data))
    return data


def _statistics(r) -> dict[str, float]:
    u = r["u"][r["fg"]]
    st = {"pooled": r["pooled"], "body q99": np.quantile(u, 0.99), "body max": u.max()}
    for t in (0.06, 0.1, 0.15):
        for e in (3, 5):
            for hi, lo in ((0.99, 0.5), (0.999, 0.5), (0.99, 0.9)):
                lc = LungContrast(mu_threshold=t, erosion=e, q_hi=hi, q_lo=lo)
                st[f"lung t{t} e{e} Q{hi}/Q{lo}"] = float(lc(r["u"], r["mu"])[0])
    return st


def _empirical(v, ref) -> np.ndarray:
    """-log of the empirical p-value (1 + #{ref >= v}) / (n + 1)."""
    return -np.log([(1 + np.sum(np.asarray(ref) >= x)) / (len(ref) + 1) for x in v])


def _min_p(stats: dict) -> dict:
    out = {"val": []}
    val = stats["val"]
    for i in range(len(val[next(iter(val))])):  # leave-one-out for the validation images
        rest = {k: np.delete(v, i) for k, v in val.items()}
        out["val"].append(max(_empirical([v[i]], rest[k])[0] for k, v in val.items()))
    for sp in ("test", "dev", "real"):
        out[sp] = np.max([_empirical(stats[sp][k], val[k]) for k in val], 0)
    return out


def cmd_score(args) -> dict:
    model, stage, ds = load(args)
    data = collect(args, model, stage, ds)
    dev = [r for r in data["ood"] if r["case"] in DEVICES]
    half, test_half = halves(ds["ood"]), halves(ds["test"], None)
    st = {
        k: [_statistics(r) for r in v]
        for k, v in (("val", data["val"]), ("test", data["test"]), ("dev", dev))
    } | {"real": [_statistics(r) for r in data["real"]]}
    names = list(st["val"][0])

    def col(sp, k):
        return np.array([s[k] for s in st[sp]], dtype=np.float64)

    se = float(np.sqrt(0.05 * 0.95 / len(data["test"])))
    rows = []
    variants = [(k, "alone", [k]) for k in names]
    variants += [
        (f"pooled + {k}", how, ["pooled", k]) for k in names[1:] for how in ("max z", "min p")
    ]
    for name, how, keys in variants:
        stats = {sp: {k: col(sp, k) for k in keys} for sp in st}
        if how == "alone":
            sc = {sp: stats[sp][keys[0]] for sp in st}
        elif how == "min p":
            sc = _min_p(stats)
        else:
            score, loo = MaxZScore.calibrate(stats["val"])
            sc = {sp: score(stats[sp]) for sp in ("test", "dev", "real")} | {"val": loo}
        t = scores_table(sc, dev, data["test"], half, test_half)
        thr = np.quantile(sc["val"], 0.95)
        med = np.median(sc["test"])
        row = {
            "score": name,
            "combine": how,
            "auroc": t,
            "real_above": int(np.sum(np.asarray(sc["real"]) > med)),
        }
        row["flagged_test"] = float(np.mean(np.asarray(sc["test"]) > thr))
        row["flagged_dev"] = float(np.mean(np.asarray(sc["dev"]) > thr))
        row["flagged_real"] = float(np.mean(np.asarray(sc["real"]) > thr))
        rows.append(row)
        print(
            f"{name + ' [' + how + ']':44s} tune {t['tune']:.3f} report {t['report']:.3f} all "
            f"{t['all']:.3f} | real > median {row['real_above']}/4 | flagged test "
            f"{row['flagged_test']:.3f} devices {row['flagged_dev']:.2f}",
            flush=True,
        )
    ok = [
        r
        for r in rows
        if r["real_above"] == len(data["real"]) and r["flagged_test"] <= 0.05 + 2 * se
    ]
    pick = max(ok, key=lambda r: r["auroc"]["tune"])
    print(f"chosen on the tune half: {pick['score']} [{pick['combine']}]")
    return {"image": rows, "chosen_image": pick, "conversion": conversions(args, data, dev, half)}


def conversions(args, data, dev, half) -> dict:
    """Total-map AUROCs and validation inflation of power-law and hinge conversions."""
    u_val = np.concatenate([r["u"].ravel() for r in data["val"]])
    a_val = np.concatenate([r["ale"].ravel() for r in data["val"]])
    grid = [(q, p, 0.0, 1.0) for q in (0.5, 0.75, 0.9, 0.95) for p in (1.0, 2.0, 3.0, 4.0)]
    grid += [
        (q, p, 1.0, g)
        for q in (0.5, 0.75, 0.9, 0.95, 0.99)
        for p in (1.0, 2.0, 3.0)
        for g in (0.3, 1.0, 3.0, 10.0)
    ]
    rows = []
    for q, p, off, g in grid:
        conv = DistanceSigma.calibrate(u_val, a_val, q, p, offset=off, gain=g)
        tot = [np.sqrt(r["ale"] ** 2 + conv(r["u"]) ** 2) for r in dev]
        rows.append(
            {
                "conversion": conv.to_dict(),
                "inflation": conv.inflation(u_val, a_val),
                "table": case_table(tot, dev, half),
            }
        )
    out = {"grid": rows, "chosen": {}}
    for lim in sorted({1.05, 1.1, 1.2, 1.5, args.max_inflation}):
        best = max((r for r in rows if r["inflation"] <= lim), key=lambda r: worst(r["table"]))
        out["chosen"][str(lim)] = best
        c = best["conversion"]
        print(
            f"inflation <= {lim}: q {c['quantile']} power {c['power']} offset {c['offset']} "
            f"gain {c['gain']}: inflation {best['inflation']:.3f}, worst tune "
            f"{worst(best['table']):.3f} | tune {fmt(best['table'], 'tune')} || report "
            f"{fmt(best['table'], 'report')}"
        )
    return out


# ----------------------------------------------------------------------------- detector
def cmd_detector(args) -> dict:
    model, stage, ds = load(args)
    t0 = time.perf_counter()
    entry = ood_of(checkpoint.load_checkpoint(args.checkpoint))
    if args.refit or entry is None:
        entry = fit_ood_detector(model, args.data, device="cpu", stage=stage)
        print(f"fitted in {time.perf_counter() - t0:.0f} s")
    det = detector_from_entry(model, entry)
    print(f"conversion {det.conversion}; per-image score {det.image_score}")
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
    scores, u_val, a_val = {}, [], []
    for s in ("val", "test", "ood"):
        got = []
        for x in batches(ds[s]):
            p = det.predict(x)
            got.append(p.score)
            if s == "val":
                u_val.append(p.distance.double().numpy().ravel())
                a_val.append(p.aleatoric.double().numpy().ravel())
        scores[s] = np.concatenate(got)
    cases = [r.get("case", "") for r in ds["ood"].rows]
    is_dev = [c in DEVICES for c in cases]
    dev = scores["ood"][is_dev]
    dev_ids = [r["id"] for r, d in zip(ds["ood"].rows, is_dev, strict=True) if d]
    test_ids = [r["id"] for r in ds["test"].rows]
    real = {n: float(det.score(x)[0]) for n, x in load_real(args.real, 256)}
    thr = det.threshold
    flagged = {s: float(thr.flag(v).mean()) for s, v in scores.items()}
    flagged["devices"] = float(thr.flag(dev).mean())
    flagged["real"] = float(thr.flag(list(real.values())).mean())
    m = len(scores["test"])
    out = {
        "pixel_auroc": tables,
        "image_auroc": image_table(
            dev, dev_ids, scores["test"], test_ids, half, halves(ds["test"], None)
        ),
        "image_auroc_case": {
            c: image_auroc(scores["ood"][[k == c for k in cases]], scores["test"]) for c in DEVICES
        },
        "flagged": flagged,
        "flagged_test_se": float(np.sqrt(0.05 * 0.95 / m)),
        "real": {n: rank_vs_median(v, scores["test"]) for n, v in real.items()},
        "conversion": det.conversion.to_dict(),
        "inflation_val": det.conversion.inflation(np.concatenate(u_val), np.concatenate(a_val)),
    }
    ia = out["image_auroc"]
    print(
        f"per image: AUROC tune {ia['tune']:.3f} report {ia['report']:.3f} all {ia['all']:.3f}"
        f" (device cases against test), per case {out['image_auroc_case']}; flagged {flagged}"
        f" (test sampling SE {out['flagged_test_se']:.3f}); validation inflation of the total"
        f" map {out['inflation_val']:.3f}"
    )
    for n, r in out["real"].items():
        print(f"  {n}: percentile {r['percentile']:.2f} of test, above median {r['above_median']}")
    x0 = ds["test"][0]["input"][None]
    out["cost"] = time_costs(model, det, x0, samples=20, rounds=args.rounds)
    out["load_average"] = os.getloadavg()
    print(f"cost: {out['cost']} (load average {out['load_average']})")
    return out


def common_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options this script shares with ``bench/ood_transforms.py``: data, model, caches,
    real radiographs, density fit, inflation limit, threads, JSON output."""
    ap.add_argument("--data", default="/work/runs/phantom256v2")
    ap.add_argument("--checkpoint", default="data_samples/pretrained.pt")
    ap.add_argument("--cache", default=".cache/ood_targets/score.pkl", help="score step's maps")
    ap.add_argument("--real", default="/work/shared/real_cxr")
    ap.add_argument("--per-image", type=int, default=400, help="training pixel vectors per image")
    ap.add_argument("--max-inflation", type=float, default=1.2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="")
    return ap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=("select", "score", "detector"))
    common_arguments(ap)
    ap.add_argument("--refit", action="store_true", help="detector: refit instead of stored")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = {"select": cmd_select, "score": cmd_score, "detector": cmd_detector}
    out = steps[args.step](args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
        print("wrote", args.json)


if __name__ == "__main__":
    main()
