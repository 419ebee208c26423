"""Sharded synthesis with two CPU processes (Gloo over loopback, as torchrun would set up):
every image is written exactly once and rank 0's merged summary is complete."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from helpers import ddp_env, free_port

from darkfield_nb.inference import PredictConfig, TrainingGeometry, predict_folder
from darkfield_nb.inference.outputs import MAPS
from darkfield_nb.io import write_image
from darkfield_nb.models import GeneratorConfig, ProgressiveGenerator


def _worker(rank: int, world: int, port: int, src: str, out: str, dump: str) -> None:
    ddp_env(rank, world, port)
    torch.manual_seed(0)
    model = ProgressiveGenerator(GeneratorConfig(n_stages=1, base_width=4, depth=2, dropout=0.2))
    cfg = PredictConfig(samples=2, batch_size=3, workers=0, progress=False)
    rep = predict_folder(
        model, src, out, geometry=TrainingGeometry((40, 40), 10.0), config=cfg, device="cpu"
    )
    Path(dump, f"rank{rank}.json").write_text(
        json.dumps(
            {
                "written": [p.name for p in rep.written],
                "rank": rep.rank,
                "world": rep.world_size,
                "summary": str(rep.summary) if rep.summary else None,
            }
        )
    )


def test_two_processes_write_every_image_exactly_once(tmp_path):
    src, out, dump = tmp_path / "src", tmp_path / "out", tmp_path / "dump"
    dump.mkdir()
    rng = np.random.default_rng(0)
    names = [f"x{i:02d}.png" for i in range(11)]
    for name in names:
        write_image(src / name, rng.integers(0, 255, (40, 40)).astype(np.uint8))
    mp.spawn(_worker, args=(2, free_port(), str(src), str(out), str(dump)), nprocs=2, join=True)
    r0 = json.loads((dump / "rank0.json").read_text())
    r1 = json.loads((dump / "rank1.json").read_text())
    assert (r0["rank"], r0["world"], r1["rank"], r1["world"]) == (0, 2, 1, 2)
    # disjoint, deterministic shards of the sorted list: rank r takes names[r::2]
    assert r0["written"] == names[0::2] and r1["written"] == names[1::2]
    assert sorted(r0["written"] + r1["written"]) == names
    for name in MAPS:
        assert sorted(p.name for p in (out / name).glob("*.tif")) == [
            n.replace(".png", ".tif") for n in names
        ]
    assert r0["summary"] == str(out / "summary.csv") and r1["summary"] is None
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == [n[:-4] for n in names]
    assert all(r["status"] == "ok" for r in rows)
    assert not list(out.glob("summary.part-*"))
