"""Issue 11's targets on one trained model: which density pixel map and which distance-to-sigma
conversion flag the simulated devices, chosen on half of the device cases, reported on the rest.

    python bench/ood_targets.py select   [--json out.json]   # variants of the pixel map / sigma
    python bench/ood_targets.py score    [--json out.json]   # per-image score, sigma conversion
    python bench/ood_targets.py detector [--json out.json]   # the default detector, end to end
    python bench/ood_targets.py transform [--json out.json]  # spatial transforms of the map
    python bench/ood_targets.py levels   (3 times: fit, score, evaluate)  # other pixel densities

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

``transform`` (session 18): on the cached maps of ``score`` (``--cache``; no network pass), the
pixel map ``u`` through spatially varying transforms (a per-image monotone rescaling leaves a
per-image pixel AUROC unchanged): gaussian smoothing, local background removal ``u - G_S(u)``
and ``u / G_S(u)``, white top-hats ``u - opening_k(u)`` (alone, added to ``u``, after a 3 x 3
dilation), ``u`` over a local opening, a Hessian ridge filter, ``u`` over its validation median
at the same input or predicted value; per transform the pixel AUROC tables (with the cost per
image), the pixel map with the best worst-case tune AUROC; the total map of ``u`` and of that
map (hinge conversions, best worst-case tune AUROC at validation inflation <= ``--max-inflation``);
per-image scores: the pooled distance max-z-combined with a local statistic (Q99/Q50,
Q99.9/Q50, top-k mean / Q50, Q99.9, top-k mean, the largest connected component above the
validation 99th / 99.9th percentile) of ``u`` or a top-hat of it over the predicted
lung field ``erode(mu > 0.15, 5)`` or that field dilated by 10 / 20 px inside the body; chosen by
the rule of ``score``; and which device pixels ``u`` misses (shown in the input or not).

``levels`` (session 18): other cheap pixel densities (level-1 and level-2 features, 3 x 3
patches of level 1, dilated 3 x 3 patches of level 0), fitted like the shipped one, alone and
as the max / mean with ``u``; run three times (fit, score, evaluate; each step a few minutes).
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
        t = image_table(
            sc["dev"],
            [r["id"] for r in dev],
            sc["test"],
            [r["id"] for r in data["test"]],
            half,
            test_half,
        )
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


# ----------------------------------------------------------------------------- transform
def _tophat(u, k):
    """White top-hat, ``u - opening(u)`` with a ``k x k`` square: peaks narrower than k."""
    return u - ndimage.grey_opening(u, size=(k, k), mode="nearest")


def _gauss(u, s):
    return ndimage.gaussian_filter(u, s, mode="nearest")


def _ridge(u, s):
    """Bright-line strength: ``s^2 max(-lambda_min(Hessian of G_s * u), 0)``."""
    uxx = ndimage.gaussian_filter(u, s, order=(0, 2), mode="nearest")
    uyy = ndimage.gaussian_filter(u, s, order=(2, 0), mode="nearest")
    uxy = ndimage.gaussian_filter(u, s, order=(1, 1), mode="nearest")
    half_tr = (uxx + uyy) / 2
    lmin = half_tr - np.sqrt(np.maximum(half_tr**2 - (uxx * uyy - uxy**2), 0.0))
    return s**2 * np.maximum(-lmin, 0.0)


def transforms(val) -> dict:
    """Spatially varying transforms of the pixel map ``u`` (a per-image monotone rescaling
    leaves a per-image pixel AUROC unchanged): name -> f(record) -> map."""
    t = {"u": lambda r: r["u"]}
    t |= {f"G{s}": lambda r, s=s: _gauss(r["u"], s) for s in (0.7, 1.0, 1.5)}
    for big in (4, 8, 16, 32):
        t[f"u-G{big}"] = lambda r, b=big: r["u"] - _gauss(r["u"], b)
        t[f"u/G{big}"] = lambda r, b=big: r["u"] / _gauss(r["u"], b)
        t[f"G1-G{big}"] = lambda r, b=big: _gauss(r["u"], 1.0) - _gauss(r["u"], b)
    t |= {f"tophat{k}": lambda r, k=k: _tophat(r["u"], k) for k in (5, 9, 15, 25, 31, 41, 61)}
    for k in (9, 15, 25, 41):
        for a in (0.5, 1.0):
            t[f"u+{a}tophat{k}"] = lambda r, k=k, a=a: r["u"] + a * _tophat(r["u"], k)
        t[f"tophat{k}(dil3 u)"] = lambda r, k=k: _tophat(
            ndimage.grey_dilation(r["u"], size=(3, 3), mode="nearest"), k
        )
        t[f"u/open{k}"] = lambda r, k=k: (
            r["u"] / np.maximum(ndimage.grey_opening(r["u"], size=(k, k), mode="nearest"), 0.1)
        )
    t |= {f"ridge{s}": lambda r, s=s: _ridge(r["u"], s) for s in (1.0, 1.5, 2.0)}
    for key in ("x", "mu"):  # u over its validation median at the pixel's input / prediction
        v = np.concatenate([r[key].ravel() for r in val])
        uv = np.concatenate([r["u"].ravel() for r in val])
        edges = np.quantile(v, np.linspace(0, 1, 21))
        b = np.clip(np.searchsorted(edges, v) - 1, 0, 19)
        med = np.array([np.median(uv[b == i]) for i in range(20)])
        mid = (edges[1:] + edges[:-1]) / 2
        t[f"u/med(u|{key})"] = lambda r, k=key, m=mid, d=med: r["u"] / np.interp(r[k], m, d)
    return t


def _regions(r) -> dict[str, np.ndarray]:
    """The predicted lung field ``R = erode(mu > 0.15, 5)`` (LungContrast's default) and R
    dilated by 10 / 20 px inside the body (mediastinum and hila, where clips sit)."""
    lung = ndimage.binary_erosion(r["mu"] > 0.15, iterations=5)
    out = {"R": lung}
    out |= {f"R+{d}": ndimage.binary_dilation(lung, iterations=d) & r["fg"] for d in (10, 20)}
    return out


def _local(a: np.ndarray, region: np.ndarray, stat: str) -> float:
    """A local statistic of map ``a`` over ``region``: ``Q99/Q50``, ``Q99.9/Q50``, ``top10/Q50``,
    ``top30/Q50`` (mean of the k largest), ``Q99.9``, ``top10``; 1 for < 64 pixels."""
    v = a[region]
    if v.size < 64:
        return 1.0
    q50 = max(float(np.quantile(v, 0.5)), 1e-3)
    num, _, den = stat.partition("/")
    hi = (
        np.partition(v, -int(num[3:]))[-int(num[3:]) :].mean()
        if num.startswith("top")
        else (np.quantile(v, float(num[1:]) / 100))
    )
    return float(hi / q50) if den else float(hi)


def _largest_component(a: np.ndarray, region: np.ndarray, threshold: float) -> float:
    """1 + the pixel count of the largest 4-connected component of ``(a > threshold) & region``
    (1 when there is none, so that its log is finite)."""
    lab, n = ndimage.label((a > threshold) & region)
    return 1.0 + (float(np.bincount(lab.ravel())[1:].max()) if n else 0.0)


def _avg_halves(t: dict) -> dict:
    """Adds ``all``: the mean of the halves (3 images each, so the mean over all 6)."""
    t["all"] = {c: {r: (t["tune"][c][r] + t["report"][c][r]) / 2 for r in REFS} for c in DEVICES}
    return t


def cmd_transform(args) -> dict:
    """Pixel-map transforms on the cached maps of ``score`` (no network pass); every choice
    on the tune half, the report half and all images printed beside it."""
    model, stage, ds = load(args)
    data = collect(args, model, stage, ds)
    dev = [r for r in data["ood"] if r["case"] in DEVICES]
    half, test_half = halves(ds["ood"]), halves(ds["test"], None)
    sp = {"val": data["val"], "test": data["test"], "dev": dev, "real": data["real"]}
    tf = transforms(data["val"])
    pix = {}
    for name, f in tf.items():
        t0 = time.perf_counter()
        maps = [f(r) for r in dev]
        ms = (time.perf_counter() - t0) / len(dev) * 1e3
        t = _avg_halves(case_table(maps, dev, half))
        pix[name] = {"table": t, "ms": ms}
        print(
            f"{name:20s} {ms:5.1f} ms | worst tune {worst(t):.3f} report {worst(t, 'report'):.3f}"
            f" all {worst(t, 'all'):.3f} | report {fmt(t, 'report')} || all {fmt(t, 'all')}",
            flush=True,
        )
    pick = max(pix, key=lambda k: worst(pix[k]["table"]))
    print(f"pixel map chosen on the tune half (worst case): {pick}")
    where = []  # which device pixels u misses: those where the input shows nothing
    for r in dev:
        shown = np.abs(r["x"] - ndimage.median_filter(r["x"], 7)) > 0.02
        row = {"id": r["id"], "case": r["case"], "part": half[r["id"]]}
        row["shown"] = float((r["dev"] & shown).sum() / r["dev"].sum())
        row["in_body"] = float((r["dev"] & r["fg"]).sum() / r["dev"].sum())
        for k, m in (("all", r["dev"]), ("shown", r["dev"] & shown), ("not", r["dev"] & ~shown)):
            row[k + "_auroc"] = pixel_auroc(r["u"], m, r["lung"]) if m.any() else float("nan")
        where.append(row)
        print(
            f"  {row['id']} {row['case']:9s} {row['part']:6s}: device pixels in the body "
            f"{row['in_body']:.2f}, shown in the input (|x - median7(x)| > 0.02) "
            f"{row['shown']:.2f}; u against lung: all {row['all_auroc']:.3f}, shown "
            f"{row['shown_auroc']:.3f}, not shown {row['not_auroc']:.3f}"
        )
    total = {}
    for name in dict.fromkeys(["u", pick]):
        maps = {k: [tf[name](r) for r in v] for k, v in sp.items()}
        uv = np.concatenate([m.ravel() for m in maps["val"]])
        av = np.concatenate([r["ale"].ravel() for r in data["val"]])
        best = None
        for q in (0.5, 0.75, 0.9, 0.95):
            for g in (1.0, 2.0, 3.0, 5.0, 10.0):
                conv = DistanceSigma.calibrate(uv, av, q, 1.0, offset=1.0, gain=g)
                infl = conv.inflation(uv, av)
                if infl > args.max_inflation:
                    continue
                tot = [
                    np.sqrt(r["ale"] ** 2 + conv(m) ** 2)
                    for r, m in zip(dev, maps["dev"], strict=True)
                ]
                t = _avg_halves(case_table(tot, dev, half))
                if best is None or worst(t) > worst(best["table"]):
                    best = {"quantile": q, "gain": g, "inflation": infl, "table": t}
        total[name] = best
        t = best["table"]
        print(
            f"total of {name}: hinge q {best['quantile']} gain {best['gain']} inflation "
            f"{best['inflation']:.3f}: worst tune {worst(t):.3f} report {worst(t, 'report'):.3f}"
            f" all {worst(t, 'all'):.3f} | report {fmt(t, 'report')} || all {fmt(t, 'all')}"
        )
    for v in sp.values():
        for r in v:
            r["regions"] = _regions(r)
    se = float(np.sqrt(0.05 * 0.95 / len(data["test"])))
    rows = []
    local_maps = ("u", "tophat9", "tophat15", "u+1.0tophat15")
    stats = ("Q99/Q50", "Q99.9/Q50", "top10/Q50", "top30/Q50", "Q99.9", "top10", "cc99", "cc99.9")
    for mname in local_maps:
        maps = {k: [tf[mname](r) for r in v] for k, v in sp.items()}
        for reg in ("R", "R+10", "R+20"):
            val_px = np.concatenate(
                [m[r["regions"][reg]] for m, r in zip(maps["val"], sp["val"], strict=True)]
            )
            for stat in stats:
                if stat.startswith("cc"):  # largest component above a validation quantile
                    thr = float(np.quantile(val_px, float(stat[2:]) / 100))

                    def f(m, r, thr=thr, reg=reg):
                        return _largest_component(m, r["regions"][reg], thr)
                else:

                    def f(m, r, stat=stat, reg=reg):
                        return _local(m, r["regions"][reg], stat)

                st = {
                    k: {
                        "pooled": np.array([r["pooled"] for r in sp[k]]),
                        "local": np.array([f(m, r) for m, r in zip(maps[k], sp[k], strict=True)]),
                    }
                    for k in sp
                }
                score, loo = MaxZScore.calibrate(st["val"])
                sc = {k: score(st[k]) for k in ("test", "dev", "real")} | {"val": loo}
                t = image_table(
                    sc["dev"],
                    [r["id"] for r in dev],
                    sc["test"],
                    [r["id"] for r in data["test"]],
                    half,
                    test_half,
                )
                case = {
                    c: image_auroc(
                        [s for s, r in zip(sc["dev"], dev, strict=True) if r["case"] == c],
                        sc["test"],
                    )
                    for c in DEVICES
                }
                thr = np.quantile(loo, 0.95)
                row = {"map": mname, "region": reg, "stat": stat, "auroc": t, "case": case}
                row["real_above"] = int(np.sum(sc["real"] > np.median(sc["test"])))
                row["flagged_test"] = float(np.mean(sc["test"] > thr))
                row["ok"] = (
                    row["real_above"] == len(sp["real"]) and row["flagged_test"] <= 0.05 + 2 * se
                )
                rows.append(row)
                print(
                    f"{mname:14s} {reg:5s} {stat:10s} tune {t['tune']:.3f} report {t['report']:.3f}"
                    f" all {t['all']:.3f} | {' / '.join(f'{case[c]:.2f}' for c in DEVICES)} | "
                    f"real > median {row['real_above']}/4, flagged test {row['flagged_test']:.3f}"
                    f"{'' if row['ok'] else ' (fails the rule)'}",
                    flush=True,
                )
    today = next(r for r in rows if (r["map"], r["region"], r["stat"]) == ("u", "R", "Q99/Q50"))
    chosen = max((r for r in rows if r["ok"]), key=lambda r: r["auroc"]["tune"])
    for label, r in (("today", today), ("chosen on the tune half", chosen)):
        a = r["auroc"]
        print(
            f"per image, {label}: {r['map']} {r['region']} {r['stat']}: tune {a['tune']:.3f}"
            f" report {a['report']:.3f} all {a['all']:.3f}"
        )
    return {
        "pixel": pix,
        "pixel_chosen": pick,
        "total": total,
        "image": rows,
        "image_today": today,
        "image_chosen": chosen,
    }


# ----------------------------------------------------------------------------- levels
LEVEL_MAPS = {
    "L1": (1, 1, 1),
    "L2": (2, 1, 1),
    "P1": (1, 3, 1),
    "P0d2": (0, 3, 2),
    "P0d3": (0, 3, 3),
}


def _patch(f: torch.Tensor, k: int, dilation: int) -> torch.Tensor:
    """``patch_features`` with a dilated ``k x k`` neighbourhood (replicate padding)."""
    if k == 1:
        return f
    b, c, h, w = f.shape
    p = dilation * (k // 2)
    cols = F.unfold(F.pad(f, (p,) * 4, mode="replicate"), k, dilation=dilation)
    return cols.reshape(b, c * k * k, h, w)


def cmd_levels(args) -> dict:
    """Other pixel densities than the shipped level-0 3 x 3 patch (:data:`LEVEL_MAPS`: name ->
    (level, patch, dilation)), fitted like ``MultiLevelDensity`` (ceil(50000 / n_train) random
    vectors per training image, distance over its training median, bilinear upsampling), alone
    and as the max / mean with ``u``. Resumable, each step well under 5 minutes on 2 cores:
    the first run fits and writes ``<levels-cache>.dens.pkl``, the second scores val / test /
    ood / real into ``<levels-cache>``, the third evaluates (pixel tables, total map, per-image
    score with the lung-field Q99/Q50 of the map)."""
    model, stage, ds = load(args)
    cache = Path(args.levels_cache)
    dens_path = cache.with_suffix(".dens.pkl")
    levels = sorted({lv for lv, _, _ in LEVEL_MAPS.values()})

    def feats(x):
        f, _ = encoder_outputs(model, x, levels, stage)
        f = dict(zip(levels, f, strict=True))
        return {k: _patch(f[lv].double(), p, d) for k, (lv, p, d) in LEVEL_MAPS.items()}

    if not dens_path.exists():
        t0, rng = time.perf_counter(), np.random.default_rng(0)
        per = -(-50_000 // len(ds["train"]))
        vecs = {k: [] for k in LEVEL_MAPS}
        for i in range(len(ds["train"])):
            for k, t in feats(ds["train"][i]["input"][None]).items():
                v = t[0].reshape(t.shape[1], -1).T.numpy()
                vecs[k].append(v[rng.choice(v.shape[0], min(per, v.shape[0]), replace=False)])
        fitted = {}
        for k, v in vecs.items():
            v = np.concatenate(v)
            g = GaussianDensity.fit(v)
            fitted[k] = (g, float(np.median(g.distance(v))))
        dens_path.parent.mkdir(parents=True, exist_ok=True)
        dens_path.write_bytes(pickle.dumps(fitted))
        print(f"fitted in {time.perf_counter() - t0:.0f} s; run again to score")
        return {"fitted": {k: med for k, (_, med) in fitted.items()}}
    fitted = pickle.loads(dens_path.read_bytes())
    part = cache.with_suffix(".part.pkl")
    if not cache.exists():
        t0 = time.perf_counter()

        def maps(x):
            out = {}
            for k, t in feats(x).items():
                g, med = fitted[k]
                c, h, w = t.shape[1:]
                d = g.distance(t[0].reshape(c, -1).T.numpy()).reshape(h, w) / med
                out[k] = _up(d, x.shape[-1]).astype(np.float32)
            return out

        got = pickle.loads(part.read_bytes()) if part.exists() else {}
        for s in ("val", "test", "ood", "real"):  # one split at a time, kept in ``part``
            if s in got:
                continue
            if s == "real":
                got[s] = [maps(x) for _, x in load_real(args.real, 256)]
            else:
                got[s] = [maps(ds[s][i]["input"][None]) for i in range(len(ds[s]))]
            part.write_bytes(pickle.dumps(got))
            print(f"scored {s} at {time.perf_counter() - t0:.0f} s", flush=True)
            if time.perf_counter() - t0 > 150 and s != "real":
                print("run again to score the rest")
                return {}
        cache.write_bytes(pickle.dumps(got))
        part.unlink()
        print("run again to evaluate")
        return {}
    got = pickle.loads(cache.read_bytes())
    data = collect(args, model, stage, ds)
    for s in ("val", "test", "ood", "real"):
        for r, e in zip(data[s], got[s], strict=True):
            r |= {k: v.astype(np.float64) for k, v in e.items()}
    dev = [r for r in data["ood"] if r["case"] in DEVICES]
    half, test_half = halves(ds["ood"]), halves(ds["test"], None)
    sp = {"val": data["val"], "test": data["test"], "dev": dev, "real": data["real"]}
    lung = LungContrast()
    cands = {"u": lambda r: r["u"]}
    for k in LEVEL_MAPS:
        cands[k] = lambda r, k=k: r[k]
        cands[f"max(u,{k})"] = lambda r, k=k: np.maximum(r["u"], r[k])
        cands[f"mean(u,{k})"] = lambda r, k=k: (r["u"] + r[k]) / 2
    out = {}
    for name, f in cands.items():
        m = {k: [f(r) for r in v] for k, v in sp.items()}
        pix = _avg_halves(case_table(m["dev"], dev, half))
        uv = np.concatenate([a.ravel() for a in m["val"]])
        av = np.concatenate([r["ale"].ravel() for r in data["val"]])
        tot = None
        for q in (0.5, 0.75, 0.9, 0.95):
            for g in (1.0, 2.0, 3.0, 5.0, 10.0):
                conv = DistanceSigma.calibrate(uv, av, q, 1.0, offset=1.0, gain=g)
                if conv.inflation(uv, av) > args.max_inflation:
                    continue
                maps_t = [
                    np.sqrt(r["ale"] ** 2 + conv(a) ** 2)
                    for r, a in zip(dev, m["dev"], strict=True)
                ]
                t = _avg_halves(case_table(maps_t, dev, half))
                if tot is None or worst(t) > worst(tot):
                    tot = t
        st = {
            k: {
                "pooled": np.array([r["pooled"] for r in sp[k]]),
                "lung_contrast": np.array(
                    [lung(a, r["mu"])[0] for a, r in zip(m[k], sp[k], strict=True)]
                ),
            }
            for k in sp
        }
        score, loo = MaxZScore.calibrate(st["val"], local=lung)
        sc = {k: score(st[k]) for k in ("test", "dev", "real")}
        img = image_table(
            sc["dev"],
            [r["id"] for r in dev],
            sc["test"],
            [r["id"] for r in data["test"]],
            half,
            test_half,
        )
        real = int(np.sum(sc["real"] > np.median(sc["test"])))
        flagged = float(np.mean(sc["test"] > np.quantile(loo, 0.95)))
        out[name] = {
            "pixel": pix,
            "total": tot,
            "image": img,
            "real_above": real,
            "flagged_test": flagged,
        }
        print(
            f"{name:14s} pixel worst tune {worst(pix):.3f} report {worst(pix, 'report'):.3f} all "
            f"{worst(pix, 'all'):.3f} | total worst tune {worst(tot):.3f} report "
            f"{worst(tot, 'report'):.3f} all {worst(tot, 'all'):.3f} | per image tune "
            f"{img['tune']:.3f} report {img['report']:.3f} all {img['all']:.3f}, real > median "
            f"{real}/4, flagged test {flagged:.3f}",
            flush=True,
        )
    pick = max(out, key=lambda k: worst(out[k]["pixel"]))
    print(f"pixel map chosen on the tune half (worst case): {pick}")
    return {"maps": out, "chosen": pick}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=("select", "score", "detector", "transform", "levels"))
    ap.add_argument("--data", default="/work/runs/phantom256v2")
    ap.add_argument("--checkpoint", default="data_samples/pretrained.pt")
    ap.add_argument("--cache", default=".cache/ood_targets/score.pkl", help="score step's maps")
    ap.add_argument("--levels-cache", default=".cache/ood_targets/levels.pkl", help="levels' maps")
    ap.add_argument("--refit", action="store_true", help="detector: refit instead of stored")
    ap.add_argument("--real", default="/work/shared/real_cxr")
    ap.add_argument("--per-image", type=int, default=400, help="training pixel vectors per image")
    ap.add_argument("--max-inflation", type=float, default=1.2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = {"select": cmd_select, "score": cmd_score, "detector": cmd_detector}
    out = (steps | {"transform": cmd_transform, "levels": cmd_levels})[args.step](args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
        print("wrote", args.json)


if __name__ == "__main__":
    main()
