"""The ``darkfield-nb`` command line: thin front ends over the library.

Each subcommand is one small function ``_cmd_<name>(args) -> int``; heavy imports happen inside
it so ``darkfield-nb info`` stays quick. Run ``darkfield-nb <command> --help`` for options.

Errors the user can act on (a missing or unreadable file, a data set problem, a checkpoint that
cannot be used, an output that cannot be written, a full disk, a diverging run) are printed by
:func:`main` as one line ``darkfield-nb <command>: error: <message>`` (the message names the file
and the problem) with exit status 2, never a traceback; warnings as ``darkfield-nb <command>:
warning: <message>``. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import platform
import sys
import warnings
from dataclasses import replace
from pathlib import Path


def _cmd_info(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from darkfield_nb import __version__
    from darkfield_nb.hardware import pick_device
    from darkfield_nb.paths import pretrained_checkpoint, sample_data_dir

    samples = sample_data_dir()
    ckpt = pretrained_checkpoint()
    lines = [
        f"darkfield-nb {__version__}",
        f"python       {platform.python_version()} ({sys.executable})",
        f"torch        {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})",
        f"numpy        {np.__version__}",
        f"device       {pick_device('auto')} (auto); CUDA devices: {torch.cuda.device_count()}",
        f"threads      {torch.get_num_threads()}",
        f"sample data  {samples} ({'found' if (samples / 'manifest.csv').exists() else 'missing'})",
        f"pretrained   {ckpt} ({'found' if ckpt.exists() else 'missing'})",
    ]
    print("\n".join(lines))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from darkfield_nb.data import inspect_dataset

    report = inspect_dataset(args.root)
    for message in report.warnings:
        print(f"darkfield-nb validate: warning: {message}", file=sys.stderr)
    if report.errors:
        print(f"{args.root}: {len(report.errors)} problem(s)", file=sys.stderr)
        for problem in report.errors:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    splits = ", ".join(f"{k} {n}" for k, n in sorted(report.split_counts.items()))
    warned = f"; {len(report.warnings)} warning(s) above" if report.warnings else ""
    print(f"{args.root}: valid ({report.n_pairs} pairs: {splits}){warned}")
    return 0


def _cmd_make_data(args: argparse.Namespace) -> int:
    from darkfield_nb.physics import generate_dataset

    generate_dataset(
        args.out,
        n_patients=args.patients,
        size=args.size,
        seed=args.seed,
        ood_patients=args.ood,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(f"wrote {args.patients} + {args.ood} OOD pairs at {args.size}x{args.size} to {args.out}")
    return 0


def _train_config(args: argparse.Namespace):
    """A TrainConfig from ``--config`` (JSON of TrainConfig fields) and the flags over it."""
    import json

    from darkfield_nb.train import TrainConfig

    base = {}
    if args.config:
        try:
            base = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{args.config}: cannot read the training config ({err})") from err
    cfg = TrainConfig.from_dict(base)
    model_flags = {"stages": "n_stages", "base_width": "base_width"}
    model_flags.update(conditioning="conditioning", dropout="dropout")
    model = {key: getattr(args, flag) for flag, key in model_flags.items()}
    cfg = replace(
        cfg, model=replace(cfg.model, **{k: v for k, v in model.items() if v is not None})
    )
    if args.epochs or args.batch_size:
        epochs = [int(e) for e in args.epochs.split(",")] if args.epochs else None
        stages = []
        for k in range(cfg.n_stages):
            st = cfg.schedule(k)
            if epochs:
                n = epochs[min(k, len(epochs) - 1)]
                st = replace(st, epochs=n, warmup_epochs=min(st.warmup_epochs, max(n - 1, 0)))
            if args.batch_size:
                st = replace(st, batch_size=args.batch_size)
            stages.append(st)
        cfg = replace(cfg, stages=stages)
    run = {flag: getattr(args, flag) for flag in ("crop_size", "seed", "max_steps_per_epoch")}
    return replace(cfg, **{k: v for k, v in run.items() if v is not None})  # validates again


def _cmd_train(args: argparse.Namespace) -> int:
    from darkfield_nb.train import train_progressive

    cfg = None if (args.resume and not _has_training_flags(args)) else _train_config(args)
    result = train_progressive(
        args.data, args.out, cfg, resume=args.resume, device=args.device, progress=not args.quiet
    )
    last = result.history[-1] if result.history else {}
    summary = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k.startswith("val_"))
    print(f"{result.checkpoint}: {len(result.history)} epochs; last: {summary}")
    return 0


def _has_training_flags(args: argparse.Namespace) -> bool:
    names = (
        "config",
        "stages",
        "base_width",
        "conditioning",
        "dropout",
        "epochs",
        "batch_size",
        "crop_size",
        "seed",
        "max_steps_per_epoch",
    )
    return any(getattr(args, n) not in (None, False) for n in names)


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


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _cmd_predict(args: argparse.Namespace) -> int:
    import time
    import warnings

    from darkfield_nb.inference import PredictConfig, load_model, predict_folder
    from darkfield_nb.inference.pipeline import process_context

    t0 = time.perf_counter()
    ctx, device = process_context(args.device)
    try:
        loaded = load_model(args.checkpoint, device)
        if loaded.recalibration is not None and ctx.is_main:
            from darkfield_nb.inference.hookups import recalibration_message

            print(recalibration_message(loaded.recalibration, loaded.path))
        cfg = PredictConfig(
            samples=args.samples,
            seed=args.seed,
            stage=loaded.stages_trained - 1,
            batch_size=args.batch_size,
            workers=args.workers,
            format=args.format,
            preview=args.preview,
            resample=args.resample,
            precision=args.precision,
            progress=not args.quiet and ctx.is_main,
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
    if args.preview:
        print(f"look at them: {args.out / 'preview'}/*.png (input, dark-field, sigmas)")
    else:
        print("look at them: rerun with --preview for PNG panels in preview/")
    return 1 if tot["failed"] else 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from darkfield_nb.calibration import calibrate_checkpoint

    try:
        out, recal = calibrate_checkpoint(
            args.checkpoint,
            args.data,
            args.out,
            overwrite=args.overwrite,
            device=args.device,
            split=args.split,
            samples=args.samples,
            alpha=args.alpha,
            delta=args.delta,
            scaling_method=args.scaling,
            progress=not args.quiet,
        )
    except OSError as err:  # a write or read problem: one line naming the file
        print(f"darkfield-nb calibrate: error: {err}", file=sys.stderr)
        return 2
    sc, rcps, cov, fit = (recal[k] for k in ("sigma_scaling", "rcps", "fit_coverage", "fitted_on"))
    regions = ", ".join(f"{k} {v:.3f}" for k, v in sc["per_region"].items()) or "none"
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
        for name in ("sigma_scaling", "sigma_scaling_per_region", "isotonic", "rcps")
        if cov[name] is not None
    )
    print(
        f"fitted on {fit['n_images']} '{fit['split']}' images of {fit['data']} "
        f"({fit['samples']} MC passes)\n"
        f"sigma factor {sc['factor']:.3f} ({sc['method']}); per region: {regions}\n"
        f"RCPS lambda: {certified}\n"
        f"{pct} coverage on '{fit['split']}': before {cov['before']:.3f}; after {after}\n"
        f"{recal['guarantee']}\n"
        f"wrote {out}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="darkfield-nb",
        description="Synthesize X-ray dark-field radiographs with uncertainty.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="versions, device, sample data and checkpoint locations")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("validate", help="check a paired data folder; list every problem")
    p.add_argument("root", type=Path, help="data folder (attenuation/, darkfield/, manifest.csv)")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("make-data", help="simulate a paired data set from the 3-D chest phantom")
    p.add_argument("--out", type=Path, required=True, help="output folder (must be empty)")
    p.add_argument("--patients", type=int, default=269, help="in-distribution patients")
    p.add_argument("--ood", type=int, default=0, help="extra out-of-distribution patients")
    p.add_argument("--size", type=int, default=512, help="image size in pixels (64-1024)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty --out folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_make_data)

    p = sub.add_parser("train", help="train the progressive generator stage by stage")
    p.add_argument("--data", type=Path, required=True, help="paired data folder (train, val)")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, history)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--config", type=Path, default=None, help="JSON of TrainConfig fields")
    p.add_argument("--stages", type=int, default=None, help="number of stages (default 3)")
    p.add_argument("--epochs", default=None, help="epochs per stage, e.g. 50,50,150 or 10")
    p.add_argument("--batch-size", type=int, default=None, help="images per step")
    p.add_argument("--crop-size", type=int, default=None, help="random training crop (pixels)")
    p.add_argument("--base-width", type=int, default=None, help="U-Net width of level 0")
    p.add_argument("--conditioning", choices=("concat", "attention"), default=None)
    p.add_argument("--dropout", type=float, default=None, help="dropout rate (0: off)")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap (smoke runs)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="MSE/PSNR/SSIM per stage and uncertainty figures")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped model")
    p.add_argument("--data", type=Path, required=True, help="paired data folder")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--samples", type=int, default=20, help="MC dropout passes (0: none)")
    p.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="synthesize dark-field + uncertainty maps for radiographs")
    p.add_argument(
        "inputs",
        type=Path,
        nargs="+",
        help="a folder of radiographs (or a paired data root), or files",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped model")
    p.add_argument(
        "--samples", type=int, default=20, help="MC dropout passes (0: one deterministic pass)"
    )
    p.add_argument("--seed", type=int, default=0, help="dropout mask seed")
    p.add_argument(
        "--format",
        choices=("tiff", "png16"),
        default="tiff",
        help="tiff: float32 D (default); png16: 16-bit PNG + png16_scale.json",
    )
    p.add_argument("--preview", action="store_true", help="also write preview/<id>.png panels")
    p.add_argument(
        "--resample",
        choices=("auto", "off"),
        default="auto",
        help="auto: to the checkpoint's training geometry and back (default)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="images per model call")
    p.add_argument("--workers", type=int, default=None, help="decoding processes")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="auto: fp16 autocast on CUDA, fp32 elsewhere",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser(
        "calibrate", help="fit the recalibration on the validation split, store it with the model"
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="the model to calibrate")
    p.add_argument("--data", type=Path, required=True, help="paired data folder with a val split")
    p.add_argument("--out", type=Path, required=True, help="calibrated checkpoint to write")
    p.add_argument("--split", default="val", help="split to fit on (default: val; never test)")
    p.add_argument("--samples", type=int, default=20, help="MC dropout passes")
    p.add_argument("--alpha", type=float, default=0.1, help="RCPS: tolerated missed share")
    p.add_argument("--delta", type=float, default=0.1, help="RCPS: allowed failure probability")
    p.add_argument(
        "--scaling",
        choices=("coverage", "nll"),
        default="coverage",
        help="sigma factor: exact 90 %% coverage (default) or smallest GGD NLL",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_calibrate)

    # listed here for `darkfield-nb --help`; main() hands its arguments to ablation.main unparsed
    sub.add_parser(
        "ablate", help="run a YAML grid of notebook-11 ablations through papermill (resumable)"
    )

    return parser


def _expected_errors() -> tuple[type[BaseException], ...]:
    """The exceptions :func:`main` reports in one line: the user's input or environment is at
    fault (OSError covers FileNotFoundError, PermissionError and io.WriteError; ValueError covers
    ImageReadError, ManifestError, EmptySplitError, CheckpointError ...)."""
    kinds: list[type[BaseException]] = [OSError, ValueError, ImportError]
    if "darkfield_nb.train.step" in sys.modules:  # imported only by commands that train
        kinds.append(sys.modules["darkfield_nb.train.step"].NonFiniteLossError)
    return tuple(kinds)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``darkfield-nb`` console script.

    Expected errors (see :func:`_expected_errors`) are printed on stderr as one line,
    ``darkfield-nb <command>: error: <message>``, and give exit status 2; Ctrl-C gives one line
    and status 130; warnings are printed as ``darkfield-nb <command>: warning: <message>``.
    Any other exception is a bug: it propagates with its full traceback.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["ablate"]:  # its own parser: --grid GRID.yaml --out DIR [--jobs N] [--dry-run]
        from darkfield_nb.ablation import main as ablate_main

        return ablate_main(argv[1:])
    args = build_parser().parse_args(argv)
    prefix = f"darkfield-nb {args.command}"

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"{prefix}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            print(f"{prefix}: interrupted", file=sys.stderr)
            return 130
        except _expected_errors() as err:
            text = str(err) or type(err).__name__
            if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
                text = f"{err.filename}: {text}"
            print(f"{prefix}: error: {text}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
