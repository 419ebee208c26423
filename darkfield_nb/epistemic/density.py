"""Feature-space density: Mahalanobis distance of encoder features to the training features.

A network has not seen an input when its features fall where the training features never were.
With the training features ``f_1 .. f_n`` (vectors of ``p`` channels) summarized by their mean
``m`` and a shrinkage covariance ``S``, the distance of a feature vector ``f`` is

    d(f) = sqrt((f - m)^T S^-1 (f - m)).

``S`` is the Ledoit-Wolf estimate (Ledoit & Wolf 2004, as ``sklearn.covariance.LedoitWolf``):
with ``E = (1/n) sum (f_i - m)(f_i - m)^T`` and ``nu = tr(E) / p``,

    S = (1 - s) E + s nu I,   s = min(b, d2) / d2,
    d2 = ||E - nu I||_F^2 / p,  b = (1 / (n^2 p)) sum_i ||(f_i - m)(f_i - m)^T - E||_F^2,

which keeps ``S`` invertible when ``n`` is not much larger than ``p``.

Two scores from the encoder of one U-Net stage (:class:`FeatureDensity`):

* per pixel: every spatial position of encoder level ``level`` (the bottleneck by default,
  stride ``2**depth``) is one feature vector; the distance map is upsampled bilinearly to the
  padded input size and cropped like the network's outputs;
* per image: the channel means over the image (global average pooling) are one vector per
  image, scored against the pooled training vectors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from darkfield_nb.data.transforms import pad_to_multiple, unpad


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean, Ledoit-Wolf shrinkage covariance and shrinkage ``s`` of the rows of ``x`` (n, p)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"ledoit_wolf: need (n >= 2, p) samples, got shape {x.shape}")
    n, p = x.shape
    mean = x.mean(0)
    xc = x - mean
    emp = xc.T @ xc / n
    nu = np.trace(emp) / p
    x2 = xc**2
    b_sum = float((x2.T @ x2).sum()) / n - float((emp**2).sum())
    b = b_sum / (n * p)
    d2 = float(((emp - nu * np.eye(p)) ** 2).sum()) / p
    s = 0.0 if d2 == 0 else min(b, d2) / d2
    cov = (1.0 - s) * emp + s * nu * np.eye(p)
    return mean, cov, s


@dataclass
class GaussianDensity:
    """Mean and precision (inverse shrinkage covariance) of training feature vectors."""

    mean: np.ndarray
    precision: np.ndarray
    shrinkage: float

    @classmethod
    def fit(cls, x: np.ndarray) -> GaussianDensity:
        mean, cov, s = ledoit_wolf(x)
        return cls(mean, np.linalg.inv(cov), s)

    def distance(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Mahalanobis distance of each row of ``x`` (n, p): sqrt((x - m)^T P (x - m))."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"GaussianDensity.distance: rows of {self.mean.shape[0]} features expected, "
                f"got shape {x.shape}"
            )
        xc = x - self.mean
        d2 = ((xc @ self.precision) * xc).sum(1)  # a BLAS product; einsum here is ~10x slower
        return np.sqrt(np.maximum(d2, 0.0))

    def whitened_distance(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`distance` of the rows of a tensor ``x`` (n, p), in float32 on x's device:

            d(x) = ||(x - m) L||_2,   P = L L^T  (Cholesky factor of the precision),

        equal to ``sqrt((x - m)^T P (x - m))``. Whitened, the square is a sum of squares, so
        float32 keeps about 1e-6 relative accuracy (the quadratic form itself cancels: 1e-5 on
        the shipped detector's 144-channel patches) at half the float64 time; the per-pixel
        maps of a 256 px image are 65,536 rows."""
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"GaussianDensity.whitened_distance: rows of {self.mean.shape[0]} features "
                f"expected, got shape {tuple(x.shape)}"
            )
        chol = np.linalg.cholesky(self.precision)  # 144 x 144: well under a millisecond
        as32 = {"dtype": torch.float32, "device": x.device}
        z = (x.float() - torch.as_tensor(self.mean, **as32)) @ torch.as_tensor(chol, **as32)
        return torch.linalg.vector_norm(z, dim=1)


def encoder_outputs(model, x: torch.Tensor, levels, stage: int = -1):
    """One eval-mode forward of stages ``0 .. stage``: the outputs of the encoder blocks
    ``levels`` of stage ``stage`` (padded coordinates, (B, C, Hp / 2**l, Wp / 2**l) each) and
    that stage's :class:`~darkfield_nb.models.StageOutput` (cropped)."""
    unet = model.stages[stage]
    n_run = stage % model.config.n_stages + 1
    got: dict[int, torch.Tensor] = {}
    handles = [
        unet.down[lv].register_forward_hook(lambda _m, _i, out, lv=lv: got.__setitem__(lv, out))
        for lv in levels
    ]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(x, n_stages=n_run)[-1]
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return [got[lv] for lv in levels], out


def encoder_features(model, x: torch.Tensor, level: int = -1, stage: int = -1) -> torch.Tensor:
    """Output of encoder block ``level`` (-1: the bottleneck) of stage ``stage`` for x, in the
    padded coordinates of the network: (B, C, Hp / 2**level, Wp / 2**level). Eval mode."""
    return encoder_outputs(model, x, [level], stage)[0][0]


class FeatureDensity:
    """Mahalanobis distances of one encoder level's features to the training features.

    ``FeatureDensity(model, level=-1, stage=-1).fit(images)`` with ``images`` an iterable of
    (B, C, H, W) normalized inputs from the training split; then :meth:`pixel_map` and
    :meth:`image_distance`. ``max_pixels`` caps the pixel vectors used in the fit (a seeded
    random subset), which keeps the covariance cheap at fine levels.
    """

    def __init__(
        self, model, level: int = -1, stage: int = -1, max_pixels: int = 50_000, seed: int = 0
    ) -> None:
        self.model, self.level, self.stage = model, level, stage
        self.max_pixels, self.seed = max_pixels, seed
        self.pixel: GaussianDensity | None = None
        self.image: GaussianDensity | None = None

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return encoder_features(self.model, x, self.level, self.stage).double().cpu()

    def fit(self, images: Iterable[torch.Tensor]) -> FeatureDensity:
        pix, pooled = [], []
        for x in images:
            f = self._features(x)
            pix.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).numpy())
            pooled.append(f.mean(dim=(-2, -1)).numpy())
        if not pix:
            raise ValueError("FeatureDensity.fit: no training images")
        p = np.concatenate(pix)
        if p.shape[0] > self.max_pixels:
            rng = np.random.default_rng(self.seed)
            p = p[rng.choice(p.shape[0], self.max_pixels, replace=False)]
        self.pixel = GaussianDensity.fit(p)
        self.image = GaussianDensity.fit(np.concatenate(pooled))
        return self

    def _check(self, which: str = "pixel") -> None:
        if getattr(self, which) is None:
            raise RuntimeError(f"FeatureDensity: no {which} density; call fit(training images)")

    def pixel_map(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel distance (B, 1, H, W): the level's distances, bilinearly upsampled to the
        padded input and cropped back to x's size."""
        return self.pixel_map_from(self._features(x), x)

    def pixel_map_from(self, f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """:meth:`pixel_map` from this level's features ``f`` of input ``x``."""
        self._check()
        b, c, h, w = f.shape
        d = self.pixel.whitened_distance(f.detach().permute(0, 2, 3, 1).reshape(-1, c))
        d = d.reshape(b, 1, h, w)
        xp, pads = pad_to_multiple(x, self.model.config.stride)
        up = F.interpolate(d, size=xp.shape[-2:], mode="bilinear", align_corners=False)
        return unpad(up, pads).to(dtype=x.dtype, device=x.device)

    def image_distance(self, x: torch.Tensor) -> np.ndarray:
        """Per-image distance (B,) of the pooled features."""
        return self.image_distance_from(self._features(x))

    def image_distance_from(self, f: torch.Tensor) -> np.ndarray:
        """:meth:`image_distance` from this level's features ``f``."""
        self._check("image")
        return self.image.distance(f.detach().double().mean(dim=(-2, -1)).cpu().numpy())


def distance_to_sigma(distance, d_ref: float, sigma_ref: float):
    """An epistemic sigma in dark-field units from a distance map, for the total map:

        sigma_epi = sigma_ref * max(d / d_ref - 1, 0),

    zero up to ``d_ref`` (e.g. the 95th percentile of training-pixel distances) and growing by
    ``sigma_ref`` (e.g. the median aleatoric sigma of the validation images) per ``d_ref``
    beyond it."""
    if d_ref <= 0 or sigma_ref < 0:
        raise ValueError(
            f"distance_to_sigma: need d_ref > 0, sigma_ref >= 0 ({d_ref}, {sigma_ref})"
        )
    if isinstance(distance, torch.Tensor):
        return sigma_ref * (distance / d_ref - 1.0).clamp_min(0.0)
    return sigma_ref * np.maximum(np.asarray(distance) / d_ref - 1.0, 0.0)


def patch_features(f: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Local patch statistics: every position's ``k x k`` neighbourhood of ``f`` (B, C, h, w)
    stacked into one vector, (B, C k^2, h, w), replicate-padded at the border:

        g[:, c k^2 + i k + j, y, x] = f[:, c, y + i - k // 2, x + j - k // 2].

    A 1-2 px cable changes a pixel's neighbourhood more than its own features. ``k = 1``
    returns ``f``; ``k`` must be odd."""
    if k < 1 or k % 2 == 0:
        raise ValueError(f"patch_features: the patch size k={k} must be odd and >= 1")
    if k == 1:
        return f
    b, c, h, w = f.shape
    cols = F.unfold(F.pad(f, (k // 2,) * 4, mode="replicate"), k)
    return cols.reshape(b, c * k * k, h, w)


class MultiLevelDensity:
    """Mahalanobis distances at several encoder levels, each divided by its median over the
    training features and averaged:

        u(x) = (1/|L_pix|) sum_{l in L_pix} d_l(g_l(x)) / med_l     (per pixel)
        s(x) = (1/|L|) sum_{l in L} d_l(pool(f_l(x))) / med_l^pool  (per image)

    with ``f_l`` the features of encoder level ``l``, ``g_l`` their ``patch x patch``
    neighbourhood vectors (:func:`patch_features`; ``patch = 1``: the features themselves), each
    level's pixel map upsampled to the input. ``levels`` (L) index ``stage.down`` (0 the
    finest, -1 or depth the bottleneck) and give the per-image score; ``pixel_levels`` (L_pix,
    default all of ``levels``) give the pixel map. Fine levels see thin structures (cables,
    clips) that the bottleneck averages away; coarse levels see context."""

    def __init__(
        self,
        model,
        levels=(0, 1, 2, 3, 4),
        stage: int = -1,
        *,
        pixel_levels=None,
        patch: int = 1,
        **kwargs,
    ) -> None:
        if not levels:
            raise ValueError("MultiLevelDensity: levels is empty")
        self.model, self.levels, self.stage = model, list(levels), stage
        self.pixel_levels = list(levels) if pixel_levels is None else list(pixel_levels)
        if not self.pixel_levels or not set(self.pixel_levels) <= set(self.levels):
            raise ValueError(
                f"MultiLevelDensity: pixel_levels {self.pixel_levels} must be a non-empty "
                f"subset of levels {self.levels}"
            )
        patch_features(torch.zeros(1, 1, 1, 1), patch)  # validates k
        self.patch = int(patch)
        self.parts = [FeatureDensity(model, level=lv, stage=stage, **kwargs) for lv in levels]
        self.pixel_ref: list[float] = []  # one per pixel level, in the order of pixel_levels
        self.image_ref: list[float] = []  # one per level
        self.pixel_vectors: dict[int, np.ndarray] = {}  # fit(keep_vectors=True) only

    def _pixel_parts(self):
        return [(k, p) for k, p in enumerate(self.parts) if self.levels[k] in self.pixel_levels]

    def fit(self, images: Iterable[torch.Tensor], keep_vectors: bool = False) -> MultiLevelDensity:
        """Fit every level from one forward pass per batch of ``images`` (normalized inputs
        (B, C, H, W)). Each image contributes at most ``ceil(max_pixels / n_images)`` pixel
        vectors per pixel level (a seeded random subset), so memory stays bounded at 256 px and
        fine levels; ``med_l`` is the median distance of those fitted pixel vectors (the
        per-pixel distances before upsampling) and of the pooled training vectors.
        ``keep_vectors``: keep those pixel vectors as ``pixel_vectors`` ({level: (n, p)
        float64}) for a second density fitted on the same sample (the detector's kNN lung
        contrast); the caller drops them when done."""
        images = list(images)
        if not images:
            raise ValueError("MultiLevelDensity.fit: no training images")
        n_img = sum(int(x.shape[0]) for x in images)
        rng = np.random.default_rng(self.parts[0].seed)
        pix: list[list[np.ndarray]] = [[] for _ in self.parts]
        pooled: list[list[np.ndarray]] = [[] for _ in self.parts]
        for x in images:
            feats, _ = encoder_outputs(self.model, x, self.levels, self.stage)
            for k, (part, f) in enumerate(zip(self.parts, feats, strict=True)):
                f = f.detach().double().cpu()
                pooled[k].append(f.mean(dim=(-2, -1)).numpy())
                if self.levels[k] not in self.pixel_levels:
                    continue
                g = patch_features(f, self.patch)
                per = -(-part.max_pixels // n_img)
                for gi in g:  # (C k^2, h, w) per image
                    v = gi.reshape(gi.shape[0], -1).T.numpy()
                    if v.shape[0] > per:
                        v = v[rng.choice(v.shape[0], per, replace=False)]
                    pix[k].append(v)
        self.pixel_ref, self.image_ref = [], []
        self.pixel_vectors = {}
        for k, part in enumerate(self.parts):
            q = np.concatenate(pooled[k])
            part.image = GaussianDensity.fit(q)
            self.image_ref.append(float(np.median(part.image.distance(q))))
            if pix[k]:
                p = np.concatenate(pix[k])
                part.pixel = GaussianDensity.fit(p)
                self.pixel_ref.append(float(np.median(part.pixel.distance(p))))
                if keep_vectors:
                    self.pixel_vectors[self.levels[k]] = p
        return self

    def evaluate(self, x: torch.Tensor):
        """One forward pass: (per-pixel map u (B, 1, H, W), per-image distances s (B,), the
        stage's StageOutput)."""
        if not self.image_ref:
            raise RuntimeError("MultiLevelDensity: call fit(training images) first")
        feats, out = encoder_outputs(self.model, x, self.levels, self.stage)
        return self.evaluate_features(feats, out, x)

    def evaluate_features(self, feats: list[torch.Tensor], out, x: torch.Tensor):
        """:meth:`evaluate` from encoder outputs already computed (``feats``: one per level of
        ``self.levels``, padded coordinates; ``out``: anything with the stage's mean ``mu``), so
        that a caller that ran the network (Monte Carlo dropout's deterministic prefix) does not
        run it again."""
        dists = [
            p.image_distance_from(f) / ri
            for p, f, ri in zip(self.parts, feats, self.image_ref, strict=True)
        ]
        maps = [
            self.parts[k].pixel_map_from(patch_features(feats[k].float(), self.patch), x) / rp
            for (k, _), rp in zip(self._pixel_parts(), self.pixel_ref, strict=True)
        ]
        return torch.stack(maps).mean(0), np.mean(dists, axis=0), out

    def pixel_map(self, x: torch.Tensor) -> torch.Tensor:
        """Mean normalized distance per pixel, (B, 1, H, W)."""
        return self.evaluate(x)[0]

    def image_distance(self, x: torch.Tensor) -> np.ndarray:
        """Mean normalized pooled distance per image, (B,)."""
        return self.evaluate(x)[1]
