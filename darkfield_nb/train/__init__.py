"""Stage-wise training of the progressive generator (DESIGN sections 5 and 8).

Public names::

    TrainConfig, StageSchedule, default_stages      settings (every field defaulted)
    upgan_stages(epochs, warmup_epochs, batch_size)   the UP-GAN loss schedule, per stage
    train_stage(model, stage, train_data, val_data, cfg, out_dir, ...) -> history
    train_progressive(data_root, out_dir, config, *, resume, device, progress) -> TrainResult
    TrainStep                                         one optimizer step (G and D updates)
    validate(model, stage, val_data, cfg, device) -> dict of val_* figures
    make_datasets(data_root, cfg) -> (train, val)
    NonFiniteLossError
    init_distributed(device) -> (DistContext, device)   torchrun / DDP support
    write_history, read_history
"""

from .config import UPGAN_SCHEDULE, StageSchedule, TrainConfig, default_stages, upgan_stages
from .distributed import DistContext, init_distributed, world_size_from_env
from .history import HISTORY_CSV, HISTORY_JSON, read_history, write_history
from .progressive import FINAL_CHECKPOINT, TrainResult, make_datasets, train_progressive
from .stage import (
    LAST_CHECKPOINT,
    make_loader,
    seed_for,
    stage_checkpoint_name,
    train_stage,
    validate,
)
from .step import STEP_KEYS, NonFiniteLossError, TrainStep, amp_dtype

__all__ = [
    "FINAL_CHECKPOINT",
    "HISTORY_CSV",
    "HISTORY_JSON",
    "LAST_CHECKPOINT",
    "STEP_KEYS",
    "DistContext",
    "NonFiniteLossError",
    "StageSchedule",
    "TrainConfig",
    "TrainResult",
    "TrainStep",
    "UPGAN_SCHEDULE",
    "amp_dtype",
    "default_stages",
    "init_distributed",
    "make_datasets",
    "make_loader",
    "read_history",
    "seed_for",
    "stage_checkpoint_name",
    "train_progressive",
    "train_stage",
    "upgan_stages",
    "validate",
    "world_size_from_env",
    "write_history",
]
