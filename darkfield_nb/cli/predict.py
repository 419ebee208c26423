"""``darkfield-nb predict``: dark-field and uncertainty maps for a folder of radiographs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from darkfield_nb.cli.parser import flags_for

#: The closing line's words for each epistemic map (``PredictConfig.epistemic``).
EPISTEMIC_WORDS = {
    "mc": "the MC dropout spread (--epistemic mc)",
    "combined": (
        "sqrt(mc^2 + d^2), the MC dropout spread and the checkpoint's OOD-detector sigma d "
        "(feature density, and its foreign-body map where it has one); "
        "total = sqrt(aleatoric^2 + epistemic^2) (--epistemic combined)"
    ),
}


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _cmd_predict(args: argparse.Namespace) -> int:
    import time
    import warnings

    from darkfield_nb.inference import PredictConfig, load_model, predict_folder
    from darkfield_nb.inference.context import process_context

    t0 = time.perf_counter()
    ctx, device = process_context(args.device)
    try:
        loaded = load_model(args.checkpoint, device)
        if loaded.recalibration is not None and ctx.is_main:
            from darkfield_nb.inference.hookups import recalibration_message

            print(recalibration_message(loaded.recalibration, loaded.path))
        if loaded.level is not None and ctx.is_main:
            from darkfield_nb.inference.hookups import level_message

            print(level_message(loaded.level, loaded.path))
        # --samples --seed --batch-size --workers --format --preview --resample --precision
        # --epistemic
        cfg = PredictConfig(
            stage=loaded.stages_trained - 1,
            progress=not args.quiet and ctx.is_main,
            **flags_for(args, PredictConfig),
        )
        with warnings.catch_warnings():  # one plain line per warning, naming the file
            warnings.simplefilter("always", UserWarning)
            warnings.showwarning = _print_warning
            report = predict_folder(
                loaded.model,
                args.inputs,
                args.out,
                geometry=loaded.geometry,
                checkpoint_sha256=loaded.sha256,
                config=cfg,
                device=device,
                dist_ctx=ctx,
                recalibration=loaded.recalibration,
                detector=loaded.detector,
            )
    finally:
        ctx.close()
    for note in report.notes:
        print(f"note: {note}")
    by_reason: dict[str, list[str]] = {}
    for path, why in sorted(report.redone.items()):
        by_reason.setdefault(why, []).append(Path(path).name)
    for why, names in by_reason.items():
        shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        print(f"redoing {len(names)} set(s), {why}: {shown}")
    for problem in report.failed.values():
        print(f"  - {problem}", file=sys.stderr)
    if not ctx.is_main:
        return 1 if report.failed else 0
    seconds = time.perf_counter() - t0
    tot = report.totals
    done = tot["written"]
    passes = "1 deterministic pass" if args.samples == 0 else f"{args.samples} MC passes"
    geo = loaded.geometry
    where = f" x {report.world_size} processes" if report.world_size > 1 else ""
    print(
        f"predict: {report.n_inputs} images on {report.device}{where} with {loaded.path} "
        f"({loaded.stages_trained} stages, trained at {geo.size[0]} px, {geo.pixel_mm:.4g} mm "
        f"pixels{'' if loaded.recorded else ', the default geometry'}), {passes}: wrote {done}, "
        f"skipped {tot['skipped']} already done, redid {tot['redone']}, {tot['failed']} failed, "
        f"in {seconds:.1f} s" + (f" ({seconds / done:.2f} s per image written)" if done else "")
    )
    ext = "png" if args.format == "png16" else "tif"
    look = (
        f"16-bit PNG, D = offset + scale * value from {args.out / 'png16_scale.json'}"
        if args.format == "png16"
        else "float32 D: open in Fiji/ImageJ or napari, or darkfield_nb.io.read_image"
    )
    print(
        f"results in {args.out}: summary.csv (one row per image), "
        f"{{darkfield,aleatoric,epistemic,total}}/*.{ext} ({look})"
    )
    print(f"epistemic maps: {EPISTEMIC_WORDS[report.epistemic]}")
    if args.preview:
        print(f"look at them: {args.out / 'preview'}/*.png (input, dark-field, sigmas)")
    else:
        print("look at them: rerun with --preview for PNG panels in preview/")
    return 1 if tot["failed"] else 0
