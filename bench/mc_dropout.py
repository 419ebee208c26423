"""Cost of Monte Carlo dropout relative to one deterministic forward pass, measured in one run.

For each dropout placement (``dropout_stages`` "last" and "all") of the default 3-stage
generator, at 256 x 256, batch 1:

  forward   one deterministic pass (eval mode, no grad)
  batched   mc_dropout_predict(samples=T): shared prefix once, the rest batched (the default)
  repeat    the whole network on T stacked copies (batching without prefix sharing)
  loop      T separate passes (the naive way)

and prints each as a ratio to ``forward`` (fastest of ``--repeats`` round-robin timings after a
warm-up, which is robust to load from other processes on a shared machine).
Target: batched <= 8x for the default placement with T = 20.

    python bench/mc_dropout.py [--size 256] [--samples 20] [--repeats 3] [--device cpu]
           [--stages last all] [--threads N] [--clock wall|cpu] [--json out.json]

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


def bench(
    placement: str, size: int, samples: int, repeats: int, device: torch.device, clock: str
) -> dict:
    """Time the four variants round-robin (so that load from other processes hits them alike)
    and keep each one's fastest time; ratios are to the fastest deterministic forward."""
    torch.manual_seed(0)
    g = build_generator(GeneratorConfig(dropout_stages=placement)).to(device).eval()
    x = torch.randn(1, 1, size, size, device=device)

    def forward():
        with torch.no_grad():
            g(x)

    variants = {"forward": forward}
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
    row = {"dropout_stages": placement, "parameters": count_parameters(g)}
    for k, ts in times.items():
        row[f"{k}_s"] = min(ts)
        row[f"{k}_median_s"] = statistics.median(ts)
    for k in ("batched", "repeat", "loop"):
        row[f"{k}_ratio"] = row[f"{k}_s"] / row["forward_s"]
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--stages", nargs="+", default=["last", "all"])
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
        bench(p, args.size, args.samples, args.repeats, device, args.clock) for p in args.stages
    ]
    head = f"{'dropout_stages':>14} {'forward s':>10} {'batched':>14} {'repeat':>14} {'loop':>14}"
    print(head)
    for r in rows:
        cells = [
            f"{r[f'{s}_s']:6.2f}s {r[f'{s}_ratio']:5.1f}x" for s in ("batched", "repeat", "loop")
        ]
        print(
            f"{r['dropout_stages']:>14} {r['forward_s']:10.3f} "
            + " ".join(f"{c:>14}" for c in cells)
        )
    print(f"parameters of the generator: {rows[0]['parameters']:,}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
