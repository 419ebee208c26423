"""``darkfield-nb fit-level``: train the lung-level networks and store them with the model."""

from __future__ import annotations

import argparse


def _cmd_fit_level(args: argparse.Namespace) -> int:
    from darkfield_nb.level import LevelConfig
    from darkfield_nb.level.lung_mask import LungMaskConfig
    from darkfield_nb.level.store import fit_lung_level

    cfg = LevelConfig(max_epochs=args.max_epochs, max_minutes=args.max_minutes, seed=args.seed)
    mask_cfg = None
    if not args.no_mask:
        mask_cfg = LungMaskConfig(
            max_epochs=args.mask_epochs,
            min_epochs=min(4, args.mask_epochs),
            max_minutes=args.mask_minutes,
            seed=args.seed,
        )
    out, entry = fit_lung_level(
        args.checkpoint,
        args.data,
        args.out,
        members=args.members,
        config=cfg,
        mask=not args.no_mask,
        mask_config=mask_cfg,
        keep_members=args.keep_members,
        splits=args.splits.split(","),
        device=args.device,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    fit = entry["fitted_on"]
    rhos = ", ".join(f"{r:.3f}" for r in fit.get("holdout_spearman", []))
    what = "kept" if args.keep_members else "trained"
    mask = entry.get("lung_mask")
    mask_line = (
        "no lung-mask network (field: mean > 0.1)"
        if mask is None
        else f"lung-mask network: holdout Dice {mask['fitted_on']['holdout_dice']:.4f}"
    )
    print(
        f"{what} {len(entry['members'])} lung-level network(s) on {fit['n_images']} images of "
        f"{len(fit['data'])} folder(s) at {entry['input_shape'][0]} x {entry['input_shape'][1]} "
        f"px; holdout Spearman(true, predicted lung D): {rhos}; {mask_line}\n"
        f"wrote {out}\n"
        f"next: darkfield-nb calibrate --checkpoint {out} --data VAL_DATA --out CALIBRATED "
        "(the recalibration must be fitted on top of the level; predict refuses it otherwise)"
    )
    return 0
