"""Issue 11 with a different family of detector: a Foreign-Patch-Interpolation anomaly map
(``darkfield_nb.epistemic.fpi``) against the shipped detector's density map ``u``.

    python bench/ood_fpi.py train    [--out /work/runs/s23/fpi]   # background, 1 thread
    python bench/ood_fpi.py evaluate [--json out.json]             # tables, panels, cost

``train``: in-distribution attenuation inputs only (``PairedDataset(...)["input"]``, normalized
as the generator sees them): the ``train`` split of ``--data`` (the v5 training set) and every
split of the in-distribution folders ``--extra`` (made by ``make-data --ood 0`` with a seed
never used), less ``--holdout`` images of the last extra folder's ``test`` split, which give the
holdout BCE that picks the epoch. Never the ``ood`` split, never ``--data``'s ``test``.

``evaluate`` (protocol of ``bench/ood_targets.py``): within each out-of-distribution case of
``--data`` the images sorted by id, even positions *tune*, odd *report*; pixel AUROC = mean
over a case's images of device pixels against lung pixels and against body pixels without
device (``darkfield_nb.labels`` bits, ``ood.body_mask``). Maps: the FPI map, the shipped
detector's distance map ``u`` (``detector_from_entry``), and per-pixel combinations of the two
by validation statistics over body pixels (chosen on the tune half only; "worst" = the lowest
of the 3 devices x 2 references). Per image: device cases against the ``test`` images (halved
the same way), thresholds the 95th percentile of ``val``, real radiographs against the test
median. Cost: the FPI map of one 256 px image (two passes, flip) as a ratio to one deterministic
pass of the shipped generator, fastest of ``--rounds``, in the same run. The shipped
detector's maps are cached in ``--cache`` (one pass per image, about 3 minutes); ``--quick``
skips cost and panels (to score one checkpoint per epoch: ``--name fpi_s1_e03.pt``).

Session 23 (``bench/RESULTS.md``): ``train`` with the defaults (seed 0, 11 epochs, 36 min);
``train --seed 1 --minutes 19 --name fpi_s1.pt --keep-epochs``; ``evaluate --json ...``.

Session 24: ``train --method foreign_body`` trains the same network on synthetic foreign bodies
(``darkfield_nb.epistemic.foreign_body``) instead of pasted patches (``--out /work/runs/s24/fb
--name fb.pt --epochs 12 --minutes 40 --keep-epochs``); ``evaluate`` then scores its map under
the same names ("FPI ..."), plus per-image statistics inside the thorax (the convex hull of the
shipped model's predicted lung field {mu > 0.15}; ``mu`` cached beside ``--cache``).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ood_targets import DEVICES, REFS, case_table, halves, image_table, refs  # noqa: E402

from darkfield_nb import checkpoint  # noqa: E402
from darkfield_nb.data import PairedDataset  # noqa: E402
from darkfield_nb.epistemic import image_auroc  # noqa: E402
from darkfield_nb.epistemic.foreign_body import ForeignBodyConfig  # noqa: E402
from darkfield_nb.epistemic.foreign_body_term import convex_hull_mask  # noqa: E402
from darkfield_nb.epistemic.fpi import (  # noqa: E402
    FPIConfig,
    body_from_input,
    fpi_image_score,
    fpi_map,
    load_fpi,
    top_k_mean,
    train_fpi,
)
from darkfield_nb.epistemic.store import detector_from_entry, ood_of  # noqa: E402
from darkfield_nb.ood import load_real, pixel_auroc, rank_vs_median  # noqa: E402


def _inputs(root: str, splits) -> torch.Tensor:
    ds = PairedDataset(root, split=list(splits), pad_multiple=1, check=False, load_masks=False)
    return torch.stack([ds[i]["input"] for i in range(len(ds))])


# ----------------------------------------------------------------------------- train
def cmd_train(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    parts = [_inputs(args.data, ["train"])]
    hold = None
    for k, root in enumerate(args.extra):
        splits = ["train", "val"] if k == len(args.extra) - 1 else ["train", "val", "test"]
        parts.append(_inputs(root, splits))
        if k == len(args.extra) - 1:
            test = _inputs(root, ["test"])
            hold, rest = test[: args.holdout], test[args.holdout :]
            parts.append(rest)
    images = torch.cat(parts)
    print(
        f"{len(images)} training images, {0 if hold is None else len(hold)} holdout, loaded in "
        f"{time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    config_class = ForeignBodyConfig if args.method == "foreign_body" else FPIConfig
    cfg = config_class(
        channels=tuple(args.channels),
        crop=args.crop,
        epochs=args.epochs,
        steps_per_epoch=args.steps,
        batch_size=args.batch,
        max_minutes=args.minutes,
        seed=args.seed,
    )
    print(cfg, flush=True)
    net, hist = train_fpi(
        images,
        cfg,
        holdout=hold,
        checkpoint=out / args.name,
        device="cpu",
        keep_epochs=args.keep_epochs,
        log=lambda s: print(s, flush=True),
    )
    return {"config": cfg.__dict__, "history": hist, "n_train": len(images)}


# ----------------------------------------------------------------------------- evaluate
# ----------------------------------------------------------------------------- evaluate
def load_model(path: str):
    ck = checkpoint.load_checkpoint(path)
    model = checkpoint.generator_from_checkpoint(ck, torch.device("cpu")).eval()
    return model, detector_from_entry(model, ood_of(ck))


def collect_shipped(args, ds) -> dict:
    """One detector pass per image of val / test / ood and the real radiographs: input, body
    from the input alone, the shipped distance map u, the shipped per-image score, and for
    labelled images the device / lung / body-without-device masks (cached in ``--cache``)."""
    cache = Path(args.cache)
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    _, det = load_model(args.checkpoint)

    def rec(x, item=None, case=""):
        p = det.predict(x)
        xx = x[0, 0].numpy()
        r = {"x": xx, "fg": body_from_input(xx), "case": case}
        r |= {"u": p.distance[0, 0].double().numpy(), "shipped": float(p.score[0])}
        if item is not None:
            r |= {"id": item["id"]} | refs(xx, item["mask"][0].numpy())
        return r

    data = {
        s: [
            rec(ds[s][i]["input"][None], ds[s][i], ds[s].rows[i].get("case", ""))
            for i in range(len(ds[s]))
        ]
        for s in ("val", "test", "ood")
    }
    data["real"] = [rec(x) | {"id": n} for n, x in load_real(args.real, 256)]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(pickle.dumps(data))
    return data


def add_mu(args, data: dict) -> None:
    """The shipped model's predicted mean ``mu`` of every record (one deterministic pass; cached
    beside ``--cache`` as ``<stem>_mu.pkl``): the thorax region of the per-image statistics."""
    cache = Path(args.cache).with_name(Path(args.cache).stem + "_mu.pkl")
    if cache.exists():
        mus = pickle.loads(cache.read_bytes())
    else:
        model, _ = load_model(args.checkpoint)
        mus = {}
        with torch.no_grad():
            for split, recs in data.items():
                x = torch.from_numpy(np.stack([r["x"] for r in recs])[:, None]).float()
                out = model(x)
                out = out[-1] if isinstance(out, (list, tuple)) else out
                mus[split] = out.mu[:, 0].double().numpy()
        cache.write_bytes(pickle.dumps(mus))
    for split, recs in data.items():
        for r, mu in zip(recs, mus[split], strict=True):
            r["mu"] = mu
            r["thorax"] = convex_hull_mask(mu > 0.15) if (mu > 0.15).sum() >= 64 else r["fg"]


def add_fpi(net, data: dict) -> None:
    for recs in data.values():
        x = torch.from_numpy(np.stack([r["x"] for r in recs])[:, None]).float()
        m = fpi_map(net, x).double().numpy()[:, 0]
        for r, mm in zip(recs, m, strict=True):
            r["fpi"] = mm


# pixel maps: per-pixel combinations of FPI and u by validation statistics over body pixels
def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def pixel_combiners(val: list[dict]) -> dict:
    """Name -> function(record) -> map. ``z``: (g(m) - mean) / sd over validation body pixels
    (g identity, or logit for FPI and log for u); ``p``: the validation empirical CDF F(m);
    combined as the larger z, the sum of the z, the larger F, Fisher's sum -log(1 - F), or
    z(log u) + w z(logit FPI) for small weights w."""
    vals = {k: np.concatenate([r[k][r["fg"]] for r in val]) for k in ("fpi", "u")}
    g = {"fpi": _logit, "u": lambda u: np.log(np.maximum(u, 1e-9))}
    st = {k: (v.mean(), v.std()) for k, v in vals.items()}
    st_g = {k: (g[k](v).mean(), g[k](v).std()) for k, v in vals.items()}
    srt = {k: np.sort(v) for k, v in vals.items()}

    def z(r, k):
        return (r[k] - st[k][0]) / st[k][1]

    def zg(r, k):
        return (g[k](r[k]) - st_g[k][0]) / st_g[k][1]

    def cdf(r, k):
        n = len(srt[k])
        return np.searchsorted(srt[k], r[k], side="right") / (n + 1)

    out = {
        "FPI": lambda r: r["fpi"],
        "u (shipped)": lambda r: r["u"],
        "max z": lambda r: np.maximum(z(r, "fpi"), z(r, "u")),
        "sum z": lambda r: z(r, "fpi") + z(r, "u"),
        "max z (logit FPI, log u)": lambda r: np.maximum(zg(r, "fpi"), zg(r, "u")),
        "sum z (logit FPI, log u)": lambda r: zg(r, "fpi") + zg(r, "u"),
        "max F": lambda r: np.maximum(cdf(r, "fpi") + 1e-9 * r["fpi"], cdf(r, "u")),
        "Fisher": lambda r: -np.log1p(-cdf(r, "fpi")) - np.log1p(-cdf(r, "u")),
    }
    for w in (0.1, 0.25, 0.5):
        out[f"z(log u) + {w} z(logit FPI)"] = lambda r, w=w: zg(r, "u") + w * zg(r, "fpi")
    return out


def _worst(t: dict, part: str) -> float:
    return min(t[part][c][r] for c in DEVICES for r in REFS)


def _all6(maps, items) -> dict:
    """{case: {ref: mean AUROC}} over all images of each case (one 'part')."""
    return case_table(maps, items, {it["id"]: "all" for it in items})["all"]


def _fmt(t: dict) -> str:
    return " | ".join(" / ".join(f"{t[c][r]:.3f}" for c in DEVICES) for r in REFS)


# per image
def _z_loo(val: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Leave-one-out validation z-scores, and the mean / sd of all validation values."""
    n = len(val)
    loo = np.array(
        [(val[i] - np.delete(val, i).mean()) / np.delete(val, i).std() for i in range(n)]
    )
    return loo, float(val.mean()), float(val.std())


def image_scores(data: dict, dev: list[dict]) -> dict:
    """Name -> {split: scores} for FPI statistics alone, the shipped score, and the larger
    validation z-score of the shipped score and one FPI statistic (log)."""
    sets = {"val": data["val"], "test": data["test"], "dev": dev, "real": data["real"]}
    sets["ood"] = data["ood"]
    stats = {}
    for k in (10, 50, 100, 500):
        stats[f"FPI top-{k} mean (body)"] = lambda r, k=k: fpi_image_score(r["fpi"], r["x"], k)
    for q in (0.99, 0.999):
        stats[f"FPI Q{q} (body)"] = lambda r, q=q: float(np.quantile(r["fpi"][r["fg"]], q))
    for k in (10, 50, 100):  # inside the convex hull of the predicted lung field {mu > 0.15}
        stats[f"FPI top-{k} mean (thorax)"] = lambda r, k=k: top_k_mean(r["fpi"][r["thorax"]], k)
    out = {n: {s: np.array([f(r) for r in v]) for s, v in sets.items()} for n, f in stats.items()}
    out["shipped score"] = {s: np.array([r["shipped"] for r in v]) for s, v in sets.items()}
    sh = out["shipped score"]
    sh_loo, sh_m, sh_s = _z_loo(sh["val"])
    for n in stats:
        lf = {s: np.log(np.maximum(v, 1e-9)) for s, v in out[n].items()}
        f_loo, f_m, f_s = _z_loo(lf["val"])
        comb = {"val": np.maximum(sh_loo, f_loo)}
        for s in sets:
            if s != "val":
                comb[s] = np.maximum((sh[s] - sh_m) / sh_s, (lf[s] - f_m) / f_s)
        out[f"shipped + {n}, max z"] = comb
    return out


def cmd_evaluate(args) -> dict:
    ds = {
        s: PairedDataset(args.data, split=s, pad_multiple=1, check=False)
        for s in ("val", "test", "ood")
    }
    t0 = time.perf_counter()
    data = collect_shipped(args, ds)
    print(f"shipped detector maps in {time.perf_counter() - t0:.0f} s", flush=True)
    net = load_fpi(Path(args.out) / args.name, best=not args.last)
    add_fpi(net, data)
    add_mu(args, data)
    cases = sorted({r["case"] for r in data["ood"]})
    half = halves(ds["ood"], cases)
    test_half = halves(ds["test"], None)
    dev = [r for r in data["ood"] if r["case"] in DEVICES]
    out: dict = {"cases": cases}

    # ---- pixel maps
    comb = pixel_combiners(data["val"])
    rows = []
    for name, f in comb.items():
        maps = [f(r) for r in dev]
        t = case_table(maps, dev, half) | {"all": _all6(maps, dev)}
        rows.append({"map": name, "table": t, "worst_tune": _worst(t, "tune")})
        print(
            f"{name:28s} worst tune {_worst(t, 'tune'):.3f} report {_worst(t, 'report'):.3f} "
            f"all {_worst(t, 'all'):.3f}\n    tune {_fmt(t['tune'])}\n    report "
            f"{_fmt(t['report'])}\n    all {_fmt(t['all'])}",
            flush=True,
        )
    combos = [r for r in rows if r["map"] not in ("FPI", "u (shipped)")]
    best = max(combos, key=lambda r: r["worst_tune"])
    print(f"combination chosen on the tune half: {best['map']}")
    out["pixel"] = rows
    out["pixel_chosen"] = best["map"]
    # per image pixel AUROC of FPI and u (where FPI fails)
    per = []
    for r in dev:
        a = {
            f"{k} vs {ref}": pixel_auroc(r[k], r["dev"], r[ref])
            for k in ("fpi", "u")
            for ref in REFS
        }
        per.append({"id": r["id"], "case": r["case"], "half": half[r["id"]]} | a)
        print(
            f"  {r['id']} {r['case']:9s} {half[r['id']]:6s} "
            + " ".join(f"{k} {v:.3f}" for k, v in a.items())
        )
    out["pixel_per_image"] = per

    # ---- per image
    sc = image_scores(data, dev)
    se = float(np.sqrt(0.05 * 0.95 / len(data["test"])))
    dev_ids = [r["id"] for r in dev]
    test_ids = [r["id"] for r in data["test"]]
    img_rows = []
    for name, s in sc.items():
        t = image_table(s["dev"], dev_ids, s["test"], test_ids, half, test_half)
        thr = float(np.quantile(s["val"], 0.95))
        by_case = {
            c: image_auroc(s["ood"][[r["case"] == c for r in data["ood"]]], s["test"])
            for c in cases
        }
        real = {
            r["id"]: rank_vs_median(v, s["test"])
            for r, v in zip(data["real"], s["real"], strict=True)
        }
        row = {
            "score": name,
            "auroc": t,
            "by_case": by_case,
            "threshold": thr,
            "flagged": {k: float(np.mean(s[k] > thr)) for k in ("val", "test", "dev", "real")},
            "real": real,
            "real_above": int(sum(v["above_median"] for v in real.values())),
        }
        img_rows.append(row)
        print(
            f"{name:44s} tune {t['tune']:.3f} report {t['report']:.3f} all {t['all']:.3f} | "
            + " / ".join(f"{c} {v:.2f}" for c, v in by_case.items())
            + f" | flagged test {row['flagged']['test']:.3f} dev {row['flagged']['dev']:.2f}"
            f" | real > median {row['real_above']}/{len(real)} pct "
            + " ".join(f"{v['percentile']:.2f}" for v in real.values()),
            flush=True,
        )
    ok = [
        r
        for r in img_rows
        if r["real_above"] == len(data["real"])
        and r["flagged"]["test"] <= 0.05 + 2 * se
        and r["score"] != "shipped score"
    ]
    pick = max(ok, key=lambda r: r["auroc"]["tune"]) if ok else None
    print(f"per-image score chosen on the tune half: {pick['score'] if pick else None}")
    out["image"] = img_rows
    out["image_chosen"] = pick["score"] if pick else None
    out["flagged_test_se"] = se

    if args.quick:
        return out
    # ---- cost
    model, det = load_model(args.checkpoint)
    n_run = det.stage % model.config.n_stages + 1
    x0 = torch.from_numpy(data["test"][0]["x"])[None, None].float()
    jobs = {"forward": lambda: model(x0, n_stages=n_run), "fpi": lambda: fpi_map(net, x0)}
    jobs["detector"] = lambda: det.predict(x0)
    with torch.no_grad():
        for f in jobs.values():
            f()
        times = {k: [] for k in jobs}
        for _ in range(args.rounds):
            for k, f in jobs.items():
                t1 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t1)
    fwd = min(times["forward"])
    out["cost"] = {
        "forward_s": fwd,
        "fpi_s": min(times["fpi"]),
        "fpi_ratio": min(times["fpi"]) / fwd,
        "detector_ratio": min(times["detector"]) / fwd,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
    }
    print(f"cost: {out['cost']}")
    panels(data, dev, half, comb[best["map"]], Path(args.out) / "panels")
    return out


def panels(data, dev, half, comb, folder: Path) -> None:
    """PNG panels input | FPI map | u | chosen combination | device mask: the report-half
    device images, and the real radiographs (no mask)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    picks = [r for r in dev if half[r["id"]] == "report"] + data["real"]
    for r in picks:
        fig, ax = plt.subplots(1, 5, figsize=(17, 3.6))
        ims = [r["x"], r["fpi"], r["u"], comb(r), r.get("dev", np.zeros_like(r["x"]))]
        titles = ["input", "FPI map", "u (shipped)", "combination", "device mask"]
        for a, im, t in zip(ax, ims, titles, strict=True):
            lo, hi = (
                (0, 1)
                if t in ("input", "FPI map", "device mask")
                else np.quantile(im, [0.01, 0.999])
            )
            h = a.imshow(
                im, cmap="gray" if t in ("input", "device mask") else "magma", vmin=lo, vmax=hi
            )
            a.set_title(t)
            a.axis("off")
            if t not in ("input", "device mask"):
                fig.colorbar(h, ax=a, fraction=0.046)
        if "dev" in r:
            fig.suptitle(
                f"{r['id']} {r['case']}: pixel AUROC vs lung FPI "
                f"{pixel_auroc(r['fpi'], r['dev'], r['lung']):.3f}, u "
                f"{pixel_auroc(r['u'], r['dev'], r['lung']):.3f}"
            )
        else:
            fig.suptitle(f"real radiograph {r['id']}")
        fig.tight_layout()
        fig.savefig(folder / f"{r.get('case', 'real') or 'real'}_{r['id']}.png", dpi=80)
        plt.close(fig)
    print(f"panels in {folder}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=("train", "evaluate"))
    ap.add_argument("--data", default="/work/runs/s20/v5/data_s1")
    ap.add_argument("--extra", nargs="*", default=["/work/runs/s23/fpi/data_s61"])
    ap.add_argument("--holdout", type=int, default=64)
    ap.add_argument("--out", default="/work/runs/s23/fpi")
    ap.add_argument("--checkpoint", default="data_samples/pretrained.pt")
    ap.add_argument("--real", default="/work/shared/real_cxr")
    ap.add_argument("--channels", type=int, nargs="+", default=[12, 24, 48, 96, 128])
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--minutes", type=float, default=42.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default="/work/runs/s23/fpi/shipped_maps.pkl")
    ap.add_argument("--name", default="fpi.pt", help="the FPI checkpoint's file name in --out")
    ap.add_argument(
        "--method", choices=("fpi", "foreign_body"), default="fpi", help="train: the corruption"
    )
    ap.add_argument("--keep-epochs", action="store_true", help="train: a checkpoint per epoch")
    ap.add_argument("--quick", action="store_true", help="evaluate: no cost, no panels")
    ap.add_argument("--last", action="store_true", help="evaluate: last weights, not best")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = {"train": cmd_train, "evaluate": cmd_evaluate}[args.step](args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
        print("wrote", args.json)


if __name__ == "__main__":
    main()
