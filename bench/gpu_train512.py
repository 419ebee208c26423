"""One GPU session, one script: simulate a 512 px data set, train the wide three-stage model
(``recipes.wide512``) and its single-stage baseline of equal parameters for equal GPU time,
export both in float16, evaluate them and the 256 px models on a test set made with a seed
never used for training, and time batch synthesis at 512 px.

    python bench/gpu_train512.py --out DIR [--train-seconds 200] [--patients 1000]
    python bench/gpu_train512.py --out /tmp/gpu-tiny --tiny     (a CPU rehearsal in ~2 minutes)

Every step appends to ``DIR/results.json`` as it finishes (a later failure keeps the earlier
figures). Epochs per stage come from a measured probe, ``epochs_k = budget_k * images_per_s_k /
n_train`` with the budget split 35 / 30 / 35 % over the stages, or from ``--three-epochs``. On
the H100 (session 16) the 6-step probe measured 19 / 44 / 42 images/s against 126 / 96 / 81 in
the real epochs (start-up costs), so 170 s bought 1 / 2 / 3 epochs that took 69 s: there, an
epoch of 700 images at 512 px took 5.4 / 7.2 / 8.5 s, and ``--three-epochs 12,10,10`` would
take about 3.5 minutes. Next run, e.g.: ``--steps data,three,evaluate,bench --three-epochs
12,10,10``: both models now train with ``--placement head_reg`` (the shipped recipe's Monte
Carlo dropout at the mean head; session 16's GPU model had decoder dropout, whose 20 passes cost
5.7x one pass on the CPU against 1.3x), so the ``bench`` step also re-measures issue 13's GPU
throughput (200 images/s at 512 px, T = 20) with the cheaper passes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from darkfield_nb import checkpoint  # noqa: E402
from darkfield_nb.physics import generate_dataset  # noqa: E402
from darkfield_nb.train import recipes, train_progressive  # noqa: E402

STAGE_SHARE = (0.35, 0.30, 0.35)


class Results:
    """``results.json`` rewritten after every step."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict = {}

    def put(self, key: str, value) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=1, default=str))
        print(f"[{key}] {json.dumps(value, default=str)[:600]}", flush=True)


def step(results: Results, name: str, fn):
    t0 = time.perf_counter()
    try:
        value = fn()
        results.put(name, {"ok": True, "seconds": round(time.perf_counter() - t0, 1), **value})
        return value
    except Exception as exc:  # keep going: later steps may not need this one
        traceback.print_exc()
        results.put(name, {"ok": False, "error": repr(exc)[:500]})
        return None


def n_train(root: Path) -> int:
    import csv

    with open(root / "manifest.csv", newline="") as f:
        return sum(1 for r in csv.DictReader(f) if r["split"] == "train")


def probe(data: Path, cfg, out: Path, device: str, steps: int) -> list[float]:
    """Images/s of each stage from a short run (``steps`` optimizer steps per stage)."""
    # warm-up kept on: an untrained model's GGD NLL overflows (single-stage probe, first GPU run)
    cfg.stages = [type(s)(**{**s.to_dict(), "epochs": 1, "warmup_epochs": 1}) for s in cfg.stages]
    cfg.max_steps_per_epoch = steps
    cfg.val_max_images = 4
    shutil.rmtree(out, ignore_errors=True)
    res = train_progressive(data, out, cfg, device=device, progress=False)
    return [float(h["images_per_s"]) for h in res.history]


def train_with_fallback(data: Path, run: Path, cfg, device: str):
    """Train; if the mixed-precision / NHWC run fails, train again in float32 NCHW (the
    error is returned so that the results say what happened)."""
    shutil.rmtree(run, ignore_errors=True)
    try:
        return train_progressive(data, run, cfg, device=device, progress=False), None
    except Exception as exc:
        traceback.print_exc()
        cfg.amp, cfg.channels_last = "none", False
        shutil.rmtree(run, ignore_errors=True)
        return train_progressive(data, run, cfg, device=device, progress=False), repr(exc)[:300]


def train_and_export(data: Path, run: Path, cfg, device: str, out: Path, name: str) -> dict:
    """Train into ``run``, copy its history to ``out/history_NAME.csv`` and export
    ``out/NAME.pt`` (float16); the seconds, the last validation figures and the export."""
    t0 = time.perf_counter()
    result, fallback = train_with_fallback(data, run, cfg, device)
    secs = time.perf_counter() - t0
    shutil.copy(run / "history.csv", out / f"history_{name}.csv")
    last = result.history[-1]
    return {
        "train_seconds": secs,
        "fallback": fallback,
        "last": {k: last.get(k) for k in ("val_mse", "val_ssim", "val_nll")},
        **export(run, out / f"{name}.pt"),
    }


def export(run: Path, dest: Path) -> dict:
    model = checkpoint.load(run / "model.pt")
    raw = checkpoint.load_checkpoint(run / "model.pt")
    checkpoint.save(
        dest,
        model,
        stage=raw["stage"],
        epoch=raw["epoch"],
        stages_trained=raw.get("stages_trained"),
        history=raw.get("history"),
        train_config=raw.get("train_config"),
        rng=False,
        half=True,
        geometry=raw.get("geometry"),
    )
    size = dest.stat().st_size
    parts = []
    if size > 15 * 2**20:  # files coming back from the GPU machine are capped at 16 MiB
        subprocess.run(["split", "-b", "15M", "-d", str(dest), str(dest) + ".part"], check=True)
        parts = sorted(p.name for p in dest.parent.glob(dest.name + ".part*"))
        dest.unlink()
    return {"bytes": size, "parts": parts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/gpu512")))
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu512"))
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--test-patients", type=int, default=150)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=11, help="training data seed")
    ap.add_argument("--test-seed", type=int, default=12, help="test data seed (never trained on)")
    ap.add_argument("--train-seconds", type=float, default=200.0, help="per model")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--bench-n", type=int, default=1000)
    ap.add_argument("--tiny", action="store_true", help="CPU rehearsal at 64 px")
    ap.add_argument(
        "--placement",
        default="head_reg",
        help="dropout placement of both models (default head_reg, the shipped recipe's; the "
        "session-16 GPU model used decoder)",
    )
    ap.add_argument(
        "--steps",
        default="data,three,single,evaluate,bench",
        help="comma-separated subset of data,three,single,table,evaluate,bench",
    )
    ap.add_argument(
        "--single-epochs", type=int, default=None, help="fixed epochs (no probe): equal steps"
    )
    ap.add_argument(
        "--three-epochs",
        default=None,
        help="fixed epochs per stage, e.g. 12,10,10 (no probe: the session-16 probe measured "
        "2-6x below the real epochs' speed)",
    )
    ap.add_argument(
        "--three-checkpoint", type=Path, default=None, help="an already trained wide512 model.pt"
    )
    args = ap.parse_args()
    steps = set(args.steps.split(","))
    if args.tiny:
        args.patients, args.test_patients, args.size = 24, 6, 64
        args.train_seconds, args.device, args.bench_n = 20.0, "cpu", 16
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    res = Results(args.out / "results.json")
    t_start = time.perf_counter()

    def env():
        info = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
        info["cpus"] = os.cpu_count()
        return info

    step(res, "env", env)
    data = args.work / "train_data"
    test_native = args.work / f"test{args.size}"
    test_256 = args.work / "test256"

    def make_data():
        for root, n, size, seed, ood in (
            (data, args.patients, args.size, args.seed, 24),
            (test_native, args.test_patients, args.size, args.test_seed, 24),
            (test_256, args.test_patients, 256 if not args.tiny else 64, args.test_seed, 24),
        ):
            if root == test_256 and "evaluate" not in steps:
                continue
            if not (root / "manifest.csv").exists():
                generate_dataset(
                    root,
                    n,
                    size,
                    seed,
                    ood_patients=ood if not args.tiny else 4,
                    overwrite=True,
                    progress=False,
                    workers=args.workers,
                )
        return {"n_train": n_train(data)}

    made = step(res, "data", make_data)
    if made is None:
        return
    ntr = made["n_train"]
    width3, width1 = (19, 33) if not args.tiny else (8, 12)

    def train_three():
        if args.three_epochs:
            ips, epochs = None, tuple(int(e) for e in args.three_epochs.split(","))
        else:
            ips = probe(
                data,
                recipes.wide512(base_width=width3, dropout_placement=args.placement, norm="batch"),
                args.work / "probe3",
                args.device,
                6,
            )
            epochs = tuple(
                max(1, int(args.train_seconds * share * rate / ntr * 0.85))
                for share, rate in zip(STAGE_SHARE, ips, strict=True)
            )
        cfg = recipes.wide512(
            epochs=epochs, base_width=width3, dropout_placement=args.placement, norm="batch"
        )
        done = train_and_export(data, args.work / "run3", cfg, args.device, args.out, "wide512")
        return {"probe_images_per_s": ips, "epochs": epochs, **done}

    three = step(res, "train_three_stage", train_three) if "three" in steps else None
    run3_model = args.three_checkpoint or args.work / "run3" / "model.pt"

    def train_single():
        budget = three["train_seconds"] if three else args.train_seconds
        remaining = 540 - (time.perf_counter() - t_start) - 100
        budget = max(10.0, min(budget, remaining)) if not args.tiny else budget
        if args.single_epochs:
            ips, epochs = None, args.single_epochs
        else:
            ips = probe(
                data,
                recipes.wide512_single_stage(base_width=width1, dropout_placement=args.placement),
                args.work / "probe1",
                args.device,
                6,
            )[0]
            epochs = max(1, int(budget * ips / ntr * 0.85))
        cfg = recipes.wide512_single_stage(
            epochs=epochs, base_width=width1, dropout_placement=args.placement
        )
        done = train_and_export(data, args.work / "run1", cfg, args.device, args.out, "single512")
        return {"probe_images_per_s": ips, "budget_s": budget, "epochs": epochs, **done}

    if "single" in steps:
        step(res, "train_single_stage", train_single)

    def stage_tables():
        """Per-stage quality of each 512 px model on every image of the test-seed set (one
        deterministic pass; per-image values kept for paired comparisons)."""
        from darkfield_nb.data import PairedDataset
        from darkfield_nb.evaluation import evaluate

        ds = PairedDataset(test_native, split=["train", "val", "test"], pad_multiple=1)
        out = {}
        for name, ckpt in (("wide512", run3_model), ("single512", args.work / "run1/model.pt")):
            if ckpt.exists():
                model = checkpoint.load(ckpt)
                table = evaluate(model, ds, mc_samples=0, device=args.device, progress=False)
                (args.out / f"table_{name}.json").write_text(json.dumps(table, default=str))
                out[name] = {k: table[k] for k in ("mse", "psnr", "ssim")}
        return out

    if "table" in steps:
        step(res, "stage_tables", stage_tables)

    def evaluate_models():
        from bench.simulator_eval import evaluate_checkpoint

        out = {}
        models = {
            "wide512": (run3_model, test_native),
            "single512": (args.work / "run1" / "model.pt", test_native),
            "shipped": (REPO / "data_samples/pretrained.pt", test_256),  # v5 since session 20
        }
        for name, (ckpt, root) in models.items():
            if ckpt.exists() and (name == "single512" or "three" in steps):
                out[name] = evaluate_checkpoint(ckpt, root, splits=None, device=args.device)[
                    "summary"
                ]
        return out

    if "evaluate" in steps:
        step(res, "evaluate", evaluate_models)

    def bench():
        from bench.gpu_synthesis import time_synthesis

        ck = args.work / "run3" / "model.pt"
        return time_synthesis(
            ck, test_native, args.work / "bench", n=args.bench_n, device=args.device
        )

    if "bench" in steps:
        step(res, "batch_synthesis", bench)
    res.put("total_seconds", round(time.perf_counter() - t_start, 1))


if __name__ == "__main__":
    main()
