"""Kill ``darkfield-nb predict`` (SIGKILL, whole process group) three times at random moments,
resume, and compare with an uninterrupted run: exactly N complete sets, no partial or
temporary files, byte-identical outputs."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from darkfield_nb import checkpoint
from darkfield_nb.inference.outputs import MAPS
from darkfield_nb.io import write_image
from darkfield_nb.models import GeneratorConfig, ProgressiveGenerator

REPO = Path(__file__).resolve().parent.parent
N = 60


def _cmd(src: Path, out: Path, ckpt: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "darkfield_nb.cli",
        "predict",
        str(src),
        "--out",
        str(out),
        "--checkpoint",
        str(ckpt),
        "--samples",
        "3",
        "--batch-size",
        "4",
        "--workers",
        "1",
        "--quiet",
        "--device",
        "cpu",
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _done(out: Path) -> int:
    return len(list((out / ".records").glob("*.json"))) if (out / ".records").is_dir() else 0


def _kill_when(cmd, out: Path, target: int, extra: float, timeout: float = 240) -> bool:
    """Start ``cmd``; SIGKILL its process group ``extra`` s after ``target`` sets are done.
    Returns True when it was killed (False: it finished first)."""
    proc = subprocess.Popen(
        cmd, env=_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    t0 = time.monotonic()
    try:
        while proc.poll() is None and _done(out) < target:
            if time.monotonic() - t0 > timeout:
                raise AssertionError("predict made no progress")
            time.sleep(0.01)
        time.sleep(extra)
        if proc.poll() is not None:
            return False
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _maps(out: Path) -> dict[str, bytes]:
    return {f"{name}/{p.name}": p.read_bytes() for name in MAPS for p in (out / name).glob("*")}


def _rows(out: Path) -> list[dict]:
    with open(out / "summary.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]


def test_killed_three_times_then_resumed_equals_an_uninterrupted_run(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    for i in range(N):
        h, w = rng.integers(32, 65, 2)
        write_image(src / f"cxr{i:03d}.png", rng.integers(0, 4096, (h, w)).astype(np.uint16))
    torch.manual_seed(0)
    model = ProgressiveGenerator(GeneratorConfig(n_stages=2, base_width=4, depth=2, dropout=0.2))
    ckpt = checkpoint.save_trained(
        tmp_path / "tiny.pt",
        model,
        stage=1,
        epoch=1,
        geometry=checkpoint.make_geometry(48, field_of_view_mm=400.0),
    )
    ref, out = tmp_path / "ref", tmp_path / "out"
    subprocess.run(_cmd(src, ref, ckpt), env=_env(), check=True, capture_output=True)

    kills, target = 0, 0
    for _ in range(3):
        target += int(rng.integers(2, 15))
        kills += _kill_when(_cmd(src, out, ckpt), out, target, float(rng.uniform(0, 0.3)))
    assert kills == 3, "predict finished before it could be killed three times"
    assert _done(out) < N
    done = subprocess.run(_cmd(src, out, ckpt), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "skipped" in done.stdout

    assert _done(out) == N
    for name in MAPS:
        assert len(list((out / name).glob("*.tif"))) == N
    leftovers = [p for p in out.rglob("*") if p.is_file() and ".tmp" in p.name]
    assert not leftovers, leftovers
    assert _maps(out) == _maps(ref)  # byte-identical to the uninterrupted run
    assert _rows(out) == _rows(ref)
