"""``darkfield-nb evaluate``: MSE / PSNR / SSIM per stage, the uncertainty figures and what the
checkpoint stores (recalibration, out-of-distribution detector), optionally as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path


def _load_model(path: Path | None, device):
    """The generator of ``path`` (default: the shipped model) and its number of trained stages.

    The generator carries ``training_geometry`` (the checkpoint's, or the documented default
    of checkpoints that record none); ``darkfield_nb.inference.load_model`` gives the rest."""
    from darkfield_nb.inference import load_model

    loaded = load_model(path, device)
    return loaded.model, loaded.stages_trained


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from darkfield_nb.checkpoint import CheckpointError
    from darkfield_nb.data import PairedDataset, require_splits
    from darkfield_nb.evaluation import evaluate, format_stage_table, stored_entries
    from darkfield_nb.hardware import pick_device
    from darkfield_nb.io import check_output_file, write_json
    from darkfield_nb.paths import pretrained_checkpoint

    if args.json:  # before the work: a --json that cannot be written fails now, not at the end
        check_output_file(args.json)
    device = pick_device(args.device)
    ckpt_path = args.checkpoint or pretrained_checkpoint()
    model, trained = _load_model(args.checkpoint, device)
    if trained < 1:
        raise CheckpointError(
            f"{ckpt_path}: no stage of this generator is trained yet (stages_trained=0); "
            "evaluate a stage{k}.pt or model.pt"
        )
    require_splits(args.data, (args.split,), "evaluate")
    # the smallest image this generator takes: its stride + 1 (contract.MIN_IMAGE_SIDE for 16)
    data = PairedDataset(
        args.data, split=args.split, pad_multiple=1, min_side=model.config.stride + 1
    )
    result = evaluate(
        model,
        data,
        mc_samples=args.samples,
        device=device,
        n_stages=trained,
        progress=not args.quiet,
    )
    result["checkpoint"] = str(ckpt_path)
    result["split"] = args.split
    print(format_stage_table(result))
    unc = result["uncertainty"]
    print(", ".join(f"{k} {v:.4g}" if v is not None else f"{k} n/a" for k, v in unc.items()))
    extra, notes = stored_entries(
        model,
        args.data,
        split=args.split,
        samples=args.samples,
        device=device,
        stage=trained - 1,
        progress=not args.quiet,
    )
    result.update(extra)
    for note in notes:
        print(f"note: {note}")
    if "calibration" in extra:
        cal = extra["calibration"]
        key = f"coverage_{round(100 * cal['level'])}"
        before = cal["before"]["all"].get(key)
        after = cal["after"]["sigma_scaling"]["all"].get(key)
        print(
            f"calibration ({cal['n_images']} '{args.split}' images): {key} {before} before, "
            f"{after} after the stored sigma scaling"
        )
    if "ood" in extra:
        ood = extra["ood"]
        auroc = ood.get("image_auroc")
        flagged = ood.get("flagged") or {}
        print(
            "ood: per-image AUROC (device cases vs test) "
            + (f"{auroc:.3f}" if isinstance(auroc, float) else str(auroc))
            + f", flagged {flagged.get('ood')} of ood and {flagged.get('in_distribution')} of "
            "test images"
        )
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0
