"""Issue 11 with a foreign-body segmenter in the detector: the maps ``predict`` writes, the
per-image score, the cost, against the shipped detector.

    python bench/ood_foreign_body.py attach   --segmenter fb.pt --out cand.pt
    python bench/ood_foreign_body.py evaluate --candidate cand.pt [--json out.json]
    python bench/ood_foreign_body.py grid     --segmenter fb.pt     # the conversion, on tune

``attach``: the shipped checkpoint's detector with its densities kept (``keep_densities``),
plus the foreign-body term (``epistemic.foreign_body_term``: the segmenter's map as a
``MapSigma`` sigma added in quadrature and a third per-image statistic), refitted on the
validation split of ``--data`` (40 images); written to ``--out`` with the checkpoint's other
entries (recalibration, lung level) unchanged.

``evaluate`` (protocol of ``bench/ood_targets.py``; for the candidate and for ``--baseline``,
the shipped file, in the same run):

* pixel AUROC of the maps ``predict`` writes (``--epistemic auto``, T = ``--samples``): device
  pixels against lung pixels and against body pixels without device (``ood.body_mask``), mean
  over a case's images; *tune* / *report* halves by sorted id within each case (even / odd
  positions) and all 6 images;
* inflation of the written total over the written aleatoric on the ``val`` images: the mean of
  ``total / aleatoric`` over all pixels (1: the epistemic part adds nothing);
* per image, the detector's score (the number ``predict`` writes in ``ood_score``): AUROC of the
  device cases against the ``test`` images (halves as above), per case, the fraction of test and
  device images flagged, the real radiographs of ``--real`` against the test median;
* cost: one deterministic pass, the detector's pass and the foreign-body map alone, and MC
  dropout with T = 20 (``ood.time_costs``: fastest of ``--rounds``, one 256 px image).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ood_targets import DEVICES, REFS, case_table, halves, image_table, refs  # noqa: E402

from darkfield_nb.data import PairedDataset, normalize_input  # noqa: E402
from darkfield_nb.epistemic import image_auroc  # noqa: E402
from darkfield_nb.epistemic.foreign_body_term import ForeignBodyTerm  # noqa: E402
from darkfield_nb.epistemic.fpi import load_fpi  # noqa: E402
from darkfield_nb.epistemic.store import attach_ood_detector, batches  # noqa: E402
from darkfield_nb.inference import PredictConfig, load_model, predict_folder  # noqa: E402
from darkfield_nb.inference.inputs import load_radiograph  # noqa: E402
from darkfield_nb.io import read_image  # noqa: E402
from darkfield_nb.ood import load_real, rank_vs_median, time_costs  # noqa: E402


def cmd_attach(args) -> dict:
    term = ForeignBodyTerm(
        load_fpi(args.segmenter, best=not args.last),
        top_k=args.top_k,
        quantile=args.quantile,
        gain=args.gain,
        power=args.power,
    )
    t0 = time.perf_counter()
    dst, entry = attach_ood_detector(
        args.baseline,
        args.data,
        args.out,
        overwrite=True,
        device="cpu",
        keep_densities=True,
        foreign_body=term,
    )
    fb = entry["detector"]["foreign_body"]
    print(f"{dst}: version {entry['version']}, {time.perf_counter() - t0:.0f} s")
    print(f"conversion {fb['conversion']}; score {entry['detector']['image_score']['names']}")
    return {"conversion": fb["conversion"], "score": entry["detector"]["image_score"]}


def _links(data: Path, split: str, folder: Path, cases=None) -> list[dict]:
    rows = [r for r in csv.DictReader(open(data / "manifest.csv")) if r["split"] == split]
    rows = [r for r in rows if cases is None or r.get("case", "") in cases]
    folder.mkdir(parents=True, exist_ok=True)
    for r in rows:
        link = folder / f"{r['id']}.png"
        if not link.exists():
            os.symlink(data / "attenuation" / f"{r['id']}.png", link)
    return rows


def written_maps(ckpt: str, data: Path, work: Path, samples: int) -> dict:
    """predict (``--epistemic auto``) on the ``ood`` device images and on ``val``; pixel tables
    of the written maps and the validation inflation."""
    loaded = load_model(ckpt)
    cfg = PredictConfig(samples=samples, progress=False, workers=0, epistemic="auto")
    out = {}
    for split, cases in (("ood", DEVICES), ("val", None)):
        src = work / f"in_{split}"
        rows = _links(data, split, src, cases)
        dst = work / f"{Path(ckpt).stem}_{split}"
        t0 = time.perf_counter()
        predict_folder(
            loaded.model,
            src,
            dst,
            geometry=loaded.geometry,
            checkpoint_sha256=loaded.sha256,
            config=cfg,
        )
        print(f"  predict {split}: {len(rows)} images, {time.perf_counter() - t0:.0f} s")
        out[split] = (rows, dst)
    rows, dst = out["ood"]
    items, maps = [], {k: [] for k in ("epistemic", "total", "aleatoric")}
    for r in rows:
        x = normalize_input(load_radiograph(data / "attenuation" / f"{r['id']}.png"))
        mask = read_image(data / "masks" / f"{r['id']}.png").astype(np.int64)
        items.append({"id": r["id"], "case": r["case"]} | refs(x, mask))
        for k in maps:
            maps[k].append(read_image(dst / k / f"{r['id']}.tif").astype(np.float64))
    half = {}
    for c in DEVICES:
        ids = sorted(r["id"] for r in rows if r["case"] == c)
        half |= {i: "tune" if j % 2 == 0 else "report" for j, i in enumerate(ids)}
    tables = {}
    for k, m in maps.items():
        t = case_table(m, items, half)
        t["all"] = case_table(m, items, {i: "all" for i in half})["all"]
        tables[k] = t
    rows, dst = out["val"]
    ratios = []
    for r in rows:
        a = read_image(dst / "aleatoric" / f"{r['id']}.tif").astype(np.float64)
        t = read_image(dst / "total" / f"{r['id']}.tif").astype(np.float64)
        ratios.append(np.mean(t / np.maximum(a, 1e-12)))
    return {"pixel": tables, "inflation": float(np.mean(ratios))}


def image_scores(ckpt: str, data: Path, real_dir: str) -> dict:
    loaded = load_model(ckpt)
    det = loaded.detector
    ds = {s: PairedDataset(data, split=s, pad_multiple=1, check=False) for s in ("test", "ood")}
    sc = {s: np.concatenate([det.score(x) for x in batches(ds[s])]) for s in ds}
    cases = [r.get("case", "") for r in ds["ood"].rows]
    dev = np.array([c in DEVICES for c in cases])
    dev_ids = [r["id"] for r, d in zip(ds["ood"].rows, dev, strict=True) if d]
    test_ids = [r["id"] for r in ds["test"].rows]
    table = image_table(
        sc["ood"][dev], dev_ids, sc["test"], test_ids, halves(ds["ood"]), halves(ds["test"], None)
    )
    per_case = {
        c: image_auroc(sc["ood"][[k == c for k in cases]], sc["test"]) for c in sorted(set(cases))
    }
    real = {n: float(det.score(x)[0]) for n, x in load_real(real_dir, 256)}
    thr = det.threshold
    return {
        "image_auroc": table,
        "per_case": per_case,
        "flagged_test": float(thr.flag(sc["test"]).mean()),
        "flagged_devices": float(thr.flag(sc["ood"][dev]).mean()),
        "real": {
            n: rank_vs_median(v, sc["test"]) | {"score": v, "flag": bool(thr.flag(v))}
            for n, v in real.items()
        },
        "_det": det,
        "_model": loaded.model,
        "_x": ds["test"][0]["input"][None],
    }


def costs(det, model, x, rounds: int) -> dict:
    c = time_costs(model, det, x, samples=20, rounds=rounds)
    if det.foreign_body is not None:
        det.foreign_body_map(x)  # warm-up
        t = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            det.foreign_body_map(x)
            t.append(time.perf_counter() - t0)
        c["foreign_body_ratio"] = min(t) / c["forward_s"]
    return c


def _fmt(t: dict) -> str:
    return " | ".join(" / ".join(f"{t[c][r]:.3f}" for c in DEVICES if c in t) for r in REFS)


def cmd_evaluate(args) -> dict:
    data, work = Path(args.data), Path(args.work)
    out = {}
    pairs = {"candidate": args.candidate, "baseline": args.baseline}
    for name, ckpt in ((n, pairs[n]) for n in args.which):
        print(f"== {name}: {ckpt}", flush=True)
        w = written_maps(ckpt, data, work, args.samples)
        s = image_scores(ckpt, data, args.real)
        c = costs(s.pop("_det"), s.pop("_model"), s.pop("_x"), args.rounds)
        for k in ("epistemic", "total", "aleatoric"):
            for part in ("tune", "report", "all"):
                print(
                    f"  {k:>9} {part:>6} lung | body (pacemaker / cables / clips): "
                    f"{_fmt(w['pixel'][k][part])}"
                )
        print(f"  inflation (val, written total / aleatoric) {w['inflation']:.3f}")
        ia = s["image_auroc"]
        print(
            f"  per image tune {ia['tune']:.3f} report {ia['report']:.3f} all {ia['all']:.3f}; "
            + " / ".join(f"{k} {v:.2f}" for k, v in s["per_case"].items())
        )
        print(
            f"  flagged test {s['flagged_test']:.3f} devices {s['flagged_devices']:.3f}; real "
            + ", ".join(f"{k} pct {v['percentile']:.2f}" for k, v in s["real"].items())
        )
        print("  cost " + ", ".join(f"{k} {v:.3f}" for k, v in c.items()), flush=True)
        out[name] = {"checkpoint": ckpt, **w, **s, "cost": c}
    return out


def cmd_grid(args) -> dict:
    """The conversion's quantile, gain and power on a grid, from the baseline's written maps
    (``evaluate`` leaves them in ``--work``) and the segmenter's map of the same inputs:
    written total' = sqrt(total^2 + sigma_m^2), epistemic' = sqrt(epistemic^2 + sigma_m^2)
    (the baseline's maps already hold every other part); the choice: the best worst-case tune
    AUROC of total' (3 devices x 2 references) with the validation inflation at most
    ``--max-added-inflation`` above the baseline's."""
    from darkfield_nb.epistemic.conversion import MapSigma
    from darkfield_nb.epistemic.fpi import fpi_map

    data, work = Path(args.data), Path(args.work)
    net = load_fpi(args.segmenter, best=not args.last)
    stem = Path(args.baseline).stem
    recs = {}
    for split, cases in (("ood", DEVICES), ("val", None)):
        rows = [r for r in csv.DictReader(open(data / "manifest.csv")) if r["split"] == split]
        rows = [r for r in rows if cases is None or r.get("case", "") in cases]
        out = []
        for r in rows:
            x = normalize_input(load_radiograph(data / "attenuation" / f"{r['id']}.png"))
            rec = {"id": r["id"], "case": r.get("case", "")}
            for k in ("total", "epistemic", "aleatoric"):
                f = work / f"{stem}_{split}" / k / f"{r['id']}.tif"
                rec[k] = read_image(f).astype(np.float64)
            rec["m"] = fpi_map(net, torch.from_numpy(x)[None, None])[0, 0].double().numpy()
            if split == "ood":
                mask = read_image(data / "masks" / f"{r['id']}.png").astype(np.int64)
                rec |= refs(x, mask)
            out.append(rec)
        recs[split] = out
    m_val = np.concatenate([r["m"].ravel() for r in recs["val"]])
    # sigma_ref as the detector calibrates it: the median of the model's own (not recalibrated)
    # aleatoric sigma over the validation pixels, the baseline detector's DistanceSigma value
    sigma_ref = load_model(args.baseline).detector.conversion.sigma_ref
    base_infl = float(np.mean([np.mean(r["total"] / r["aleatoric"]) for r in recs["val"]]))
    dev = recs["ood"]
    half = {}
    for c in DEVICES:
        ids = sorted(r["id"] for r in dev if r["case"] == c)
        half |= {i: "tune" if j % 2 == 0 else "report" for j, i in enumerate(ids)}
    every = {i: "all" for i in half}

    def tables(maps):
        t = case_table(maps, dev, half)
        t["all"] = case_table(maps, dev, every)["all"]
        return t

    def worst(t, part):
        return min(t[part][c][r] for c in DEVICES for r in REFS)

    rows = []
    base = {k: tables([r[k] for r in dev]) for k in ("total", "epistemic")}
    print(
        f"baseline inflation {base_infl:.3f}; total worst tune {worst(base['total'], 'tune'):.3f}"
    )
    for q in args.grid_quantiles:
        for gain in args.grid_gains:
            for power in args.grid_powers:
                m_ref = min(float(np.quantile(m_val, q)), 0.999)
                conv = MapSigma(m_ref, sigma_ref, q, gain, power)
                infl = float(
                    np.mean(
                        [
                            np.mean(np.hypot(r["total"], conv(r["m"])) / r["aleatoric"])
                            for r in recs["val"]
                        ]
                    )
                )
                tt = tables([np.hypot(r["total"], conv(r["m"])) for r in dev])
                te = tables([np.hypot(r["epistemic"], conv(r["m"])) for r in dev])
                rows.append(
                    {
                        "quantile": q,
                        "gain": gain,
                        "power": power,
                        "m_ref": conv.m_ref,
                        "inflation": infl,
                        "total": tt,
                        "epistemic": te,
                        "worst_tune": worst(tt, "tune"),
                    }
                )
    ok = [r for r in rows if r["inflation"] <= base_infl + args.max_added_inflation]
    best = max(ok, key=lambda r: r["worst_tune"])
    for r in sorted(rows, key=lambda r: -r["worst_tune"])[:12] + [best]:
        print(
            f"q {r['quantile']} gain {r['gain']} power {r['power']} (m_ref {r['m_ref']:.3f}) "
            f"inflation {r['inflation']:.3f} worst tune {r['worst_tune']:.3f} report "
            f"{worst(r['total'], 'report'):.3f} all {worst(r['total'], 'all'):.3f}\n"
            f"    total all {_fmt(r['total']['all'])}\n    epi all {_fmt(r['epistemic']['all'])}"
        )
    print(
        f"chosen (inflation <= {base_infl + args.max_added_inflation:.3f}): q {best['quantile']} "
        f"gain {best['gain']} power {best['power']}"
    )
    return {"baseline": base, "baseline_inflation": base_infl, "rows": rows, "chosen": best}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=("attach", "evaluate", "grid"))
    ap.add_argument("--data", default="/work/runs/s20/v5/data_s1")
    ap.add_argument("--baseline", default="data_samples/pretrained.pt")
    ap.add_argument("--segmenter", default="/work/runs/s24/fb/fb.pt")
    ap.add_argument("--last", action="store_true", help="attach: last weights, not best")
    ap.add_argument("--out", default="/work/runs/s24/cand/fb.pt")
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--quantile", type=float, default=0.99)
    ap.add_argument("--gain", type=float, default=3.0)
    ap.add_argument("--power", type=float, default=1.0)
    ap.add_argument("--grid-quantiles", type=float, nargs="+", default=[0.9, 0.95, 0.98, 0.99])
    ap.add_argument("--grid-gains", type=float, nargs="+", default=[1, 2, 3, 5, 10, 20])
    ap.add_argument("--grid-powers", type=float, nargs="+", default=[0.5, 1.0])
    ap.add_argument("--max-added-inflation", type=float, default=0.1)
    ap.add_argument("--candidate", default="/work/runs/s24/cand/fb.pt")
    ap.add_argument("--work", default="/work/runs/s24/cand/eval")
    ap.add_argument("--real", default="/work/shared/real_cxr")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument(
        "--which", nargs="+", choices=("candidate", "baseline"), default=["candidate", "baseline"]
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.step == "attach":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    steps = {"attach": cmd_attach, "evaluate": cmd_evaluate, "grid": cmd_grid}
    res = steps[args.step](args)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
