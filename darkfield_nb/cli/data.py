"""``darkfield-nb info``, ``validate`` and ``make-data``: the environment and the data."""

from __future__ import annotations

import argparse
import platform
import sys

from darkfield_nb.cli.parser import flags_for


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

    generate_dataset(  # --out --size --seed --overwrite under their own names
        n_patients=args.patients,
        ood_patients=args.ood,
        progress=not args.quiet,
        **flags_for(args, generate_dataset),
    )
    print(f"wrote {args.patients} + {args.ood} OOD pairs at {args.size}x{args.size} to {args.out}")
    return 0
