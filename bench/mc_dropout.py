"""Cost of Monte Carlo dropout relative to one deterministic forward pass, measured in one run.

For each dropout placement (``dropout_stages`` "last" and "all"; within a stage
``dropout_placement`` "decoder", "last" or "head") of the default 3-stage generator, at 256 x 256,
batch 1:

  forward   one deterministic pass (eval mode, no grad)
  pipeline  inference.mc.mc_predict_batch (what ``predict`` runs: shared decoder skip half;
            with "head", the masks folded into the 1x1 head weights)
  batched   mc_dropout_predict(samples=T): shared prefix once, the rest batched (the default)
  repeat    the whole network on T stacked copies (batching without prefix sharing)
  loop      T separate passes (the naive way)

and prints each as a ratio to ``forward`` (fastest of ``--repeats`` round-robin timings after a
warm-up, which is robust to load from other processes on a shared machine).
Target: batched <= 8x for the default placement with T = 20.

    python bench/mc_dropout.py [--size 256] [--samples 20] [--repeats 3] [--device cpu]
           [--stages last all] [--placements decoder head] [--threads N] [--clock wall|cpu]
           [--json out.json]

Which placement flags devices better (pacemaker, cables) needs trained models and the OOD data:
compare ``epistemic`` inside device masks with ``darkfield_nb.ood`` once they exist.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from darkfield_nb.hardware import pick_device
from darkfield_nb.inference.mc import mc_predict_batch
from darkfield_nb.models import GeneratorConfig, build_generator, count_parameters
from darkfield_nb.uncertainty import mc_dropout_predict


def _timer(device: torch.device, clock: str):
    now = time.process_time if clock == "cpu" else time.perf_counter

    def run(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = now()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return now() - t0

    return run


VARIANTS = ("pipeline", "batched", "repeat", "loop")


def bench(
    stages: str,
    placement: str,
    size: int,
    samples: int,
    repeats: int,
    device: torch.device,
    clock: str,
) -> dict:
    """Time the five variants round-robin (so that load from other processes hits them alike)
    and keep each one's fastest time; ratios are to the fastest deterministic forward."""
    torch.manual_seed(0)
    cfg = GeneratorConfig(dropout_stages=stages, dropout_placement=placement)
    g = build_generator(cfg).to(device).eval()
    x = torch.randn(1, 1, size, size, device=device)

    def forward():
        with torch.no_grad():
            g(x)

    variants = {"forward": forward}
    variants["pipeline"] = lambda: mc_predict_batch(g, x, samples=samples, seed=0)
    for strategy in ("batched", "repeat", "loop"):
        variants[strategy] = lambda s=strategy: mc_dropout_predict(
            g, x, samples=samples, seed=0, strategy=s
        )
    run = _timer(device, clock)
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for k, fn in variants.items():
            times[k].append(run(fn))
    row = {"dropout_stages": stages, "placement": placement, "parameters": count_parameters(g)}
    for k, ts in times.items():
        row[f"{k}_s"] = min(ts)
        row[f"{k}_median_s"] = statistics.median(ts)
    for k in VARIANTS:
        row[f"{k}_ratio"] = row[f"{k}_s"] / row["forward_s"]
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--stages", nargs="+", default=["last", "all"])
    ap.add_argument("--placements", nargs="+", default=["decoder", "head"])
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: perf_counter; cpu: process CPU time (robust on a shared, loaded machine)",
    )
    ap.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"device={device} threads={torch.get_num_threads()} size={args.size} "
        f"samples={args.samples} repeats={args.repeats} clock={args.clock} "
        f"torch={torch.__version__}"
    )
    rows = [
        bench(s, p, args.size, args.samples, args.repeats, device, args.clock)
        for s in args.stages
        for p in args.placements
    ]
    cols = " ".join(f"{v:>14}" for v in VARIANTS)
    print(f"{'stages':>6} {'placement':>9} {'forward s':>10} {cols}")
    for r in rows:
        cells = [f"{r[f'{v}_s']:6.2f}s {r[f'{v}_ratio']:5.1f}x" for v in VARIANTS]
        print(
            f"{r['dropout_stages']:>6} {r['placement']:>9} {r['forward_s']:10.3f} "
            + " ".join(f"{c:>14}" for c in cells)
        )
    print(f"parameters of the generator: {rows[0]['parameters']:,}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
