"""``darkfield-nb calibrate``: fit the recalibration on the validation split and store it."""

from __future__ import annotations

import argparse
import sys

from darkfield_nb.cli.parser import flags_for


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from darkfield_nb.calibration import calibrate_checkpoint, fit_recalibration

    # --overwrite --device --split --samples --alpha --delta --lung-threshold and
    # --no-mean-scale (mean_scale) under their own names
    try:
        out, recal = calibrate_checkpoint(
            args.checkpoint,
            args.data,
            args.out,
            scaling_method=args.scaling,
            progress=not args.quiet,
            **flags_for(args, calibrate_checkpoint, fit_recalibration),
        )
    except OSError as err:  # a write or read problem: one line naming the file
        print(f"darkfield-nb calibrate: error: {err}", file=sys.stderr)
        return 2
    sc, rcps, cov, fit = (recal[k] for k in ("sigma_scaling", "rcps", "fit_coverage", "fitted_on"))
    regions = ", ".join(f"{k} {v:.3f}" for k, v in sc["per_region"].items()) or "none"
    fields = sc.get("per_field") or {}
    applied = (
        f"predicted lung field (mean > {sc['lung_threshold']:g} D) "
        f"{fields['predicted_lung']:.3f}, outside {fields['outside']:.3f}"
        if fields
        else f"the global factor {sc['factor']:.3f}"
    )
    ms = recal.get("mean_scale") or {}
    mean_line = (
        f"mean factor c {ms['factor']:.4f} (the mean lung D of the network's mean was "
        f"{100 * ms['lung_D_bias_before']:+.1f} % off on '{fit['split']}'; predict writes c x mean)"
        if ms.get("lung_D_bias_before") is not None
        else f"mean factor: none fitted ({ms.get('skipped') or 'an entry without one'})"
    )
    lam = rcps["lambda_hat"]
    certified = (
        f"{lam:.3f} x the {100 * cov['p']:g} % half-width (alpha {rcps['alpha']:g}, "
        f"delta {rcps['delta']:g})"
        if lam is not None
        else f"none certified with {rcps['n']} images (alpha {rcps['alpha']:g}, "
        f"delta {rcps['delta']:g})"
    )
    pct = f"{100 * cov['p']:g} %"
    after = ", ".join(
        f"{name} {cov[name]:.3f}"
        for name in (
            "mean_scale",
            "sigma_scaling",
            "sigma_scaling_per_region",
            "sigma_scaling_per_field",
            "isotonic",
            "rcps",
        )
        if cov.get(name) is not None
    )
    print(
        f"fitted on {fit['n_images']} '{fit['split']}' images of {fit['data']} "
        f"({fit['samples']} MC passes)\n"
        f"{mean_line}\n"
        f"sigma factor {sc['factor']:.3f} ({sc['method']}); per region: {regions}\n"
        f"applied by predict / synthesize: {applied}\n"
        f"RCPS lambda: {certified}\n"
        f"{pct} coverage on '{fit['split']}': before {cov['before']:.3f}; after {after}\n"
        f"{recal['guarantee']}\n"
        f"wrote {out}"
    )
    return 0
