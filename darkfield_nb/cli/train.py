"""``darkfield-nb train``: a TrainConfig from ``--config`` and the flags, then the stages."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path


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
