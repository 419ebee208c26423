"""Retrain the last stage of a three-stage run with another dropout placement, on top of the
run's trained (frozen) earlier stages: the experiment behind the shipped model's
``dropout_placement`` ("MC dropout at the mean head" in ``bench/RESULTS.md``).

    python bench/retrain_last_stage.py RUN/stage1.pt DATA OUT --placement head_reg

``RUN/stage1.pt`` is the checkpoint a training run (``darkfield-nb train`` or the stage
notebooks) wrote after its second stage; its settings are used with only
``model.dropout_placement`` changed (dropout sits in the last stage only, so stages 0 and 1 are
the same for every placement), and stage 2 is trained from the same initial weights with the
recipe's stage-2 schedule into ``OUT`` (``stage2.pt``, ``model.pt``; ``train_or_load_stage``).
Session 17 (2-core CPU): about 4 minutes per placement on a quiet machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from darkfield_nb import checkpoint
from darkfield_nb.models.config import DROPOUT_PLACEMENTS
from darkfield_nb.train.config import TrainConfig
from darkfield_nb.train.stagewise import train_or_load_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage1", type=Path, help="the run's stage1.pt")
    ap.add_argument("data", type=Path, help="the run's paired data folder")
    ap.add_argument("out", type=Path, help="new run folder")
    ap.add_argument("--placement", choices=DROPOUT_PLACEMENTS, required=True)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    src = checkpoint.load_checkpoint(args.stage1)
    if int(src["stages_trained"]) != 2:
        raise SystemExit(f"{args.stage1}: holds {src['stages_trained']} trained stages, not 2")
    src["generator_config"] = dict(src["generator_config"], dropout_placement=args.placement)
    src["train_config"]["model"] = dict(
        src["train_config"]["model"], dropout_placement=args.placement
    )
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(src, args.out / "stage1.pt")
    cfg = TrainConfig.from_dict(src["train_config"])
    _, history = train_or_load_stage(2, args.data, args.out, cfg, device=args.device)
    last = history[-1]
    print(f"{args.out}: placement {args.placement}, val NLL {last.get('val_nll')}")


if __name__ == "__main__":
    main()
