"""Issue 11, session 18: can a reshaped density map or another cheap density close the misses
of the shipped detector (cables' pixel AUROC, clips in the per-image score)? The halves, tables
and caches are those of ``bench/ood_targets.py`` (run its ``score`` step first: it writes the
maps this script reads).

    python bench/ood_transforms.py transform [--json out.json]  # spatial transforms of the map
    python bench/ood_transforms.py levels   (3 times: fit, score, evaluate)  # other densities

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
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ood_targets import (  # noqa: E402
    DEVICES,
    REFS,
    _up,
    case_table,
    collect,
    common_arguments,
    fmt,
    halves,
    load,
    scores_table,
    worst,
)

from darkfield_nb.epistemic import (  # noqa: E402
    DistanceSigma,
    GaussianDensity,
    LungContrast,
    MaxZScore,
    image_auroc,
)
from darkfield_nb.epistemic.density import encoder_outputs  # noqa: E402
from darkfield_nb.ood import load_real, pixel_auroc  # noqa: E402


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


def best_hinge(val_maps, dev_maps, val, dev, half, max_inflation: float) -> dict:
    """The hinge conversion (``DistanceSigma``, power 1, offset 1) of a pixel map with the best
    worst-case tune AUROC of the total map ``sqrt(ale^2 + sigma_epi^2)`` among those whose
    validation inflation is at most ``max_inflation``: quantile, gain, inflation, table (None
    when every conversion inflates more)."""
    uv = np.concatenate([m.ravel() for m in val_maps])
    av = np.concatenate([r["ale"].ravel() for r in val])
    best = None
    for q in (0.5, 0.75, 0.9, 0.95):
        for g in (1.0, 2.0, 3.0, 5.0, 10.0):
            conv = DistanceSigma.calibrate(uv, av, q, 1.0, offset=1.0, gain=g)
            infl = conv.inflation(uv, av)
            if infl > max_inflation:
                continue
            pairs = zip(dev, dev_maps, strict=True)
            tot = [np.sqrt(r["ale"] ** 2 + conv(m) ** 2) for r, m in pairs]
            t = _avg_halves(case_table(tot, dev, half))
            if best is None or worst(t) > worst(best["table"]):
                best = {"quantile": q, "gain": g, "inflation": infl, "table": t}
    return best


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
        best = best_hinge(maps["val"], maps["dev"], data["val"], dev, half, args.max_inflation)
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
                t = scores_table(sc, dev, data["test"], half, test_half)
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
        hinge = best_hinge(m["val"], m["dev"], data["val"], dev, half, args.max_inflation)
        tot = None if hinge is None else hinge["table"]
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
        img = scores_table(sc, dev, data["test"], half, test_half)
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
    ap.add_argument("step", choices=("transform", "levels"))
    common_arguments(ap)
    ap.add_argument("--levels-cache", default=".cache/ood_targets/levels.pkl", help="levels' maps")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = {"transform": cmd_transform, "levels": cmd_levels}[args.step](args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
        print("wrote", args.json)


if __name__ == "__main__":
    main()
