"""The argument parser of ``darkfield-nb``: one subparser per command.

The option blocks several commands share (the checkpoint and MC-dropout passes of a model
command; the device and the progress switch of every command that computes) are added by one
helper each, so a flag means the same everywhere. ``main`` finds the command's function from
``args.command``. A command passes the flags named like the parameters of the library function
it calls with :func:`flags_for`, and only the others (renamed or derived) by hand.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEVICE_HELP = "auto, cpu, cuda, cuda:1, mps"


def flags_for(args: argparse.Namespace, *functions: Callable) -> dict[str, Any]:
    """The parsed flags named like a parameter of one of ``functions``, as keyword arguments:
    ``--batch-size 4`` gives ``{"batch_size": 4}`` when a function has ``batch_size``
    (``inspect.signature``; for a dataclass its fields). Where a function passes ``**kwargs``
    on, name the receiving function too (``calibrate_checkpoint, fit_recalibration``). The
    caller passes flags named otherwise (``--quiet`` for ``progress``) and positional arguments.
    """
    names = {name for fn in functions for name in inspect.signature(fn).parameters}
    return {name: value for name, value in vars(args).items() if name in names}


def _add_model_options(
    p: argparse.ArgumentParser,
    *,
    samples_help: str,
    checkpoint_required: bool = False,
    checkpoint_help: str = "default: the shipped model",
) -> None:
    """``--checkpoint`` (the generator) and ``--samples`` (MC-dropout passes, default 20)."""
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        required=checkpoint_required,
        help=checkpoint_help,
    )
    p.add_argument("--samples", type=int, default=20, help=samples_help)


def _add_run_options(
    p: argparse.ArgumentParser,
    *,
    device_help: str | None = DEVICE_HELP,
    overwrite_help: str | None = None,
    quiet_help: str = "no progress bar",
) -> None:
    """``--device`` (``device_help`` None: no such flag), ``--overwrite`` (when
    ``overwrite_help`` is given) and ``--quiet``."""
    if device_help is not None:
        p.add_argument("--device", default="auto", help=device_help)
    if overwrite_help is not None:
        p.add_argument("--overwrite", action="store_true", help=overwrite_help)
    p.add_argument("--quiet", action="store_true", help=quiet_help)


def _add_choice(
    p: argparse.ArgumentParser, flag: str, choices: tuple[str, ...], *, help: str
) -> None:
    """An option taking one of ``choices``; its default is the first."""
    p.add_argument(flag, choices=choices, default=choices[0], help=help)


def _add_make_data(sub) -> None:
    p = sub.add_parser("make-data", help="simulate a paired data set from the 3-D chest phantom")
    p.add_argument("--out", type=Path, required=True, help="output folder (must be empty)")
    p.add_argument("--patients", type=int, default=269, help="in-distribution patients")
    p.add_argument("--ood", type=int, default=0, help="extra out-of-distribution patients")
    p.add_argument("--size", type=int, default=512, help="image size in pixels (64-1024)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    _add_run_options(p, device_help=None, overwrite_help="allow a non-empty --out folder")


def _add_train(sub) -> None:
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
    _add_run_options(p, device_help="auto, cpu, cuda, mps", quiet_help="no progress bars")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="MSE/PSNR/SSIM per stage and uncertainty figures")
    _add_model_options(p, samples_help="MC dropout passes (0: none)")
    p.add_argument("--data", type=Path, required=True, help="paired data folder")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    _add_run_options(p)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="synthesize dark-field + uncertainty maps for radiographs")
    p.add_argument(
        "inputs",
        type=Path,
        nargs="+",
        help="a folder of radiographs (or a paired data root), or files",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    _add_model_options(p, samples_help="MC dropout passes (0: one deterministic pass)")
    p.add_argument("--seed", type=int, default=0, help="dropout mask seed")
    _add_choice(
        p,
        "--format",
        ("tiff", "png16"),
        help="tiff: float32 D (default); png16: 16-bit PNG + png16_scale.json",
    )
    p.add_argument("--preview", action="store_true", help="also write preview/<id>.png panels")
    _add_choice(
        p,
        "--resample",
        ("auto", "off"),
        help="auto: to the checkpoint's training geometry and back (default)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="images per model call")
    p.add_argument("--workers", type=int, default=None, help="decoding processes")
    _add_choice(
        p,
        "--precision",
        ("auto", "fp32", "bf16", "fp16"),
        help="auto: fp16 autocast on CUDA, fp32 elsewhere",
    )
    _add_choice(
        p,
        "--epistemic",
        ("auto", "mc", "combined"),
        help="auto: combined when the checkpoint carries an OOD detector (default); mc: the MC "
        "dropout spread; combined: sqrt(mc^2 + d^2), d the detector's density sigma",
    )
    _add_run_options(p)


def _add_calibrate(sub) -> None:
    p = sub.add_parser(
        "calibrate", help="fit the recalibration on the validation split, store it with the model"
    )
    _add_model_options(
        p,
        samples_help="MC dropout passes",
        checkpoint_required=True,
        checkpoint_help="the model to calibrate",
    )
    p.add_argument("--data", type=Path, required=True, help="paired data folder with a val split")
    p.add_argument("--out", type=Path, required=True, help="calibrated checkpoint to write")
    p.add_argument("--split", default="val", help="split to fit on (default: val; never test)")
    p.add_argument("--alpha", type=float, default=0.1, help="RCPS: tolerated missed share")
    p.add_argument("--delta", type=float, default=0.1, help="RCPS: allowed failure probability")
    p.add_argument(
        "--lung-threshold",
        type=float,
        default=0.1,
        help="predicted lung field {mean > t} (D) of the two sigma factors predict applies",
    )
    p.add_argument(
        "--no-mean-scale",
        dest="mean_scale",
        action="store_false",
        help="do not fit the mean's factor c (predict writes c x the network's mean; c makes "
        "the mean lung D over the validation images right)",
    )
    _add_choice(
        p,
        "--scaling",
        ("coverage", "nll"),
        help="sigma factor: exact 90 %% coverage (default) or smallest GGD NLL",
    )
    _add_run_options(p, overwrite_help="replace an existing --out")


def _add_fit_level(sub) -> None:
    p = sub.add_parser(
        "fit-level",
        help="train the lung-level networks (per-image mean lung D) and store them with the model",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="the model to add them to")
    p.add_argument(
        "--data", type=Path, nargs="+", required=True,
        help="paired data folders made by make-data, all at one --size (e.g. 128)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    p.add_argument("--splits", default="train,val", help="splits to train on (default train,val)")
    p.add_argument("--members", type=int, default=2, help="networks averaged (seeds seed + k)")
    p.add_argument("--max-epochs", type=int, default=30, help="most epochs per network")
    p.add_argument("--max-minutes", type=float, default=13.0, help="wall-clock cap per network")
    p.add_argument("--seed", type=int, default=0, help="seed of the first network")
    p.add_argument(
        "--no-mask", action="store_true",
        help="no lung-mask network: the level's field is the generator's {mean > 0.1}",
    )  # fmt: skip
    p.add_argument(
        "--keep-members", action="store_true",
        help="keep the level networks --checkpoint carries; train only the lung-mask network",
    )  # fmt: skip
    p.add_argument("--mask-epochs", type=int, default=12, help="most epochs of the mask network")
    p.add_argument(
        "--mask-minutes", type=float, default=40.0, help="wall-clock cap of the mask network"
    )
    _add_run_options(p, overwrite_help="replace an existing --out")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command but ``ablate``'s options (it has its own parser)."""
    parser = argparse.ArgumentParser(
        prog="darkfield-nb",
        description="Synthesize X-ray dark-field radiographs with uncertainty.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("info", help="versions, device, sample data and checkpoint locations")
    p = sub.add_parser("validate", help="check a paired data folder; list every problem")
    p.add_argument("root", type=Path, help="data folder (attenuation/, darkfield/, manifest.csv)")
    _add_make_data(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_predict(sub)
    _add_calibrate(sub)
    _add_fit_level(sub)
    # listed here for `darkfield-nb --help`; main() hands its arguments to ablation.main unparsed
    sub.add_parser(
        "ablate", help="run a YAML grid of notebook-11 ablations through papermill (resumable)"
    )
    return parser
