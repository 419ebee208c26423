"""Issue 11, session 21: does a multimodal patch density (distance to the nearest training
patch, PatchCore) flag cables and clips better than today's single Gaussian?

    python bench/ood_knn.py [--json out.json]                     # the grid below
    python bench/ood_knn.py --per-image 2000 --grid 10000:64c 30000:64a --no-p1 --no-image
    python bench/ood_knn.py --image-maps "P0+P1 gauss" "P0 knn s10000 64c k1"  # controls

Model: the last trained stage of ``--checkpoint`` (v5, ``data_samples/pretrained.pt``, with the
detector it carries); data: ``--data`` (train / val / test / ood splits with label masks).

Training vectors: the 3 x 3 neighbourhood vectors of encoder level 0 (``P0``, 144 channels)
and of level 1 (``P1``, 288 channels, 128 x 128 positions), ``--per-image`` random positions
of every training image drawn exactly as ``bench/ood_targets.py select`` draws them (one seeded
generator, a draw for each of its feature maps in turn). On them: the Ledoit-Wolf Gaussian
(today's density, refitted on these vectors; ``shipped`` is the detector the checkpoint
carries, fitted on its own sample) and :class:`~darkfield_nb.epistemic.knn.KNNDensity` for
coreset sizes 2,000 / 10,000, projection none / 64 for the coreset only (``64c``) / 64 for
coreset and distances (``64a``), k = 1 / 3; on ``P1`` one setting (10,000, 64c, k 1), its
map upsampled bilinearly, alone and averaged with the P0 map (each over its training
reference). Every map is divided by its density's training reference (median distance).

Pixel AUROC: device pixels against lung and against body pixels without device, mean over the
images of each device case, on the tune and report halves of ``ood_targets.halves`` (sorted ids,
even positions tune). The pixel variant is chosen on the tune half only (the best worst case
over cases and references) and its report half is what counts. Cost: seconds per 256 px
image of the distance map from the features (one thread, fastest of ``--rounds``).

Per image (chosen kNN map and the shipped map): ``MaxZScore`` of the pooled distance of the
shipped detector with the ``LungContrast`` of the map, or with the 99th percentile of the map
inside the body (the input's foreground, as at inference), calibrated on ``val``
(leave-one-out); AUROC of the device cases against ``test``, tune / report halves; the
fraction of test images above the validation 95th percentile; whether each real radiograph
of ``--real`` scores above the test median.

Cached in ``--cache`` (training vectors, fitted densities, maps per split): a rerun is cheap.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ood_targets import (  # noqa: E402
    DEVICES,
    FEATURES,
    _up,
    case_table,
    fmt,
    halves,
    load,
    refs,
    scores_table,
    worst,
)

from darkfield_nb import checkpoint  # noqa: E402
from darkfield_nb.epistemic import (  # noqa: E402
    GaussianDensity,
    LungContrast,
    MaxZScore,
    image_auroc,
    patch_features,
)
from darkfield_nb.epistemic.density import encoder_outputs  # noqa: E402
from darkfield_nb.epistemic.knn import KNNDensity  # noqa: E402
from darkfield_nb.epistemic.store import detector_from_entry, ood_of  # noqa: E402
from darkfield_nb.ood import load_real  # noqa: E402

LEVELS = (0, 1, 2, 3, 4)
KEYS = {"P0": 0, "P1": 1}  # patch features of level 0 and 1, 3 x 3
SIZES, KS = (2000, 10_000), (1, 3)
PROJ = {"none": (None, "coreset"), "64c": (64, "coreset"), "64a": (64, "all")}
P1_SETTING = (10_000, "64c")


def _cached(path: Path, make):
    if path.exists():
        return pickle.loads(path.read_bytes())
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(value))
    tmp.rename(path)
    return value


def _patches(feats) -> dict[str, torch.Tensor]:
    """{"P0", "P1"}: (C 9, h, w) patch vectors of the levels' features (first image)."""
    return {k: patch_features(feats[lv].float(), 3)[0] for k, lv in KEYS.items()}


def training_vectors(model, stage, ds, per_image) -> dict[str, np.ndarray]:
    """P0 and P1 vectors, ``per_image`` positions per training image, drawn as
    ``ood_targets.select`` draws them (its generator, a draw per feature map in its order)."""
    rng = np.random.default_rng(0)
    out = {k: [] for k in KEYS}
    t0 = time.perf_counter()
    for i in range(len(ds)):
        x = ds[i]["input"][None]
        feats, _ = encoder_outputs(model, x, LEVELS, stage)
        g = _patches(feats)
        for name, (lv, _p) in FEATURES.items():
            n = feats[lv].shape[-2] * feats[lv].shape[-1]
            idx = rng.choice(n, min(per_image, n), False)
            if name in KEYS:
                t = g[name]
                out[name].append(t.reshape(t.shape[0], -1).T[idx].numpy())
    print(f"training vectors of {len(ds)} images in {time.perf_counter() - t0:.0f} s", flush=True)
    return {k: np.concatenate(v).astype(np.float32) for k, v in out.items()}


def variants(grid=None, p1: bool = True) -> list[tuple[str, str, int, str]]:
    """(name, key, size, projection) of the kNN densities fitted (k is read at query time):
    P0 with each ``(size, projection)`` of ``grid`` (default: every size of SIZES with every
    projection of PROJ), and P1 with P1_SETTING when ``p1``."""
    grid = [(s, p) for s in SIZES for p in PROJ] if grid is None else grid
    out = [(f"P0 knn s{s} {p}", "P0", s, p) for s, p in grid]
    if p1:
        out.append((f"P1 knn s{P1_SETTING[0]} {P1_SETTING[1]}", "P1", *P1_SETTING))
    return out


def fit_all(vec: dict[str, np.ndarray], grid=None, p1: bool = True) -> dict:
    out = {}
    for key in KEYS if p1 else ("P0",):
        g = GaussianDensity.fit(vec[key].astype(np.float64))
        med = float(np.median(g.distance(vec[key])))
        out[f"{key} gauss"] = {"gauss": g, "reference": med}
    for name, key, size, p in variants(grid, p1):
        t0 = time.perf_counter()
        dim, mode = PROJ[p]
        d = KNNDensity(size=size, dim=dim, projection=mode, k=max(KS), seed=0).fit(vec[key])
        out[name] = {"knn": d.to_dict(), "seconds": time.perf_counter() - t0}
        print(
            f"{name}: coreset in {out[name]['seconds']:.0f} s, covering radius {d.radius:.3f}, "
            f"reference {d.reference:.3f}",
            flush=True,
        )
    return out


def _dens(fitted: dict) -> dict:
    return {
        n: (f["gauss"] if "gauss" in f else KNNDensity.from_dict(f["knn"]))
        for n, f in fitted.items()
    }


def _ref(fitted: dict, name: str) -> float:
    f = fitted[name]
    return f["reference"] if "gauss" in f else f["knn"]["reference"]


def maps_of(dens, fitted, g: dict[str, torch.Tensor], n: int, names=None) -> dict:
    """Normalized maps (n, n) float32 of the patch vectors ``g``: every Gaussian and kNN
    variant (``names``: only those), k = 1 and 3 from one query."""
    out = {}
    for name, d in dens.items():
        key = name.split()[0]
        t = g[key]
        rows = t.reshape(t.shape[0], -1).T
        h, w = t.shape[1:]
        ref = _ref(fitted, name)
        if isinstance(d, GaussianDensity):
            m = {name: d.whitened_distance(rows)}
        else:
            nb = d.neighbours(rows, max(KS))
            m = {f"{name} k{k}": nb[:, :k].mean(1) for k in KS}
        for v, dist in m.items():
            if names is None or v in names:
                out[v] = _up((dist / ref).reshape(h, w).double().numpy(), n).astype(np.float32)
    for k in KS:  # P0 + P1: mean of the normalized maps
        a = f"P0 knn s{P1_SETTING[0]} {P1_SETTING[1]} k{k}"
        b = f"P1 knn s{P1_SETTING[0]} {P1_SETTING[1]} k{k}"
        if a in out and b in out:
            out[f"P0+P1 knn k{k}"] = (out[a] + out[b]) / 2
    if "P0 gauss" in out and "P1 gauss" in out:
        out["P0+P1 gauss"] = (out["P0 gauss"] + out["P1 gauss"]) / 2
    return out


def record(model, stage, det, dens, fitted, x, item=None, case="", names=None) -> dict:
    """One forward pass: the shipped detector's map and pooled distance, mu, the body from
    the input alone, every variant's map; for labelled images the masks of ``refs``."""
    feats, out = encoder_outputs(model, x, LEVELS, stage)
    u, pooled, _ = det.density.evaluate_features(feats, out, x)
    xx = x[0, 0].numpy()
    r = {"case": case, "pooled": float(pooled[0]), "mu": out.mu[0, 0].float().numpy()}
    r["fg"] = ndimage.binary_fill_holes(xx > 0.05)
    r["maps"] = {"shipped": u[0, 0].float().numpy()}
    r["maps"] |= maps_of(dens, fitted, _patches(feats), xx.shape[-1], names)
    if item is not None:
        r |= {"id": item["id"]} | refs(xx, item["mask"][0].numpy())
    return r


def timings(dens, fitted, g, rounds: int) -> dict[str, float]:
    """Seconds per image of each density's distance map from the patch vectors (fastest of
    ``rounds``), k = max(KS) for kNN (k = 1 costs the same query)."""
    out = {}
    for name, d in dens.items():
        t = g[name.split()[0]]
        rows = t.reshape(t.shape[0], -1).T.contiguous()
        best = np.inf
        for _ in range(rounds):
            t0 = time.perf_counter()
            if isinstance(d, GaussianDensity):
                d.whitened_distance(rows)
            else:
                d.neighbours(rows, max(KS))
            best = min(best, time.perf_counter() - t0)
        out[name] = best
        print(f"time {name}: {best:.3f} s per image", flush=True)
    return out


# ----------------------------------------------------------------------------- per image
def image_scores(data: dict, name: str, dev: list[dict], half, test_half) -> list[dict]:
    """Per-image scores from map ``name``: pooled with lung contrast / body Q99 (max z)."""
    lc = LungContrast()

    def stats(r):
        m = r["maps"][name]
        return {
            "pooled": r["pooled"],
            "lung_contrast": float(lc(m, r["mu"])[0]),
            "body_q99": float(np.quantile(m[r["fg"]], 0.99)),
        }

    st = {sp: [stats(r) for r in rs] for sp, rs in (("dev", dev),) + tuple(data.items())}
    se = float(np.sqrt(0.05 * 0.95 / len(data["test"])))
    rows = []
    for keys in (["pooled", "lung_contrast"], ["pooled", "body_q99"], ["lung_contrast"]):
        cols = {sp: {k: np.array([s[k] for s in v]) for k in keys} for sp, v in st.items()}
        score, loo = MaxZScore.calibrate(cols["val"])
        sc = {sp: score(cols[sp]) for sp in ("test", "dev", "real")} | {"val": loo}
        t = scores_table(sc, dev, data["test"], half, test_half)
        thr = float(np.quantile(sc["val"], 0.95))
        med = float(np.median(sc["test"]))
        per_case = {
            c: image_auroc(
                [s for s, r in zip(sc["dev"], dev, strict=True) if r["case"] == c], sc["test"]
            )
            for c in DEVICES
        }
        row = {
            "map": name,
            "score": " + ".join(keys) + (" (max z)" if len(keys) > 1 else " (z)"),
            "auroc": t,
            "auroc_case": per_case,
            "flagged_test": float(np.mean(sc["test"] > thr)),
            "flagged_test_limit": 0.05 + 2 * se,
            "flagged_dev": float(np.mean(sc["dev"] > thr)),
            "real_above_median": {
                r["id"]: bool(s > med) for r, s in zip(data["real"], sc["real"], strict=True)
            },
        }
        rows.append(row)
        nreal = sum(row["real_above_median"].values())
        print(
            f"{name:26s} {row['score']:34s} tune {t['tune']:.3f} report {t['report']:.3f} "
            f"all {t['all']:.3f} | per case "
            + " ".join(f"{c} {v:.3f}" for c, v in per_case.items())
            + f" | real > test median {nreal}/{len(data['real'])} | flagged test "
            f"{row['flagged_test']:.3f} devices {row['flagged_dev']:.2f}",
            flush=True,
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="/work/runs/s20/v5/data_s1")
    ap.add_argument("--checkpoint", default="data_samples/pretrained.pt")
    ap.add_argument("--cache", default="/work/runs/s21/knn")
    ap.add_argument("--real", default="/work/shared/real_cxr")
    ap.add_argument("--per-image", type=int, default=400, help="training vectors per image")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--grid",
        nargs="*",
        default=None,
        help="P0 kNN settings SIZE:PROJ (PROJ none, 64c, 64a); default the full grid",
    )
    ap.add_argument("--no-p1", action="store_true", help="skip the level-1 patch densities")
    ap.add_argument("--no-image", action="store_true", help="skip the per-image scores")
    ap.add_argument(
        "--image-maps",
        nargs="*",
        default=None,
        help="maps scored per image (default: the kNN map chosen on the tune half)",
    )
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    grid = None
    if args.grid:
        grid = [(int(g.split(":")[0]), g.split(":")[1]) for g in args.grid]
        bad = [p for _, p in grid if p not in PROJ]
        if bad:
            ap.error(f"--grid: projections {bad} not in {list(PROJ)}")
    suffix = "" if grid is None and not args.no_p1 else "_" + "-".join(args.grid or ["all"])
    suffix += "_nop1" if args.no_p1 else ""
    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    model, stage, ds = load(args)
    det = detector_from_entry(model, ood_of(checkpoint.load_checkpoint(args.checkpoint)))
    vec = _cached(
        cache / f"train_vectors_{args.per_image}.pkl",
        lambda: training_vectors(model, stage, ds["train"], args.per_image),
    )
    print({k: v.shape for k, v in vec.items()}, flush=True)
    fitted = _cached(
        cache / f"densities_{args.per_image}{suffix}.pkl",
        lambda: fit_all(vec, grid, not args.no_p1),
    )
    dens = _dens(fitted)
    is_dev = [r.get("case", "") in DEVICES for r in ds["ood"].rows]

    def dev_records():
        t0 = time.perf_counter()
        out = [
            record(
                model,
                stage,
                det,
                dens,
                fitted,
                ds["ood"][i]["input"][None],
                ds["ood"][i],
                ds["ood"].rows[i]["case"],
            )
            for i in range(len(ds["ood"]))
            if is_dev[i]
        ]
        print(f"device maps in {time.perf_counter() - t0:.0f} s", flush=True)
        return out

    dev = _cached(cache / f"maps_dev_{args.per_image}{suffix}.pkl", dev_records)
    half = halves(ds["ood"])
    rows = []
    for name in dev[0]["maps"]:
        t = case_table([r["maps"][name] for r in dev], dev, half)
        rows.append({"map": name, "table": t})
        print(
            f"{name:26s} worst tune {worst(t):.3f} report {worst(t, 'report'):.3f} | tune "
            f"{fmt(t, 'tune')} || report {fmt(t, 'report')}",
            flush=True,
        )
    knn_rows = [r for r in rows if "knn" in r["map"]]
    pick = max(knn_rows, key=lambda r: worst(r["table"]))
    base = next(r for r in rows if r["map"] == "P0 gauss")
    out = {
        "pixel": rows,
        "chosen": pick["map"],
        "fit_seconds": {n: f.get("seconds") for n, f in fitted.items()},
        "n_train_vectors": {k: int(v.shape[0]) for k, v in vec.items()},
    }
    print(
        f"chosen on the tune half: {pick['map']} (worst tune {worst(pick['table']):.3f}, "
        f"report {worst(pick['table'], 'report'):.3f}); P0 gauss worst tune "
        f"{worst(base['table']):.3f}, report {worst(base['table'], 'report'):.3f}",
        flush=True,
    )
    g = _patches(encoder_outputs(model, ds["test"][0]["input"][None], LEVELS, stage)[0])
    out["seconds_per_image"] = timings(dens, fitted, g, args.rounds)
    out["load_average"] = os.getloadavg()
    if args.no_image:
        _write(args.json, out)
        return

    chosen = args.image_maps or [pick["map"]]
    unknown = [m for m in chosen if m not in dev[0]["maps"]]
    if unknown:
        ap.error(f"--image-maps: {unknown} not among the maps {list(dev[0]['maps'])}")
    keep = set(chosen)
    for m in chosen:  # a mean of P0 and P1 needs both
        if m.startswith("P0+P1 knn"):
            k = m[-2:]
            keep |= {f"{p} knn s{P1_SETTING[0]} {P1_SETTING[1]} {k}" for p in ("P0", "P1")}
        elif m == "P0+P1 gauss":
            keep |= {"P0 gauss", "P1 gauss"}
    only = {n for n in dens if any(v.startswith(n) for v in keep)}

    def split_records():
        t0 = time.perf_counter()
        sub = {n: dens[n] for n in only}
        out = {}
        for s in ("val", "test"):
            out[s] = [
                record(
                    model,
                    stage,
                    det,
                    sub,
                    fitted,
                    ds[s][i]["input"][None],
                    ds[s][i],
                    ds[s].rows[i].get("case", ""),
                    keep,
                )
                for i in range(len(ds[s]))
            ]
        out["real"] = [
            record(model, stage, det, sub, fitted, x, None, "real", keep) | {"id": n}
            for n, x in load_real(args.real, 256)
        ]
        print(f"val / test / real maps in {time.perf_counter() - t0:.0f} s", flush=True)
        return out

    tag = "-".join(sorted(chosen)).replace(" ", "_").replace("+", "_")
    data = _cached(cache / f"maps_splits_{args.per_image}_{tag}.pkl", split_records)
    test_half = halves(ds["test"], None)
    image = image_scores(data, "shipped", dev, half, test_half)
    for m in chosen:
        image += image_scores(data, m, dev, half, test_half)
    out["image"] = image
    _write(args.json, out)


def _write(path: str, out: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(out, indent=1, default=float))
        print("wrote", path)


if __name__ == "__main__":
    main()
