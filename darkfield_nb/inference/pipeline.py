"""Streaming, sharded, resumable batch synthesis of dark-field maps for folders of radiographs.

:func:`predict_folder` runs:

1. Inputs: :func:`~darkfield_nb.inference.inputs.resolve_inputs` (a paired-data root uses its
   ``attenuation/``); rank 0 removes stale temporaries of an interrupted run.
2. Sharding: under ``torchrun`` (``WORLD_SIZE > 1``) rank r takes ``paths[r::world]`` of the
   sorted list: disjoint, deterministic, every image exactly once (no padding sampler).
3. Resume: an input whose completion record matches (checkpoint digest, samples, seed, stage,
   resampling, format, output version, recalibration, OOD scoring, epistemic, input digest;
   ``records.completion_status``) is skipped; the others are (re)done and the report says why.
4. Decoding in ``torch.utils.data`` worker processes: read, refuse what is not a radiograph
   (by name, the run goes on), pixel size, resampling to the training geometry
   (``geometry.plan_resample``), per-image normalization (``data.normalize_input``).
5. The model: images are batched across files (fixed groups of ``batch_size`` consecutive files
   of the shard, split by model shape, so an image always meets the same batch and its bytes do
   not depend on what a resume skipped), MC passes batched too (``mc.mc_predict_batch``, masks
   independent of the batch), fp16 autocast on CUDA, channels_last.
6. A writer thread resamples the maps back to the input's size, writes each set atomically
   (all files or none, ``outputs.write_set``), then its completion record; the model does not
   wait for the disk. A checkpoint's recalibration scales the sigma maps (per field of the
   image's predicted lung, from its mean at the model geometry), its OOD detector
   scores each model input and, with ``epistemic="combined"``, adds its density sigma to the
   epistemic and total maps (``inference.hookups``).
7. Summary: each rank writes its rows (from the records, so resumed runs are complete) to a
   part; rank 0 merges them into ``<out>/summary.csv``.
"""

from __future__ import annotations

import os
import queue
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from darkfield_nb.inference import outputs, records
from darkfield_nb.inference.context import process_context
from darkfield_nb.inference.decoding import GroupDataset, identity
from darkfield_nb.inference.geometry import TrainingGeometry
from darkfield_nb.inference.hookups import (
    EPISTEMIC_MODES,
    apply_recalibration_maps,
    combine_epistemic,
    epistemic_mode,
    level_items,
    recalibration_digest,
    score_items,
)
from darkfield_nb.inference.inputs import resolve_inputs
from darkfield_nb.inference.mc import PIXEL_BUDGET, mc_predict_batch
from darkfield_nb.inference.writer import SetWriter
from darkfield_nb.io import write_csv

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class PredictConfig:
    """Settings of :func:`predict_folder`.

    samples: MC dropout passes T (0: one deterministic pass, dropout off, epistemic = 0).
    seed: dropout masks (pass t uses masks seeded by (seed, t, layer), the same for every
        image). stage: which stage's output (-1 the last). batch_size: images per model call
        (None: 32 on CUDA; on CPU as many training-geometry images as fill half of
        ``mc.PIXEL_BUDGET["cpu"]``, at most 16: 1 at 256 x 256, so that 2 passes share a
        call). workers: decoding processes (None: 1 on CPU, up to 8 on CUDA; 0 decodes in
        this process). format: "tiff" (float32 D) or "png16".
    preview: also write ``preview/<stem>.png``. resample: "auto" (to the training geometry)
        or "off" (the input's own size). precision: "auto" (fp16 autocast on CUDA, float32
        elsewhere), "fp32", "bf16", "fp16". fp16 rather than bf16 on CUDA: the epistemic sigma
        is a small difference between passes (about 0.0004 D) and bf16's 8-bit mantissa moved
        it by about 10 % (CPU bf16 autocast, 6 sample images, T = 20: mean epistemic 0.000394
        -> 0.000437 D, mean |dD| 0.0010, max |d aleatoric| 1.7 at one pixel; ``bench/
        batch_synthesis.py precision``), so bf16 is never chosen by "auto".
        channels_last: None = on (on CPU it saves oneDNN's layout conversions around every
        convolution).
    writers: threads writing outputs (None: 1 on CPU, up to 8 on CUDA). epistemic: "mc"
    (the MC dropout spread), "combined" (sqrt(mc^2 + d^2), d the OOD detector's density sigma;
    total = sqrt(aleatoric^2 + epistemic^2); ``hookups``), "auto" (combined with a detector).
    """

    samples: int = 20
    seed: int = 0
    stage: int = -1
    batch_size: int | None = None
    workers: int | None = None
    format: str = "tiff"
    preview: bool = False
    resample: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    writers: int | None = None
    progress: bool = True
    epistemic: str = "auto"

    def check(self) -> None:
        if self.samples < 0:
            raise ValueError(f"samples={self.samples}: must be >= 0 (0: deterministic pass)")
        if self.format not in outputs.FORMATS:
            raise ValueError(f"format={self.format!r}: choose one of {outputs.FORMATS}")
        if self.resample not in ("auto", "off"):
            raise ValueError(f"resample={self.resample!r}: choose 'auto' or 'off'")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: choose one of {PRECISIONS}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}: must be >= 1")
        if self.epistemic not in EPISTEMIC_MODES:
            raise ValueError(f"epistemic={self.epistemic!r}: choose one of {EPISTEMIC_MODES}")


@dataclass
class PredictReport:
    """What one process did. ``redone`` maps an input to why its old outputs were replaced;
    ``failed`` maps an input to its problem; ``notes`` are things said once (paired root,
    stale temporaries removed); ``warnings`` name radiographs far from the training geometry.
    The lists are this process's shard; ``totals`` counts written / skipped / redone / failed
    over all processes; ``epistemic``: the epistemic map written ("mc" or "combined")."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    redone: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_inputs: int = 0
    totals: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    device: str = "cpu"
    rank: int = 0
    world_size: int = 1
    summary: Path | None = None
    epistemic: str = "mc"


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _amp_dtype(cfg: PredictConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "fp32" or (cfg.precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16 if cfg.precision == "bf16" else torch.float16


def _cpu_batch(geometry: TrainingGeometry) -> int:
    h, w = geometry.size
    return max(1, min(16, PIXEL_BUDGET["cpu"] // (2 * h * w)))


def _groups(paths: list[Path], size: int) -> list[list[Path]]:
    return [paths[i : i + size] for i in range(0, len(paths), size)]


def predict_folder(
    model: torch.nn.Module,
    inputs,
    out_dir: str | os.PathLike,
    *,
    geometry: TrainingGeometry | None = None,
    checkpoint_sha256: str = "",
    config: PredictConfig | None = None,
    device: str | torch.device = "auto",
    dist_ctx=None,
    recalibration: dict | None = None,
    detector=None,
    level=None,
) -> PredictReport:
    """Synthesize every radiograph of ``inputs`` into ``out_dir`` (module docstring).

    ``model``: a ProgressiveGenerator; ``geometry``: its training geometry (default: the
    DEFAULT_GEOMETRY of ``darkfield_nb.checkpoint``); ``checkpoint_sha256``: the checkpoint
    file's digest (part of the completion key: another checkpoint redoes every set).
    ``dist_ctx``: a ``train.distributed.DistContext``; None joins the torchrun group when
    ``WORLD_SIZE > 1`` (and leaves it at the end).
    ``recalibration``: a checkpoint's recalibration entry (``calibration.recalibration_of``):
    the sigma maps are multiplied by its factor map s(x) (f_in where the image's own mean
    exceeds the stored lung threshold, f_out elsewhere; without field factors the global
    factor: ``hookups``); its digest joins the completion key. ``detector``: a checkpoint's
    ``OODDetector`` (on ``model``): each image's
    ``ood_score`` / ``ood_flag`` (of the model input) fill the summary columns, and with
    ``config.epistemic`` "combined" (or "auto") its density sigma d joins the maps:
    ``epistemic = sqrt((s mc)^2 + d^2)``, ``total = sqrt((s aleatoric)^2 + epistemic^2)``
    (s: the recalibration factor map). Both default to what
    :func:`~darkfield_nb.inference.load_model` attached to ``model`` (``model.recalibration``,
    ``model.ood_detector``), None when absent; "combined" without a detector is a ValueError
    naming the checkpoint (``model.checkpoint_path``). ``level``: a checkpoint's
    ``level.LungLevel`` (default ``model.lung_level``): before the recalibration, each image's
    dark-field and sigma maps are multiplied by its factor g (``hookups.apply_level_factor``),
    and ``lung_level`` / ``lung_level_sd`` / ``level_factor`` fill the summary columns.
    """
    if recalibration is None:
        recalibration = getattr(model, "recalibration", None)
    if detector is None:
        detector = getattr(model, "ood_detector", None)
    if level is None:
        level = getattr(model, "lung_level", None)
    cfg = config or PredictConfig()
    cfg.check()
    ckpt = getattr(model, "checkpoint_path", None) or f"checkpoint {checkpoint_sha256[:12]}"
    mode = epistemic_mode(cfg.epistemic, detector, ckpt)
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if geometry is None:
        from darkfield_nb.checkpoint import DEFAULT_GEOMETRY

        geometry = TrainingGeometry.from_dict(DEFAULT_GEOMETRY)
    paths, notes = resolve_inputs(inputs)
    own_ctx = dist_ctx is None
    if own_ctx:
        dist_ctx, dev = process_context(device)
    else:
        from darkfield_nb.hardware import pick_device

        dev = pick_device(device)
    report = PredictReport(notes=list(notes), device=str(dev), n_inputs=len(paths), epistemic=mode)
    report.rank, report.world_size = dist_ctx.rank, dist_ctx.world_size
    try:
        if out_dir.exists() and not out_dir.is_dir():
            raise FileExistsError(f"{out_dir}: output path is a file, expected a folder")
        if dist_ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            stale = records.clean_stale_temporaries(out_dir)
            if stale:
                report.notes.append(
                    f"removed {len(stale)} stale temporary file(s) of an interrupted run"
                )
            if cfg.format == "png16":
                outputs.write_scale_sidecar(out_dir)
        dist_ctx.barrier()
        shard = paths[dist_ctx.rank :: dist_ctx.world_size]
        extras = {
            "recalibration": recalibration,
            "detector": detector,
            "epistemic": mode,
            "level": level,
        }
        _run_shard(model, shard, out_dir, geometry, checkpoint_sha256, cfg, dev, report, extras)
        rows = outputs.summary_rows(out_dir, shard, report.failed)
        if dist_ctx.enabled:
            part = out_dir / (f"summary.part-{dist_ctx.rank:05d}-of-{dist_ctx.world_size:05d}.csv")
            write_csv(part, rows, outputs.SUMMARY_COLUMNS)
            dist_ctx.barrier()
            if dist_ctx.is_main:
                report.summary = outputs.merge_summary_parts(out_dir, dist_ctx.world_size)
            dist_ctx.barrier()
        else:
            report.summary = out_dir / "summary.csv"
            write_csv(report.summary, rows, outputs.SUMMARY_COLUMNS)
        counts = torch.tensor(
            [len(report.written), len(report.skipped), len(report.redone), len(report.failed)]
        )
        if dist_ctx.enabled:
            import torch.distributed as dist

            counts = counts.to(dev)  # NCCL reduces CUDA tensors, Gloo CPU ones
            dist.all_reduce(counts)
        names = ("written", "skipped", "redone", "failed")
        report.totals = dict(zip(names, counts.cpu().tolist(), strict=True))
    finally:
        if own_ctx:
            dist_ctx.close()
    report.seconds = time.perf_counter() - t0
    return report


def _run_shard(model, shard, out_dir, geometry, ckpt_sha, cfg, dev, report, extras) -> None:
    n_stages = model.config.n_stages
    stage = cfg.stage % n_stages
    recal = extras["recalibration"]
    key = records.run_key(
        ckpt_sha,
        cfg.samples,
        cfg.seed,
        stage,
        cfg.resample,
        cfg.format,
        recalibration=recalibration_digest(recal),
        ood=extras["detector"] is not None,
        epistemic=extras["epistemic"],
        level=getattr(extras["level"], "digest", None),
    )
    pending: set[Path] = set()
    for p in shard:
        done, why, _ = records.completion_status(out_dir, p, key)
        if done:
            report.skipped.append(p)
        else:
            pending.add(p)
            if not why.startswith("no completion record (new"):
                report.redone[str(p)] = why
            elif any((out_dir / f).exists() for f in outputs.set_files(p.stem, cfg.format, False)):
                report.redone[str(p)] = "no completion record (interrupted)"
    if not pending:
        return
    cuda = dev.type == "cuda"
    bs = cfg.batch_size or (32 if cuda else _cpu_batch(geometry))
    # fixed groups of the whole shard: an image meets the same batch on every run
    groups = [g for g in _groups(shard, bs) if any(p in pending for p in g)]
    workers = cfg.workers
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if cuda else 1
    loader = DataLoader(
        GroupDataset(groups, geometry, cfg.resample == "auto"),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=identity,
        pin_memory=cuda,
        prefetch_factor=2 if workers > 0 else None,
    )
    # The model keeps every core: decoding and resampling a radiograph cost a few per cent of
    # its 20 passes, so the worker is mostly idle. (Leaving it a core was 1.6-2x faster on a
    # machine loaded by other jobs, and 2x slower on a quiet 2-core machine: bench/RESULTS.md.)
    _run_batches(model, groups, loader, pending, out_dir, key, cfg, dev, stage, bs, report, extras)


def _run_batches(model, groups, loader, pending, out_dir, key, cfg, dev, stage, bs, report, extras):
    from tqdm.auto import tqdm

    recal, detector, mode = extras["recalibration"], extras["detector"], extras["epistemic"]
    level = extras.get("level")
    cuda = dev.type == "cuda"
    amp_dtype = _amp_dtype(cfg, dev)
    channels_last = True if cfg.channels_last is None else cfg.channels_last
    model = model.to(dev).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    n_writers = cfg.writers or (min(8, os.cpu_count() or 1) if cuda else 1)
    jobs: queue.Queue = queue.Queue(maxsize=2 * bs)
    writers = [SetWriter(out_dir, cfg, key, jobs) for _ in range(n_writers)]
    for w in writers:
        w.start()
    bar = tqdm(total=len(pending), desc="predict", disable=not cfg.progress, unit="image")
    try:
        for group in loader:
            by_shape: dict[tuple[int, int], list[dict]] = {}
            for item in group:
                if "error" in item:
                    if item["path"] in pending:
                        report.failed[str(item["path"])] = item["error"]
                        bar.update(1)
                    continue
                for w in item["plan"].warnings:
                    if item["path"] in pending:
                        warnings.warn(w, UserWarning, stacklevel=2)
                        report.warnings.append(w)
                by_shape.setdefault(tuple(item["x"].shape), []).append(item)
            for items in by_shape.values():
                todo = [it for it in items if it["path"] in pending]
                if not todo:
                    continue
                t = time.perf_counter()
                x = torch.stack([it["x"] for it in items])[:, None].to(dev, non_blocking=True)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                seen: list = []
                det: list = []
                maps = mc_predict_batch(
                    model,
                    x,
                    cfg.samples,
                    cfg.seed,
                    stage,
                    amp_dtype=amp_dtype,
                    on_prefix=seen.append,
                    on_deterministic=det.append,
                )
                density = None  # the score (and density sigma) of the image the model sees
                if detector is not None:
                    density = score_items(detector, mode, seen, det, x, model, items, pending, dev)
                maps = {k: v[:, 0].float().cpu().numpy() for k, v in maps.items()}
                g = level_items(level, x, maps["darkfield"], items)
                for it in items:
                    if it.get("level_warning") and it["path"] in pending:
                        w = f"{it['path']}: {it['level_warning']}"
                        warnings.warn(w, UserWarning, stacklevel=2)
                        report.warnings.append(w)
                maps, _ = apply_recalibration_maps(maps, recal, level_factor=g)
                maps = combine_epistemic(maps, density)
                seconds = (time.perf_counter() - t) / len(items)
                for i, it in enumerate(items):
                    if it["path"] not in pending:
                        continue
                    for w in writers:
                        if w.error is not None:
                            raise w.error
                    jobs.put((it, {k: v[i] for k, v in maps.items()}, seconds))
                    bar.update(1)
    finally:
        for _ in writers:
            jobs.put(None)
        for w in writers:
            w.join()
        bar.close()
    for w in writers:
        if w.error is not None:
            raise w.error
        report.written.extend(w.written)
        report.failed.update(w.failed)
    report.written.sort()
