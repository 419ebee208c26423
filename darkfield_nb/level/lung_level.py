"""Set the level of a predicted dark-field map from the lung-level networks.

The generator's map keeps its shape; its level is scaled so that the mean over the predicted
lung field equals the lung level the networks read from the whole radiograph. For an image x
with (MC mean) prediction mu at the model geometry:

    L(x)   = (1 / K) sum_k (m_k + s_k (f_k(P x) + f_k(flip(P x))) / 2)
    F      = {p : U(q(P x))(p) > 1/2}                (with a lung-mask network q)
           = {p : mu(p) > t}                         (without one: the generator's own field)
    g(x)   = clip(L(x) / mean_{p in F} mu(p), g_lo, g_hi)
    mu'    = g mu,    sigma' = g sigma               (every sigma map)

P resamples x to the networks' input shape by area averaging, f_k are the K member networks
(:class:`~darkfield_nb.level.net.LevelNet`) and m_k, s_k their training targets' mean and
standard deviation; q is the lung-mask network (:class:`~darkfield_nb.level.lung_mask.LungMaskNet`,
its flip-averaged probability) and U bilinear resampling back to mu's shape. The networks were
trained on the mean D over the true lung, so F should be the lung: the generator's field
{mu > t} misses it by a few pixels at every edge, and the ratio of the two means varies enough
between images to cost ranking (``bench/lung_level.py``).

Scaling a generalized Gaussian's variable by g scales its scale alpha (and every standard
deviation) by g and keeps its shape beta, so the predictive distribution of each
pixel is the generator's, stretched by g; air (mu about 0) stays about 0. Where the predicted
field has fewer than ``min_field_pixels`` pixels (no chest in view, or a model predicting no
lung), g = 1. With a mask network, F is taken as empty (so g = 1) where it and the generator's
own field disagree on where the lungs are,

    Dice(F_q, {mu > t}) = 2 |F_q n {mu > t}| / (|F_q| + |{mu > t}|) < a_min,

as for an inverted (negative) radiograph, where neither field is a lung (on never-trained
simulated patients the Dice is 0.75-0.99, on the real radiographs 0.81-0.85, on the inverted copy
of one 0.22; ``bench/RESULTS.md``).

What it can and cannot do: it moves each image's mean lung D to the networks' estimate (on
never-trained simulated patients the estimate ranks patients far better than the generator's
own mean: ``bench/lung_level.py``); it cannot place a regional disease, whose pattern stays the
generator's, and the estimate is only as good as the simulator the networks were trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .lung_mask import LungMaskNet, dice, predict_lung_probability
from .net import LevelNet, predict_standardized


@dataclass
class LungLevel:
    """Member networks and what turns their outputs into the factor g (module docstring).

    members: fitted :class:`LevelNet` (eval mode); target_mean, target_sd: m_k and s_k, one
    per member; input_shape: (H, W) the networks were trained at; field_threshold: t in D (the
    generator's field {mu > t}); factor_range: (g_lo, g_hi); min_field_pixels: fewest pixels of
    F (at the model geometry) for a factor other than 1; mask_net: the lung-mask network q
    (None: F = {mu > t}); mask_threshold: the probability above which a pixel is lung;
    min_field_agreement: a_min, the smallest Dice of the mask network's field with {mu > t} for
    which it is used; info: what it was fitted on (``info["mask"]``: the mask network's);
    digest: the stored entry's
    ``store.level_digest`` (None for a level not read from a checkpoint), which joins
    predict's completion key."""

    members: list[LevelNet]
    target_mean: list[float]
    target_sd: list[float]
    input_shape: tuple[int, int] = (128, 128)
    field_threshold: float = 0.1
    factor_range: tuple[float, float] = (0.5, 2.0)
    min_field_pixels: int = 64
    mask_net: LungMaskNet | None = None
    mask_threshold: float = 0.5
    min_field_agreement: float = 0.5
    info: dict = field(default_factory=dict)
    digest: str | None = None

    def __post_init__(self) -> None:
        k = len(self.members)
        if k == 0 or len(self.target_mean) != k or len(self.target_sd) != k:
            raise ValueError(
                f"LungLevel: {k} members with {len(self.target_mean)} target means and "
                f"{len(self.target_sd)} target sds; need one of each per member, at least one"
            )
        lo, hi = self.factor_range
        if not 0 < lo <= 1 <= hi:
            raise ValueError(f"LungLevel.factor_range={self.factor_range}: need 0 < lo <= 1 <= hi")
        if not self.field_threshold > 0:
            raise ValueError(f"LungLevel.field_threshold={self.field_threshold}: need > 0")
        if not 0 < self.mask_threshold < 1:
            raise ValueError(f"LungLevel.mask_threshold={self.mask_threshold}: need 0 < p < 1")
        if not 0 <= self.min_field_agreement <= 1:
            raise ValueError(
                f"LungLevel.min_field_agreement={self.min_field_agreement}: need 0 <= a <= 1"
            )
        self.input_shape = (int(self.input_shape[0]), int(self.input_shape[1]))
        if min(self.input_shape) < 1:
            raise ValueError(f"LungLevel.input_shape={self.input_shape}: need positive sizes")

    def to(self, device: str | torch.device) -> LungLevel:
        for m in self.members:
            m.to(device)
        if self.mask_net is not None:
            self.mask_net.to(device)
        return self

    def estimate(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """L(x) (B,) float64 of model inputs ``x`` (B, 1, H, W) or (H, W): normalized, at the
        model geometry, as the generator sees them; the mean of :meth:`member_estimates`."""
        return self.member_estimates(x).mean(axis=0)

    @torch.no_grad()
    def member_estimates(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """Each member's m_k + s_k (f_k(P x) + f_k(flip(P x))) / 2, (K, B) float64 (inputs as
        :meth:`estimate`). Their spread over k says how much the members disagree on an
        image (a deep-ensemble reading of the level's epistemic uncertainty)."""
        x, device = self._network_input(x, "estimate")
        preds = [
            m + s * predict_standardized(net, x, device)
            for net, m, s in zip(self.members, self.target_mean, self.target_sd, strict=True)
        ]
        return np.stack(preds)

    def _network_input(self, x, what: str) -> tuple[torch.Tensor, torch.device]:
        """``x`` as (B, 1, h, w) float32 at the networks' input shape (area resampling) on their
        device."""
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.ndim == 2:
            x = x[None, None]
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(
                f"LungLevel.{what}: expected (B, 1, H, W) inputs, got {tuple(x.shape)}"
            )
        device = next(self.members[0].parameters()).device
        x = x.to(device).float()
        if tuple(x.shape[-2:]) != self.input_shape:
            x = F.interpolate(x, size=self.input_shape, mode="area")
        return x, device

    @torch.no_grad()
    def lung_probability(self, x: torch.Tensor | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """The mask network's P(lung) (B, H, W) float32 at ``shape`` = (H, W) of model inputs
        ``x`` (as :meth:`estimate`): q at the networks' input shape, resampled bilinearly.
        ValueError without a mask network."""
        if self.mask_net is None:
            raise ValueError("LungLevel.lung_probability: this level has no lung-mask network")
        x, device = self._network_input(x, "lung_probability")
        p = torch.from_numpy(predict_lung_probability(self.mask_net, x, device))[:, None]
        if tuple(p.shape[-2:]) != tuple(shape):
            p = F.interpolate(p, size=tuple(shape), mode="bilinear", align_corners=False)
        return p[:, 0].numpy()

    def lung_field(self, x: torch.Tensor | np.ndarray, mu: np.ndarray) -> np.ndarray:
        """The lung field F (B, H, W) bool at ``mu``'s shape (module docstring): the mask
        network's P(lung) > ``mask_threshold``, empty for an image where its Dice with
        {mu > t} is under ``min_field_agreement``; {mu > t} without a mask network."""
        return self.lung_field_checked(x, mu)[0]

    def lung_field_checked(
        self, x: torch.Tensor | np.ndarray, mu: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(:meth:`lung_field`, the Dice (B,) of the mask network's field with {mu > t}: what
        the guard compared with ``min_field_agreement``; None without a mask network)."""
        mu = np.asarray(mu)
        if mu.ndim == 2:
            mu = mu[None]
        own = mu > self.field_threshold
        if self.mask_net is None:
            return own, None
        mask = self.lung_probability(x, mu.shape[-2:]) > self.mask_threshold
        if len(mask) != len(mu):
            raise ValueError(f"LungLevel.lung_field: {len(mask)} inputs but {len(mu)} means")
        agreement = dice(mask, own)
        mask[agreement < self.min_field_agreement] = False
        return mask, agreement

    def level_warning(self, g: float, agreement: float | None) -> str | None:
        """What a user should be told about one image's factor ``g`` (None: nothing): the
        level was not applied because the two lung fields disagree (``agreement`` under
        ``min_field_agreement``), or g sits at a bound of ``factor_range``."""
        if agreement is not None and agreement < self.min_field_agreement:
            return (
                "lung level not applied (g = 1): the lung-mask network's field and the "
                f"model's own {{mean > {self.field_threshold:g}}} disagree on where the lungs "
                f"are (Dice {agreement:.2f} < {self.min_field_agreement:g}); an inverted or "
                "non-chest image?"
            )
        lo, hi = self.factor_range
        if np.isclose(g, lo) or np.isclose(g, hi):
            return (
                f"lung level clipped: g = {g:g}, a bound of {lo:g}-{hi:g}; the level networks "
                "and the model disagree strongly on this image's lung D"
            )
        return None

    def field_means(
        self, mu: np.ndarray, field: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(mean of ``mu`` over the lung field F, the size of F) per image of ``mu`` (B, H, W)
        or (H, W); ``field``: F (``mu``'s shape, bool), default {mu > t}. The mean is NaN
        where F is empty."""
        mu = np.asarray(mu, np.float64)
        if mu.ndim == 2:
            mu = mu[None]
        if field is None:
            inside = mu > self.field_threshold
        else:
            inside = np.asarray(field, bool)
            if inside.ndim == 2:
                inside = inside[None]
            if inside.shape != mu.shape:
                raise ValueError(
                    f"LungLevel.field_means: a field {inside.shape} for means {mu.shape}; "
                    "need the same shape"
                )
        count = inside.sum(axis=(1, 2))
        total = np.where(inside, mu, 0.0).sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            return total / count, count

    def factors(
        self, x: torch.Tensor | np.ndarray, mu: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(L (B,), g (B,)) for model inputs ``x`` and the predictions' means ``mu`` (B, H, W) at
        the same geometry (module docstring)."""
        level = self.estimate(x)
        return level, self.factors_of(level, mu, self.lung_field(x, mu))

    def factors_of(
        self, level: np.ndarray, mu: np.ndarray, field: np.ndarray | None = None
    ) -> np.ndarray:
        """g (B,) of given levels L (B,) and means ``mu`` (B, H, W) over the lung field
        ``field`` (:meth:`lung_field`; default {mu > t}) (module docstring)."""
        level = np.asarray(level, np.float64)
        n_mu = 1 if np.ndim(mu) == 2 else len(mu)
        if n_mu != len(level):
            raise ValueError(f"LungLevel.factors: {len(level)} inputs but {n_mu} means")
        mean_f, count = self.field_means(mu, field)
        ok = (count >= self.min_field_pixels) & (mean_f > 0)
        g = np.ones_like(level)
        g[ok] = np.clip(level[ok] / mean_f[ok], *self.factor_range)
        return g


__all__ = ["LungLevel"]
