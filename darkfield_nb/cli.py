"""The ``darkfield-nb`` command line: thin front ends over the library.

Each subcommand is one small function ``_cmd_<name>(args) -> int``; heavy imports happen inside
it so ``darkfield-nb info`` stays quick. Run ``darkfield-nb <command> --help`` for options.
"""

from __future__ import annotations

import argparse
import platform
import sys
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
    from darkfield_nb.data import validate_dataset

    problems = validate_dataset(args.root)
    if problems:
        print(f"{args.root}: {len(problems)} problem(s)", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"{args.root}: valid")
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

    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``darkfield-nb`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"darkfield-nb {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
