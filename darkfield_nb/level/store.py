"""The lung-level networks stored with a model, under the checkpoint key ``"lung_level"``.

The entry survives ``torch.load(weights_only=True)``::

    version           2 (1: no lung-mask network; still read)
    members           [state dict per member network, float16 tensors (BatchNorm's batch
                      counters int64)]
    config            LevelConfig as a dict (the architecture the states fit)
    target_mean       [m_k]; target_sd [s_k]
    input_shape       [H, W] the networks were trained at
    field_threshold   t (D); factor_range [g_lo, g_hi]; min_field_pixels
    fitted_on         {data: [folders], splits, n_images, holdout_spearman: [per member]}
    lung_mask         (optional) {config: LungMaskConfig as a dict, state: float16 state dict,
                      threshold: p, min_agreement: a_min, fitted_on: {..., holdout_dice}}:
                      the lung-mask network
                      whose field replaces {mu > t} (``lung_level`` module docstring)

A checkpoint's recalibration (``darkfield-nb calibrate``) is fitted on top of the level: the
recalibration entry records the :func:`level_digest` of the entry it saw (None: none), and
``inference.load_model`` refuses a checkpoint whose two disagree (the mean's factor c and the
sigma factors would no longer fit the maps they scale).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from darkfield_nb import checkpoint
from darkfield_nb.checkpoint_entry import check_destination, write_checkpoint_entry

from .fit import level_data, train_level_net
from .lung_level import LungLevel
from .lung_mask import LungMaskConfig, LungMaskNet, train_lung_mask_net
from .net import LevelConfig, LevelNet

KEY = "lung_level"
VERSION = 2
_NEEDED = (
    "version", "members", "config", "target_mean", "target_sd", "input_shape",
    "field_threshold", "factor_range", "min_field_pixels", "fitted_on",
)  # fmt: skip
_MASK_NEEDED = ("config", "state", "threshold", "min_agreement", "fitted_on")


def _half(state: dict) -> dict:
    return {
        k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu().clone())
        for k, v in state.items()
    }


def _config_dict(cfg) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}


def entry_from_level(level: LungLevel, fitted_on: dict, config: LevelConfig) -> dict:
    """The checkpoint entry of ``level`` (module docstring); weights stored in float16. A level
    with a lung-mask network stores it under ``"lung_mask"`` (its record:
    ``level.info["mask"]``)."""
    entry = {
        "version": VERSION,
        "members": [_half(m.state_dict()) for m in level.members],
        "config": _config_dict(config),
        "target_mean": [float(v) for v in level.target_mean],
        "target_sd": [float(v) for v in level.target_sd],
        "input_shape": list(level.input_shape),
        "field_threshold": float(level.field_threshold),
        "factor_range": [float(v) for v in level.factor_range],
        "min_field_pixels": int(level.min_field_pixels),
        "fitted_on": dict(fitted_on),
    }
    if level.mask_net is not None:
        entry["lung_mask"] = {
            "config": _config_dict(level.mask_net.cfg),
            "state": _half(level.mask_net.state_dict()),
            "threshold": float(level.mask_threshold),
            "min_agreement": float(level.min_field_agreement),
            "fitted_on": dict(level.info.get("mask", {})),
        }
    return entry


def check_entry(entry, where: str) -> dict:
    """``entry`` if it is a readable lung-level entry, else ValueError naming ``where``."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: {KEY!r} entry is a {type(entry).__name__}, not a dict")
    missing = [k for k in _NEEDED if k not in entry]
    if missing:
        raise ValueError(f"{where}: {KEY!r} entry lacks {missing}")
    if int(entry["version"]) > VERSION:
        raise ValueError(
            f"{where}: {KEY!r} entry version {entry['version']} is newer than this package "
            f"reads ({VERSION})"
        )
    k = len(entry["members"])
    if k == 0 or len(entry["target_mean"]) != k or len(entry["target_sd"]) != k:
        raise ValueError(
            f"{where}: {KEY!r} entry has {k} members, {len(entry['target_mean'])} target "
            f"means and {len(entry['target_sd'])} target sds"
        )
    sds = np.asarray(entry["target_sd"], float)
    if not (np.isfinite(sds).all() and (sds > 0).all()):
        raise ValueError(f"{where}: {KEY!r} entry target_sd {list(sds)}: need positive values")
    lo, hi = entry["factor_range"]
    if not 0 < float(lo) <= 1 <= float(hi):
        raise ValueError(f"{where}: {KEY!r} entry factor_range [{lo}, {hi}] must hold 1")
    mask = entry.get("lung_mask")
    if mask is not None:
        if not isinstance(mask, dict) or any(k not in mask for k in _MASK_NEEDED):
            raise ValueError(
                f"{where}: {KEY!r} entry's lung_mask must be a dict with {list(_MASK_NEEDED)}"
            )
        try:
            ok = 0 < float(mask["threshold"]) < 1
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(
                f"{where}: {KEY!r} entry's lung_mask threshold {mask['threshold']!r}: need a "
                "number 0 < p < 1"
            )
    return entry


def _mask_net_of(mask: dict, where: str) -> LungMaskNet:
    try:
        net = LungMaskNet(LungMaskConfig(**mask["config"]))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {KEY!r} entry's lung_mask config: {exc}") from exc
    try:
        net.load_state_dict({k: v.to(net.state_dict()[k].dtype) for k, v in mask["state"].items()})
    except (RuntimeError, KeyError, AttributeError) as exc:
        raise ValueError(f"{where}: the lung-mask network does not fit its config ({exc})") from exc
    return net.eval()


def level_from_entry(entry: dict, where: str = "lung_level entry") -> LungLevel:
    """The :class:`LungLevel` of a checked entry (float32 networks on the CPU, eval mode).
    ValueError naming ``where`` when the weights do not fit the stored config."""
    check_entry(entry, where)
    try:
        cfg = LevelConfig(**entry["config"])
    except (TypeError, ValueError) as exc:  # a field this package lacks, or a bad value
        raise ValueError(f"{where}: {KEY!r} entry config: {exc}") from exc
    members = []
    for i, state in enumerate(entry["members"]):
        net = LevelNet(1, cfg)
        try:
            net.load_state_dict({k: v.to(net.state_dict()[k].dtype) for k, v in state.items()})
        except (RuntimeError, KeyError) as exc:
            raise ValueError(f"{where}: member {i} does not fit its config ({exc})") from exc
        members.append(net.eval())
    mask = entry.get("lung_mask")
    info = dict(entry["fitted_on"])
    if mask is not None:
        info["mask"] = dict(mask["fitted_on"])
    try:
        return LungLevel(
            members=members,
            target_mean=[float(v) for v in entry["target_mean"]],
            target_sd=[float(v) for v in entry["target_sd"]],
            input_shape=tuple(entry["input_shape"]),
            field_threshold=float(entry["field_threshold"]),
            factor_range=tuple(float(v) for v in entry["factor_range"]),
            min_field_pixels=int(entry["min_field_pixels"]),
            mask_net=None if mask is None else _mask_net_of(mask, where),
            mask_threshold=0.5 if mask is None else float(mask["threshold"]),
            min_field_agreement=0.5 if mask is None else float(mask["min_agreement"]),
            info=info,
            digest=level_digest(entry),
        )
    except ValueError as exc:  # field_threshold or input_shape out of range
        raise ValueError(f"{where}: {KEY!r} entry: {exc}") from exc


def level_of(ckpt: dict, where: str = "checkpoint") -> dict | None:
    """The checked lung-level entry of a raw checkpoint dict, or None without one."""
    entry = ckpt.get(KEY)
    return None if entry is None else check_entry(entry, where)


def stored_level(ckpt: dict, recal: dict | None, where: str) -> LungLevel | None:
    """The :class:`LungLevel` a raw checkpoint dict carries (None without one), after checking
    that its recalibration entry ``recal`` (None: none) was fitted on that same level: the
    recorded ``lung_level.digest`` must equal :func:`level_digest` of the entry (both None
    without a level). ValueError naming ``where`` otherwise, or for a malformed entry."""
    entry = level_of(ckpt, where)
    level = None if entry is None else level_from_entry(entry, where)  # weights checked first
    if recal is not None:
        fitted_with = (recal.get("lung_level") or {}).get("digest")
        have = None if level is None else level.digest  # level_digest(entry), hashed once
        if fitted_with != have:
            saw = f"lung level {fitted_with}" if fitted_with else "no lung level"
            carries = f"carries lung level {have}" if have else "carries no lung level"
            raise ValueError(
                f"{where}: its recalibration was fitted with {saw}, but the checkpoint "
                f"{carries}; run `darkfield-nb calibrate` on it again so the mean and sigma "
                "factors fit the maps they scale"
            )
    return level


def level_digest(entry: dict | None) -> str | None:
    """A short SHA-256 digest of the entry's weights and numbers (None for None): what a
    recalibration records to say which level it was fitted on."""
    if entry is None:
        return None
    h = hashlib.sha256()
    for state in entry["members"]:
        for name in sorted(state):
            h.update(name.encode())
            h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    numbers = [entry[k] for k in _NEEDED if k not in ("members", "fitted_on", "config")]
    mask = entry.get("lung_mask")
    if mask is not None:  # a level without a mask network keeps the digest it had
        for name in sorted(mask["state"]):
            h.update(name.encode())
            h.update(mask["state"][name].detach().cpu().contiguous().numpy().tobytes())
        numbers += [float(mask["threshold"]), float(mask["min_agreement"])]
    h.update(repr(numbers).encode())
    return h.hexdigest()[:16]


def _same(a: dict, b: dict) -> bool:
    return level_digest(a) == level_digest(b)


def write_level_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, entry: dict, *, overwrite: bool = False
) -> Path:
    """Copy checkpoint ``src`` to ``dst`` with ``entry`` under ``"lung_level"``, atomically,
    reloaded and compared before it takes the name ``dst``. The recalibration ``src`` carries
    was fitted without this level; recalibrate ``dst`` (``darkfield-nb calibrate``) before
    predicting with it (``load_model`` refuses the mismatch)."""
    level_from_entry(entry, str(dst))  # checks the entry, and that its weights fit
    return write_checkpoint_entry(
        src, dst, KEY, entry, read_back=level_of, same=_same, overwrite=overwrite
    )


def fit_lung_level(
    src: str | os.PathLike,
    data_roots: Sequence[str | os.PathLike],
    dst: str | os.PathLike,
    *,
    members: int = 2,
    config: LevelConfig | None = None,
    mask: bool = True,
    mask_config: LungMaskConfig | None = None,
    keep_members: bool = False,
    splits: Sequence[str] = ("train", "val"),
    device: str | torch.device = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[Path, dict]:
    """``darkfield-nb fit-level``: train ``members`` networks (seeds config.seed + k) on the
    ``splits`` of ``data_roots`` (:func:`.fit.level_data`, :func:`.fit.train_level_net`) and,
    with ``mask``, the lung-mask network on the same images' true lung masks
    (:func:`.lung_mask.train_lung_mask_net`), and write ``dst``: ``src`` with the entry.
    ``keep_members``: keep the level networks ``src`` already carries and train only the mask
    network. Returns (dst, entry). The output is checked first."""
    src, dst = Path(src), Path(dst)
    ckpt = checkpoint.load_checkpoint(src)
    check_destination(src, dst, overwrite)
    if members < 1:
        raise ValueError(f"fit_lung_level: members={members}; need at least 1")
    old = level_of(ckpt, str(src)) if keep_members else None
    if keep_members and old is None:
        raise ValueError(f"{src}: carries no lung level whose networks keep_members could keep")
    if keep_members and not mask:
        raise ValueError("fit_lung_level: keep_members without mask would change nothing")
    data = level_data(data_roots, splits, progress=progress)
    multiple = LungMaskNet(mask_config).multiple if mask else 1
    if data.x.shape[-2] % multiple or data.x.shape[-1] % multiple:
        raise ValueError(
            f"fit_lung_level: the images are {data.x.shape[-2]} x {data.x.shape[-1]} px; the "
            f"lung-mask network needs sizes divisible by {multiple} (make the data at such a "
            "--size, or pass mask=False)"
        )
    fitted_on = {
        "data": [str(r) for r in data_roots],
        "splits": list(splits),
        "n_images": len(data),
    }
    if old is not None:
        level = level_from_entry(old, str(src))
        cfg = LevelConfig(**old["config"])
        fitted_on = dict(old["fitted_on"])
        if tuple(level.input_shape) != tuple(data.x.shape[-2:]):
            raise ValueError(
                f"fit_lung_level: {src}'s level networks take {level.input_shape} inputs, the "
                f"data is {tuple(data.x.shape[-2:])}; make it at the networks' size"
            )
    else:
        cfg = config or LevelConfig()
        nets, means, sds, rhos = [], [], [], []
        for k in range(members):
            net, info = train_level_net(
                data, replace(cfg, seed=cfg.seed + k), device=device, progress=progress
            )
            nets.append(net)
            means.append(info["target_mean"])
            sds.append(info["target_sd"])
            rhos.append(info["best_holdout_spearman"])
        level = LungLevel(nets, means, sds, input_shape=data.x.shape[-2:])
        fitted_on["holdout_spearman"] = rhos
    level.digest = None
    if mask:
        net, info = train_lung_mask_net(
            data.x, data.lung, mask_config, device=device, progress=progress
        )
        level.mask_net = net
        level.info = {
            "mask": {
                "data": [str(r) for r in data_roots],
                "splits": list(splits),
                "n_images": len(data),
                "holdout_dice": info["best_holdout_dice"],
            }
        }
    entry = entry_from_level(level, fitted_on, cfg)
    return write_level_checkpoint(src, dst, entry, overwrite=overwrite), entry


__all__ = [
    "KEY",
    "VERSION",
    "check_entry",
    "entry_from_level",
    "fit_lung_level",
    "level_digest",
    "level_from_entry",
    "level_of",
    "stored_level",
    "write_level_checkpoint",
]
