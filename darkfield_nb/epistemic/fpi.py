"""A self-supervised pixel anomaly map by Foreign Patch Interpolation (FPI).

Reference: J. Tan, B. Hou, J. Batten, H. Qiu, B. Kainz, "Detecting Outliers with Foreign Patch
Interpolation", Machine Learning for Biomedical Imaging 1 (2022) (the winning method of the
MICCAI 2020 Medical Out-of-Distribution challenge). A segmentation network is trained on
in-distribution images only, to find where a patch of *another* in-distribution image has been
blended in; at inference its per-pixel output is the anomaly map.

Corruption (:func:`fpi_corrupt`) of a training image ``x`` with another training image ``x2``
(the same position): a random patch ``P`` (rectangle or ellipse, sides uniform in
``[patch_min, patch_max]`` px, inside the image), a factor ``a ~ U(0, 1)``,

    x'(p) = (1 - a) x(p) + a x2(p)   for p in P,     x'(p) = x(p) elsewhere,
    y(p)  = a                        for p in P,     y(p)  = 0 elsewhere.

With probability ``second_patch`` a second, smaller patch ``P2`` (factor ``a2``) is blended
into ``x'`` the same way; where the two overlap ``x'' - x = (1 - (1 - a)(1 - a2)) (x2 - x)``, so
the label there is ``1 - (1 - a)(1 - a2)`` (the label is always the interpolation factor of
``x2`` in the result). No synthetic shapes, metal or intensities outside the two images.

Network (:class:`FPINet`): a small U-Net (double 3 x 3 conv + BN + ReLU blocks, 2 x 2 max
pool, bilinear upsampling and skip concatenation) with one output logit per pixel, trained
with the binary cross-entropy between ``sigmoid(logit)`` and ``y`` (:func:`train_fpi`; random
left-right flips). Anomaly map (:func:`fpi_map`): the sigmoid output averaged over the image and
its left-right mirror. Per-image score (:func:`fpi_image_score`): the mean of the ``top_k``
largest map values inside the body.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage

from darkfield_nb.hardware import pick_device
from darkfield_nb.models.small_unet import SmallUNet


@dataclass
class FPIConfig:
    """The corruption, the network and its training; every field has a working default.

    patch_min / patch_max: side range (px) of the first patch; ellipse: probability that a patch
    is an ellipse rather than a rectangle; second_patch: probability of a second patch, with
    sides scaled by second_scale; channels: U-Net widths per level (len - 1 poolings); lr,
    weight_decay: Adam's (cosine schedule over ``epochs``); batch_size; epochs: the most epochs
    run; steps_per_epoch: batches per epoch (0: one pass over the images); crop: train on random
    square crops of this side (0: whole images; the same window of both images); max_minutes:
    wall-clock cap of :func:`train_fpi`; seed: initialization, corruption and batch order."""

    patch_min: int = 8
    patch_max: int = 96
    ellipse: float = 0.5
    second_patch: float = 0.5
    second_scale: float = 0.5
    channels: tuple[int, ...] = (16, 32, 64, 128)
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 16
    epochs: int = 20
    steps_per_epoch: int = 0
    crop: int = 0
    max_minutes: float = 45.0
    seed: int = 0
    method: ClassVar[str] = "fpi"  # the corruption; subclasses name theirs (checkpoints keep it)

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if not 1 <= self.patch_min <= self.patch_max:
            raise ValueError(
                f"FPIConfig: need 1 <= patch_min <= patch_max, got {self.patch_min}, "
                f"{self.patch_max}"
            )
        for name in ("ellipse", "second_patch", "second_scale"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"FPIConfig.{name}={getattr(self, name)}: need 0 <= p <= 1")
        if len(self.channels) < 2 or min(self.channels) < 1:
            raise ValueError(f"FPIConfig.channels={self.channels}: need >= 2 positive widths")
        if self.crop < 0:
            raise ValueError(f"FPIConfig.crop={self.crop}: need >= 0 (0: whole images)")
        if self.batch_size < 2 or self.epochs < 1:
            raise ValueError("FPIConfig: batch_size >= 2 and epochs >= 1 needed")


# ----------------------------------------------------------------------------- corruption
def random_patch(
    shape: tuple[int, int],
    rng: np.random.Generator,
    side_min: int,
    side_max: int,
    ellipse: float = 0.5,
) -> np.ndarray:
    """A boolean mask of ``shape`` with one rectangle or (with probability ``ellipse``) the
    ellipse inscribed in it; height and width independently uniform integers in
    ``[side_min, min(side_max, image side)]``, top-left corner uniform so that the patch lies
    inside the image."""
    h, w = shape
    ph = int(rng.integers(min(side_min, h), min(side_max, h) + 1))
    pw = int(rng.integers(min(side_min, w), min(side_max, w) + 1))
    r0 = int(rng.integers(0, h - ph + 1))
    c0 = int(rng.integers(0, w - pw + 1))
    is_ellipse = rng.random() < ellipse
    m = np.zeros(shape, dtype=bool)
    if not is_ellipse:
        m[r0 : r0 + ph, c0 : c0 + pw] = True
        return m
    yy, xx = np.mgrid[0:ph, 0:pw]
    cy, cx = (ph - 1) / 2, (pw - 1) / 2
    m[r0 : r0 + ph, c0 : c0 + pw] = ((yy - cy) / (ph / 2)) ** 2 + ((xx - cx) / (pw / 2)) ** 2 <= 1
    return m


def fpi_blend(
    x: np.ndarray, x2: np.ndarray, patch: np.ndarray, a: float
) -> tuple[np.ndarray, np.ndarray]:
    """``x' = (1 - a) x + a x2`` on the boolean ``patch``, ``x`` elsewhere; label ``a`` on the
    patch, 0 elsewhere (module docstring). Arrays 2-D of one shape; returns float32."""
    x = np.asarray(x, dtype=np.float32)
    x2 = np.asarray(x2, dtype=np.float32)
    patch = np.asarray(patch, dtype=bool)
    if x.ndim != 2 or x.shape != x2.shape or x.shape != patch.shape:
        raise ValueError(
            f"fpi_blend: need 2-D arrays of one shape, got image {x.shape}, source {x2.shape}, "
            f"patch {patch.shape}"
        )
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"fpi_blend: factor a={a} outside [0, 1]")
    out = x.copy()
    out[patch] = (1.0 - a) * x[patch] + a * x2[patch]
    y = np.zeros_like(x)
    y[patch] = a
    return out, y


def fpi_corrupt(
    x: np.ndarray, x2: np.ndarray, rng: np.random.Generator, cfg: FPIConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One FPI corruption of the 2-D image ``x`` by the 2-D image ``x2`` (same shape): a first
    patch, optionally a second smaller one (module docstring; ``cfg`` sets the ranges). Returns
    (corrupted image, label), both float32 of ``x``'s shape; the label is the interpolation
    factor of ``x2`` in the corrupted image, so ``x' = x + y (x2 - x)`` exactly."""
    cfg = cfg or FPIConfig()
    x = np.asarray(x, dtype=np.float32)
    x2 = np.asarray(x2, dtype=np.float32)
    if x.ndim != 2 or x.shape != x2.shape:
        raise ValueError(
            f"fpi_corrupt: need two 2-D images of one shape, got {x.shape} and {x2.shape}"
        )
    p1 = random_patch(x.shape, rng, cfg.patch_min, cfg.patch_max, cfg.ellipse)
    a1 = float(rng.random())
    out, y = fpi_blend(x, x2, p1, a1)
    if rng.random() < cfg.second_patch:
        lo = max(1, round(cfg.patch_min * cfg.second_scale))
        hi = max(lo, round(cfg.patch_max * cfg.second_scale))
        p2 = random_patch(x.shape, rng, lo, hi, cfg.ellipse)
        a2 = float(rng.random())
        out[p2] = (1.0 - a2) * out[p2] + a2 * x2[p2]
        y[p2] = 1.0 - (1.0 - y[p2]) * (1.0 - a2)
    return out, y


# ----------------------------------------------------------------------------- network
class FPINet(SmallUNet):
    """:class:`~darkfield_nb.models.small_unet.SmallUNet` with ``cfg.channels``: one logit per
    pixel of a (B, 1, H, W) input (module docstring); any H, W work."""

    def __init__(self, cfg: FPIConfig | None = None) -> None:
        cfg = cfg or FPIConfig()
        super().__init__(cfg.channels)
        self.config = cfg  # the corruption and training it was built for (kept when stored)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, 1, H, W) logits."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"FPINet: need a (B, 1, H, W) input, got {tuple(x.shape)}")
        return super().forward(x)


@torch.no_grad()
def fpi_map(net: nn.Module, x: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """The anomaly map ``(sigmoid(f(x)) + flip(sigmoid(f(flip(x))))) / 2`` of (B, 1, H, W)
    inputs in eval mode, ``batch`` images at a time; float32 (B, 1, H, W) in [0, 1] on the
    input's device."""
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"fpi_map: need a (B, 1, H, W) input, got {tuple(x.shape)}")
    net.eval()
    dev = next(net.parameters()).device
    out = []
    for i in range(0, len(x), batch):
        b = x[i : i + batch].to(dev, torch.float32)
        m = torch.sigmoid(net(b)) + torch.sigmoid(net(b.flip(-1))).flip(-1)
        out.append((m / 2).to(x.device))
    return torch.cat(out)


def body_from_input(x: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """The body of a normalized input from the input alone: ``fill_holes(x > threshold)``
    (as ``bench/ood_targets.py`` takes it at inference)."""
    return ndimage.binary_fill_holes(np.asarray(x).squeeze() > threshold)


def fpi_image_score(m: np.ndarray, x: np.ndarray, top_k: int = 100) -> float:
    """Per-image score: the mean of the ``top_k`` largest values of the map ``m`` inside the
    body of the input ``x`` (:func:`body_from_input`; the whole image if it has no body)."""
    m = np.asarray(m, dtype=np.float64).squeeze()
    x = np.asarray(x).squeeze()
    if m.shape != x.shape:
        raise ValueError(f"fpi_image_score: map {m.shape} and input {x.shape} differ in shape")
    v = m[body_from_input(x)]
    return top_k_mean(v if v.size else m.ravel(), top_k)


def top_k_mean(values: np.ndarray, top_k: int) -> float:
    """The mean of the ``top_k`` largest of ``values`` (all of them when fewer; at least one
    value needed)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    k = min(top_k, v.size)
    return float(np.partition(v, v.size - k)[v.size - k :].mean())


# ----------------------------------------------------------------------------- training
def corrupt_batch(
    images: torch.Tensor, idx: np.ndarray, rng: np.random.Generator, cfg: FPIConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupted images and labels (B, 1, h, w) for the images ``images[idx]``, each with a
    different random source image of ``images``, then a random left-right flip of both; with
    ``cfg.crop`` > 0 both images are first cut to one random ``crop`` x ``crop`` window."""
    n, _, h, w = images.shape
    xs, ys = [], []
    for i in idx:
        j = int(rng.integers(0, n - 1))
        j += j >= i  # a different image
        a, b = images[i, 0].numpy(), images[j, 0].numpy()
        if cfg.crop:
            ch, cw = min(cfg.crop, h), min(cfg.crop, w)
            r0, c0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            a, b = a[r0 : r0 + ch, c0 : c0 + cw], b[r0 : r0 + ch, c0 : c0 + cw]
        xc, y = fpi_corrupt(a, b, rng, cfg)
        if rng.random() < 0.5:
            xc, y = xc[:, ::-1], y[:, ::-1]
        xs.append(np.ascontiguousarray(xc))
        ys.append(np.ascontiguousarray(y))
    return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys))[:, None]


def _batch_function(cfg: FPIConfig):
    """The corruption of ``cfg.method``: :func:`corrupt_batch` (FPI) or
    :func:`~.foreign_body.foreign_body_batch`."""
    if cfg.method == "foreign_body":
        from .foreign_body import foreign_body_batch

        return foreign_body_batch
    return corrupt_batch


def config_for_method(method: str):
    """The config class of an anomaly-map ``method`` ("fpi" or "foreign_body")."""
    if method == "foreign_body":
        from .foreign_body import ForeignBodyConfig

        return ForeignBodyConfig
    if method == "fpi":
        return FPIConfig
    raise ValueError(f"unknown anomaly-map method {method!r} (known: 'fpi', 'foreign_body')")


def _save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_fpi(
    images: torch.Tensor,
    cfg: FPIConfig | None = None,
    *,
    holdout: torch.Tensor | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    keep_epochs: bool = False,
    log=print,
) -> tuple[FPINet, dict]:
    """Train :class:`FPINet` on in-distribution ``images`` (N, 1, H, W) (N >= 2) by FPI.

    Per epoch (``steps_per_epoch`` batches, or N / batch_size): corrupted batches of
    :func:`corrupt_batch`, BCE with logits, Adam with a cosine learning rate over ``epochs``.
    ``holdout`` (M, 1, H, W), optional: a fixed seeded corruption of it gives a holdout BCE per
    epoch, and the weights of the lowest one are returned. ``checkpoint``: written after each
    epoch ({"config", "state_dict", "epoch", "history"}, atomic); ``keep_epochs``: also a copy
    per epoch, ``<stem>_eNN<suffix>``. Stops at ``max_minutes``.
    Returns the net (eval mode, CPU) and the history {"train", "holdout", "minutes"}."""
    cfg = cfg or FPIConfig()
    make_batch = _batch_function(cfg)
    if images.ndim != 4 or images.shape[1] != 1 or len(images) < 2:
        raise ValueError(f"train_fpi: need (N >= 2, 1, H, W) images, got {tuple(images.shape)}")
    dev = pick_device(device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = FPINet(cfg).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.steps_per_epoch or max(1, len(images) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps)
    ho = None
    if holdout is not None:
        hrng = np.random.default_rng(cfg.seed + 1)
        ho = make_batch(holdout, np.arange(len(holdout)), hrng, cfg)
    hist: dict = {"train": [], "holdout": [], "minutes": []}
    best, best_state = math.inf, None
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        net.train()
        losses = []
        order = rng.permutation(len(images))
        for s in range(steps):
            k = (s * cfg.batch_size) % len(images)
            idx = order[k : k + cfg.batch_size]
            if len(idx) < 2:
                idx = rng.choice(len(images), cfg.batch_size, replace=False)
            xb, yb = make_batch(images, idx, rng, cfg)
            loss = F.binary_cross_entropy_with_logits(net(xb.to(dev)), yb.to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        hist["train"].append(float(np.mean(losses)))
        if ho is not None:
            net.eval()
            with torch.no_grad():
                hl = [
                    float(
                        F.binary_cross_entropy_with_logits(
                            net(ho[0][i : i + 32].to(dev)),
                            ho[1][i : i + 32].to(dev),
                            reduction="sum",
                        )
                    )
                    for i in range(0, len(ho[0]), 32)
                ]
            hist["holdout"].append(sum(hl) / ho[1].numel())
            if hist["holdout"][-1] < best:
                best = hist["holdout"][-1]
                best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        minutes = (time.perf_counter() - t0) / 60
        hist["minutes"].append(minutes)
        log(
            f"epoch {epoch + 1}/{cfg.epochs}: train BCE {hist['train'][-1]:.4f}"
            + (f", holdout BCE {hist['holdout'][-1]:.4f}" if ho is not None else "")
            + f", {minutes:.1f} min"
        )
        if checkpoint is not None:
            ck = {
                "method": cfg.method,
                "config": asdict(cfg),
                "state_dict": net.state_dict(),
                "best_state_dict": best_state,
                "epoch": epoch + 1,
                "history": hist,
            }
            path = Path(checkpoint)
            _save_atomic(ck, path)
            if keep_epochs:
                ck["best_state_dict"] = None  # the copy holds this epoch's weights only
                _save_atomic(ck, path.with_name(f"{path.stem}_e{epoch + 1:02d}{path.suffix}"))
        if minutes >= cfg.max_minutes:
            log(f"stopped at {minutes:.1f} min (max_minutes {cfg.max_minutes})")
            break
    if best_state is not None:
        net.load_state_dict(best_state)
    return net.cpu().eval(), hist


def load_fpi(path: str | os.PathLike, best: bool = True) -> FPINet:
    """The net of a :func:`train_fpi` checkpoint (FPI or foreign-body corruption; the
    lowest-holdout weights when ``best`` and stored), eval mode, CPU. Raises ValueError naming
    the file if it is not such a checkpoint."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ck, dict) or "config" not in ck or "state_dict" not in ck:
        raise ValueError(f"{path}: not an FPI checkpoint (need 'config' and 'state_dict')")
    try:
        cfg = config_for_method(ck.get("method", "fpi"))(**ck["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: bad anomaly-map config: {e}") from e
    net = FPINet(cfg)
    state = ck.get("best_state_dict") if best else None
    net.load_state_dict(state or ck["state_dict"])
    return net.eval()


__all__ = [
    "FPIConfig",
    "FPINet",
    "body_from_input",
    "corrupt_batch",
    "fpi_blend",
    "fpi_corrupt",
    "fpi_image_score",
    "fpi_map",
    "load_fpi",
    "random_patch",
    "config_for_method",
    "top_k_mean",
    "train_fpi",
]
