"""Batch synthesis: the streaming pipeline against the per-image loop it replaced, measured in
one run; memory at scale; kill/resume at scale; lung D across image sizes.

    python bench/batch_synthesis.py speed  [--n 8] [--samples 20] [--device cpu] [--size 256]
                                           [--round 4] [--skip-old]
        images/s at 256 px (the shipped sample radiographs) for the old per-image loop
        (read, normalize, ``uncertainty.mc_dropout_predict``, four TIFFs: the code of
        ``synthesis.synthesize_folder`` before the pipeline) and ``inference.predict_folder``
        on the same files, in one process, alternating on rounds of ``--round`` images. Target:
        new / old >= 3 on CPU. GPU target (issue 13): ``--device cuda --size 512 --n 2000
        --round 2000 --skip-old`` >= 200 images/s on one H100 (inputs resampled to the model's
        256 px; ``--n`` above 36 repeats the sample images under new names).
    python bench/batch_synthesis.py precision [--n 8] [--samples 20]
        the maps of float32 before the shared-skip decoder, float32 now and bf16 autocast now
        on the same sample images: max / mean |difference| against the first.
    python bench/batch_synthesis.py readme [--n 36] [--old-commit 98e3ad2]
        the README's first command (``darkfield-nb predict data_samples/attenuation --out
        DIR``) with the code and shipped model of ``--old-commit`` (``git archive``, ``git
        show``) and with this tree and its shipped model, one after the other, on the first
        ``--n`` sample images; wall time of each command.
    python bench/batch_synthesis.py rss [--counts 200 1000] [--size 64] [--samples 2]
        peak RSS of ``darkfield-nb predict`` (shipped model, ``--resample off``) on folders of
        that many small images, each in a fresh process (the largest process's peak,
        ``getrusage(RUSAGE_CHILDREN)``). Target: flat within 10 %.
    python bench/batch_synthesis.py killresume [--n 1000] [--kills 3]
        predict on N small images with a tiny model, killed (SIGKILL, process group) at random
        moments, resumed; compared with an uninterrupted run.
    python bench/batch_synthesis.py geometry [--image PNG] [--samples 20]
        lung D (``inference.outputs.lung_region``) of a real radiograph at its size and
        upsampled 2x, with and without resampling to the training geometry.

Machine load matters (a shared 2-core CPU): the script prints the load average beside each
figure; compare only numbers from one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from darkfield_nb.data import normalize_input  # noqa: E402
from darkfield_nb.inference import PredictConfig, load_model, predict_folder  # noqa: E402
from darkfield_nb.inference.geometry import resize  # noqa: E402
from darkfield_nb.io import read_image, write_image  # noqa: E402
from darkfield_nb.uncertainty import mc_dropout_predict  # noqa: E402

MAPS = ("darkfield", "aleatoric", "epistemic", "total")


def _load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def old_loop(model, paths, out: Path, samples: int, stage: int) -> None:
    """The per-image loop of synthesis.synthesize_folder before the pipeline (commit 98e3ad2)."""
    for path in paths:
        image = read_image(path)
        x = torch.from_numpy(normalize_input(image).astype(np.float32))[None, None]
        r = mc_dropout_predict(model, x, samples=samples, seed=0, stage=stage)
        maps = [r.mean, r.aleatoric, r.epistemic, r.total]
        for name, m in zip(MAPS, maps, strict=True):
            write_image(out / name / f"{path.stem}.tif", m[0, 0].float().numpy())


def _rounds(paths: list[Path], size: int) -> list[list[Path]]:
    return [paths[i : i + size] for i in range(0, len(paths), size)]


def cmd_speed(args) -> None:
    """Old loop and new pipeline alternate on rounds of ``--round`` images (old first in
    each round), so a change of machine load hits both alike; every new round starts a fresh
    ``predict_folder`` (its decoding worker included)."""
    loaded = load_model(None, args.device)
    model, stage = loaded.model, loaded.stages_trained - 1
    samples = sorted((REPO / "data_samples" / "attenuation").glob("*.png"))
    paths = [samples[i % len(samples)] for i in range(args.n)]
    print(
        f"{len(paths)} images of {args.size} px, T = {args.samples}, {args.device}, "
        f"precision {args.precision}, {torch.get_num_threads()} threads, {_load()}"
    )
    t_old = t_new = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for k, chunk in enumerate(_rounds(paths, args.round)):
            folder = Path(tmp) / f"in{k}"
            folder.mkdir()
            for j, p in enumerate(chunk):
                name = f"{k:03d}_{j:05d}_{p.name}"
                if args.size == 256:
                    shutil.copy(p, folder / name)
                else:  # the sample radiograph resampled to --size (a larger detector)
                    img = resize(read_image(p), (args.size, args.size))
                    write_image(folder / name, np.clip(np.rint(img), 0, 65535).astype(np.uint16))
            dt_old = 0.0
            if not args.skip_old:
                t = time.perf_counter()
                old_loop(model, sorted(folder.iterdir()), Path(tmp) / "old", args.samples, stage)
                dt_old = time.perf_counter() - t
            cfg = PredictConfig(
                samples=args.samples, stage=stage, progress=False, precision=args.precision
            )
            t = time.perf_counter()
            predict_folder(
                model,
                folder,
                Path(tmp) / f"new{k}",
                geometry=loaded.geometry,
                config=cfg,
                device=args.device,
            )
            dt_new = time.perf_counter() - t
            t_old, t_new = t_old + dt_old, t_new + dt_new
            print(
                f"round {k}: {len(chunk)} images, old {dt_old:.1f} s, new {dt_new:.1f} s "
                f"({_load()})",
                flush=True,
            )
    n = len(paths)
    if t_old:
        print(f"old per-image loop: {t_old:.1f} s, {n / t_old:.3f} images/s")
    print(f"new pipeline:       {t_new:.1f} s, {n / t_new:.3f} images/s")
    if t_old:
        print(f"ratio new/old images/s: {t_old / t_new:.2f}x")


def cmd_precision(args) -> None:
    """Maps of ``mc_predict_batch`` on the first ``--n`` sample images (one at a time, seed 0):
    float32 before this change (the whole decoder per pass, ``mc_suffix``, contiguous layout),
    float32 now (shared skip convolutions, channels_last) and bf16 autocast now. Prints max and
    mean |difference| of each map against the float32 reference, and the mean of each map."""
    import copy

    from darkfield_nb.inference import mc

    loaded = load_model(None, "cpu")
    ref_model, stage = loaded.model.eval(), loaded.stages_trained - 1
    fast = copy.deepcopy(ref_model).to(memory_format=torch.channels_last)
    paths = sorted((REPO / "data_samples" / "attenuation").glob("*.png"))[: args.n]
    runs: dict[str, list] = {"fp32 before": [], "fp32 now": [], "bf16 now": []}
    timing = dict.fromkeys(runs, 0.0)
    for p in paths:
        x = torch.from_numpy(normalize_input(read_image(p)).astype(np.float32))[None, None]
        xc = x.contiguous(memory_format=torch.channels_last)
        saved = mc.shared_decoder
        mc.shared_decoder = lambda *a: None  # the whole decoder per pass, as before
        t = time.perf_counter()
        runs["fp32 before"].append(mc.mc_predict_batch(ref_model, x, args.samples, 0, stage))
        timing["fp32 before"] += time.perf_counter() - t
        mc.shared_decoder = saved
        for label, amp in (("fp32 now", None), ("bf16 now", torch.bfloat16)):
            t = time.perf_counter()
            runs[label].append(mc.mc_predict_batch(fast, xc, args.samples, 0, stage, amp_dtype=amp))
            timing[label] += time.perf_counter() - t
    print(f"{len(paths)} sample images, T = {args.samples}, {_load()}")
    ref = runs["fp32 before"]
    for label, maps in runs.items():
        print(f"{label}: {timing[label] / len(paths):.2f} s per image")
        for k in MAPS:
            a = np.stack([m[k].numpy() for m in maps])
            b = np.stack([m[k].numpy() for m in ref])
            d = np.abs(a - b)
            print(
                f"   {k:10s} mean {a.mean():.6f} (ref {b.mean():.6f})  |diff| max {d.max():.2e} "
                f"mean {d.mean():.2e}  mean relative {(d / np.abs(b).clip(1e-12)).mean():.2%}"
            )


def cmd_readme(args) -> None:
    """The README's first command with the old and the new code, alternating on rounds of
    ``--round`` sample images (each round a fresh command, as a user would run it)."""
    src = REPO / "data_samples" / "attenuation"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old_tree = tmp / "old"
        old_tree.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.old_commit, "darkfield_nb"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(old_tree)], input=archive, check=True)
        env = dict(os.environ)
        # each command with the model it shipped with, as a user ran it: the old code cannot
        # load a checkpoint whose settings it does not know (v3's dropout placement)
        old_ckpt = tmp / "old_pretrained.pt"
        old_ckpt.write_bytes(
            subprocess.run(
                ["git", "-C", str(REPO), "show", f"{args.old_commit}:data_samples/pretrained.pt"],
                check=True,
                capture_output=True,
            ).stdout
        )
        ckpts = {"old": old_ckpt, "new": REPO / "data_samples" / "pretrained.pt"}
        total = {"old": 0.0, "new": 0.0}
        paths = sorted(src.glob("*.png"))[: args.n]
        for k, chunk in enumerate(_rounds(paths, args.round)):
            folder = tmp / f"attenuation{k}"
            folder.mkdir()
            for p in chunk:
                shutil.copy(p, folder / p.name)
            for label, tree in (("old", old_tree), ("new", REPO)):
                env["PYTHONPATH"] = str(tree)
                cmd = [sys.executable, "-m", "darkfield_nb.cli", "predict", str(folder)]
                cmd += ["--out", str(tmp / f"runs_{label}{k}"), "--checkpoint", str(ckpts[label])]
                cmd += ["--quiet"]
                t = time.perf_counter()
                # cwd=tmp: ``python -m`` puts the working directory first on sys.path
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp)
                dt = time.perf_counter() - t
                total[label] += dt
                print(
                    f"round {k} {label}: {dt:.1f} s for {len(chunk)} images, exit "
                    f"{done.returncode} ({_load()}; darkfield_nb from {tree})",
                    flush=True,
                )
                print("   " + "\n   ".join(done.stdout.strip().splitlines()[-3:]), flush=True)
        n = len(paths)
        print(f"old command: {total['old']:.1f} s for {n} images ({total['old'] / n:.1f} s/image)")
        print(f"new command: {total['new']:.1f} s for {n} images ({total['new'] / n:.1f} s/image)")
        print(f"new / old time: {total['new'] / total['old']:.2f}")


def _write_small(folder: Path, n: int, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 2000 + 1500 * np.exp(-((xx - 0.5) ** 2) / 0.05 - ((yy - 0.5) ** 2) / 0.08)
    for i in range(n):
        img = base + rng.normal(0, 80, base.shape)
        write_image(folder / f"img{i:05d}.png", np.clip(img, 0, 4095).astype(np.uint16))


def cmd_rss(args) -> None:
    for n in args.counts:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "in"
            folder.mkdir()
            _write_small(folder, n, args.size)
            predict = [sys.executable, "-m", "darkfield_nb.cli", "predict", str(folder)]
            predict += ["--out", str(Path(tmp) / "out"), "--samples", str(args.samples)]
            predict += ["--resample", "off", "--quiet", "--device", "cpu"]
            probe = (
                "import resource, subprocess, sys, time; t = time.perf_counter(); "
                "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
                "print(r.returncode, time.perf_counter() - t, "
                "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
            )
            env = dict(os.environ, PYTHONPATH=str(REPO))
            out = subprocess.run(
                [sys.executable, "-c", probe, *predict],
                env=env,
                capture_output=True,
                text=True,
                cwd=tmp,
            )
            code, secs, kb = out.stdout.split()
            print(
                f"{n:5d} images of {args.size} px, T = {args.samples}: peak RSS "
                f"{int(kb) / 1024:.0f} MB, {float(secs):.1f} s, exit {code} ({_load()})"
            )


def _done(out: Path) -> int:
    d = out / ".records"
    return len(list(d.glob("*.json"))) if d.is_dir() else 0


def cmd_killresume(args) -> None:
    from darkfield_nb import checkpoint
    from darkfield_nb.models import GeneratorConfig, ProgressiveGenerator

    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "src"
        src.mkdir()
        for i in range(args.n):
            h, w = rng.integers(32, 65, 2)
            write_image(src / f"cxr{i:05d}.png", rng.integers(0, 4096, (h, w)).astype(np.uint16))
        torch.manual_seed(0)
        model = ProgressiveGenerator(
            GeneratorConfig(n_stages=2, base_width=4, depth=2, dropout=0.2)
        )
        ckpt = checkpoint.save_trained(
            tmp / "tiny.pt",
            model,
            stage=1,
            epoch=1,
            geometry=checkpoint.make_geometry(48, field_of_view_mm=400.0),
        )
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")

        def cmd(out):
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
                "--quiet",
                "--device",
                "cpu",
            ]

        t = time.perf_counter()
        subprocess.run(cmd(tmp / "ref"), env=env, check=True, capture_output=True)
        print(f"uninterrupted run: {time.perf_counter() - t:.1f} s ({_load()})")
        out = tmp / "out"
        for k in range(args.kills):
            target = _done(out) + int(rng.integers(1, max(2, args.n // (args.kills + 1))))
            proc = subprocess.Popen(
                cmd(out),
                env=env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            while proc.poll() is None and _done(out) < target:
                time.sleep(0.01)
            time.sleep(float(rng.uniform(0, 0.5)))
            killed = proc.poll() is None
            if killed:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            temps = [p for p in out.rglob("*") if ".tmp" in p.name]
            print(
                f"kill {k + 1}: {'killed' if killed else 'finished first'} with "
                f"{_done(out)} sets done, {len(temps)} temporary files left behind"
            )
        t = time.perf_counter()
        res = subprocess.run(cmd(out), env=env, capture_output=True, text=True)
        print(f"resume: exit {res.returncode}, {time.perf_counter() - t:.1f} s")
        print("   " + res.stdout.strip().splitlines()[-3])
        sets = [len(list((out / m).glob("*.tif"))) for m in MAPS]
        temps = [p for p in out.rglob("*") if ".tmp" in p.name]
        same = all(
            (out / m / p.name).read_bytes() == p.read_bytes()
            for m in MAPS
            for p in (tmp / "ref" / m).glob("*.tif")
        )
        print(
            f"sets per map {sets} (want {args.n}), records {_done(out)}, "
            f"temporary files {len(temps)}, byte-identical to the uninterrupted run: {same}"
        )


def cmd_geometry(args) -> None:
    from darkfield_nb.inference.geometry import resize
    from darkfield_nb.inference.outputs import map_stats
    from darkfield_nb.synthesis import synthesize

    loaded = load_model(None)
    image = read_image(args.image)
    big = resize(image, (2 * image.shape[0], 2 * image.shape[1]))
    for resample in (True, False):
        for label, img, samples in (("x1", image, args.samples), ("x2", big, args.samples)):
            if not resample:
                samples = 0  # native size costs (size / 256)^2 more: one deterministic pass
            t = time.perf_counter()
            s = synthesize(loaded.model, img, samples=samples, resample=resample, name=label)
            st = map_stats({k: getattr(s, k) for k in MAPS})
            print(
                f"{Path(args.image).name} {label} {img.shape[0]} px, resample={resample}, "
                f"T={samples}: model {s.plan.model_shape[0]} px, lung D {st['lung_D']:.4f}, "
                f"mean D {st['mean_D']:.4f} ({time.perf_counter() - t:.0f} s, {_load()})",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--round", type=int, default=4)
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=256, help="input size (GPU target: 512)")
    p.add_argument("--skip-old", action="store_true", help="time the pipeline only")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p = sub.add_parser("precision")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--samples", type=int, default=20)
    p = sub.add_parser("readme")
    p.add_argument("--n", type=int, default=36)
    p.add_argument("--round", type=int, default=4)
    p.add_argument("--old-commit", default="98e3ad2")
    p = sub.add_parser("rss")
    p.add_argument("--counts", type=int, nargs="+", default=[200, 1000])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--samples", type=int, default=2)
    p = sub.add_parser("killresume")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("geometry")
    p.add_argument("--image", default="/work/shared/real_cxr/00000001_000.png")
    p.add_argument("--samples", type=int, default=20)
    args = ap.parse_args()
    {
        "speed": cmd_speed,
        "precision": cmd_precision,
        "readme": cmd_readme,
        "rss": cmd_rss,
        "killresume": cmd_killresume,
        "geometry": cmd_geometry,
    }[args.cmd](args)


if __name__ == "__main__":
    main()
