"""The out-of-distribution detector: a feature density fitted after training, with a per-image
score calibrated on the validation split and an epistemic sigma map for the total uncertainty.

Fit (once, after training; no retraining, no extra network):

1. :class:`~darkfield_nb.epistemic.density.MultiLevelDensity` on the training images: at every
   encoder level ``l`` of the last stage, the mean and Ledoit-Wolf covariance of the per-image
   pooled vectors, and at the pixel levels (level 0, full resolution, by default) of the
   ``patch x patch`` neighbourhood vectors of the features (3 x 3 by default: 144 channels);
   ``med_l`` the median training distance;
2. on the validation images (:meth:`OODDetector.calibrate`; the densities can be kept and only
   this step redone): the conversion :class:`~.conversion.DistanceSigma` (the hinge, ``u_ref``
   the 75th percentile of the per-pixel distance u, ``sigma_ref`` the median aleatoric sigma);
   the per-image score :class:`~.combined.MaxZScore` (the validation mean and spread of the
   log pooled distance and of the log lung-field contrast) and the 95th percentile of the
   validation images' leave-one-out scores (the threshold).

Predict, for an image x:

    u(x)          per-pixel normalized Mahalanobis distance (``distance``)
    sigma_epi     = sigma_ref * gain * max(u / u_ref - 1, 0)  (``epistemic``, D units)
    sigma_total   = sqrt(sigma_ale^2 + sigma_epi^2)
    pooled        = mean_l d_l(pool(x)) / med_l^pool          (global: pooled features)
    contrast      = Q_0.99(u) / Q_0.5(u) in the predicted lung (local: :class:`LungContrast`)
    score         = max of the z-scores of log pooled, log contrast against validation
    flag          = score > threshold

so 5 % of in-distribution images are flagged (up to the sampling error of the validation split).

With a foreign-body term (``foreign_body``, :mod:`.foreign_body_term`: a segmenter trained on
synthetic objects added to in-distribution inputs, :mod:`.foreign_body`) its map m(x) in [0, 1]
joins both::

    sigma_epi     = sqrt(sigma_u(u)^2 + sigma_m(m)^2),
                    sigma_m = sigma_ref gain clip((m - m_ref) / (1 - m_ref), 0, 1)^power
    score         = max of three z-scores: also log of the mean of the top_k largest m inside
                    the thorax (convex hull of the predicted lung field)

``contrast_density="knn"`` (opt-in) takes the lung-field contrast from a nearest-neighbour
patch density instead of u (:mod:`.knn_contrast`: the formula, its cost, its storage).

Defaults chosen in ``bench/ood_targets.py`` (pixel levels, patch size, conversion) on half of
the simulated device cases. A state written before these options (no ``patch`` /
``conversion``) keeps its old behaviour: every level in the pixel map, no patch, and
``sigma_epi = sigma_ref * max(u / d_ref - 1, 0)``; one without ``image_score`` (written before
the combined score) scores images by the pooled distance alone, against its stored threshold.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch

from darkfield_nb.ggd import ggd_std

from .combined import LungContrast, MaxZScore
from .conversion import DistanceSigma
from .density import (
    GaussianDensity,
    MultiLevelDensity,
    distance_to_sigma,
    encoder_outputs,
    patch_features,
)
from .foreign_body_term import NAME as FOREIGN_BODY
from .foreign_body_term import ForeignBodyTerm
from .knn import KNNDensity
from .knn_contrast import (
    CONTRAST_DENSITIES,
    CONTRAST_DTYPES,
    contrast_from_state,
    contrast_state,
    default_contrast_knn,
    knn_lung_contrast,
)
from .score import OODThreshold

MIN_VAL_COMBINED = 5  # fewer validation images: the pooled score alone (with a warning)
CALIBRATION_OPTIONS = ("level", "power", "quantile", "offset", "gain", "local")


@dataclass
class OODPrediction:
    """Maps (B, 1, H, W): mean, aleatoric, epistemic, total sigma and the distance; per image
    (B,): score and flag."""

    mean: torch.Tensor
    aleatoric: torch.Tensor
    epistemic: torch.Tensor
    total: torch.Tensor
    distance: torch.Tensor
    score: np.ndarray
    flag: np.ndarray
    foreign_body: torch.Tensor | None = None  # the foreign-body map m, where the detector has one


class _Mean(NamedTuple):
    """A stage output of which only the mean is known (what the per-image score reads)."""

    mu: torch.Tensor


class OODDetector:
    """Density-based epistemic map and calibrated per-image flag for a trained generator.

    ``levels``: encoder levels of the per-image score; ``pixel_levels`` (default: the first
    of ``levels``, level 0 = full resolution) and ``patch`` (neighbourhood size): the pixel
    map; ``power`` and ``quantile``: the :class:`DistanceSigma` conversion; ``level``: the
    fraction of validation images above the threshold; ``offset``, ``gain``: the conversion's
    shape (:class:`DistanceSigma`); ``local``: the lung-field contrast of the per-image
    score (:class:`LungContrast`); ``contrast_density`` (``"gaussian"``: the contrast of u;
    ``"knn"``: of the kNN distance map, module docstring), ``contrast_knn`` (its settings,
    unfitted; default :func:`default_contrast_knn`) and ``contrast_dtype`` (``"float16"`` or
    ``"float32"``, the memory bank as kept and stored); ``foreign_body``: a
    :class:`~.foreign_body_term.ForeignBodyTerm` (a trained foreign-body segmenter) whose map adds
    an epistemic sigma and a third per-image statistic (None: none)."""

    def __init__(
        self,
        model,
        levels: Sequence[int] = (0, 1, 2, 3, 4),
        level: float = 0.05,
        stage: int = -1,
        *,
        pixel_levels: Sequence[int] | None = None,
        patch: int = 3,
        power: float = 1.0,
        quantile: float = 0.75,
        offset: float = 1.0,
        gain: float = 3.0,
        local: LungContrast | None = None,
        contrast_density: str = "gaussian",
        contrast_knn: KNNDensity | None = None,
        contrast_dtype: str = "float16",
        foreign_body: ForeignBodyTerm | None = None,
        **density_kw,
    ) -> None:
        if contrast_density not in CONTRAST_DENSITIES:
            raise ValueError(
                f"OODDetector: contrast_density {contrast_density!r} is not one of "
                f"{CONTRAST_DENSITIES}"
            )
        if contrast_dtype not in CONTRAST_DTYPES:
            raise ValueError(
                f"OODDetector: contrast_dtype {contrast_dtype!r} is not one of "
                f"{tuple(CONTRAST_DTYPES)}"
            )
        self.model = model
        self.levels = tuple(levels)
        self.level = level
        self.stage = int(stage)
        self.pixel_levels = self.levels[:1] if pixel_levels is None else tuple(pixel_levels)
        self.power, self.quantile = float(power), float(quantile)
        self.offset, self.gain = float(offset), float(gain)
        self.local = local if local is not None else LungContrast()
        self.density = MultiLevelDensity(
            model,
            levels=self.levels,
            stage=self.stage,
            pixel_levels=self.pixel_levels,
            patch=patch,
            **density_kw,
        )
        self.d_ref = self.sigma_ref = None
        self.conversion: DistanceSigma | None = None  # None: the old hinge rule
        self.threshold: OODThreshold | None = None
        self.val_scores: np.ndarray | None = None  # per-image scores of the validation images
        self.image_score: MaxZScore | None = None  # None: the pooled distance alone (legacy)
        self.contrast_dtype = contrast_dtype
        self.foreign_body = foreign_body
        self.contrast_knn: KNNDensity | None = None  # set: the kNN contrast (fitted by fit())
        if contrast_density == "knn":
            knn = contrast_knn if contrast_knn is not None else default_contrast_knn()
            self.contrast_knn = replace(knn)  # a copy: fit() fills it in

    @property
    def contrast_density(self) -> str:
        """ "knn" when the per-image score's lung contrast comes from the kNN density, else
        "gaussian" (the contrast of u)."""
        return "gaussian" if self.contrast_knn is None else "knn"

    @property
    def contrast_level(self) -> int:
        """The encoder level whose patch vectors the kNN contrast reads: the first pixel
        level."""
        return self.pixel_levels[0]

    def fit(self, train: Iterable[torch.Tensor], val: Iterable[torch.Tensor]) -> OODDetector:
        """``train``, ``val``: iterables of normalized inputs (B, C, H, W) of the two splits:
        the densities on ``train`` (with ``contrast_density="knn"`` also the kNN density, on
        the pixel vectors the Gaussian of :attr:`contrast_level` is fitted on), then
        :meth:`calibrate` on ``val``."""
        knn = self.contrast_knn is not None
        self.density.fit(list(train), keep_vectors=knn)
        if knn:
            vectors = self.density.pixel_vectors.pop(self.contrast_level)
            self.density.pixel_vectors = {}
            self.fit_contrast(vectors)
        return self.calibrate(val)

    def fit_contrast(self, vectors) -> OODDetector:
        """Fit the kNN contrast density on the pixel-level patch vectors ``vectors`` (n, p),
        its memory bank rounded to ``contrast_dtype``; returns self (then :meth:`calibrate`)."""
        if self.contrast_knn is None:
            raise RuntimeError("OODDetector.fit_contrast: contrast_density is not 'knn'")
        knn = self.contrast_knn.fit(np.asarray(vectors, dtype=np.float32))
        dtype = CONTRAST_DTYPES[self.contrast_dtype]
        knn.memory = knn.memory.astype(dtype).astype(np.float32)
        return self

    def with_calibration_options(self, other: OODDetector) -> OODDetector:
        """Take ``other``'s options of the validation step (:data:`CALIBRATION_OPTIONS`: the
        flagged fraction, the conversion's shape, the lung-field contrast); returns self."""
        for k in CALIBRATION_OPTIONS:
            setattr(self, k, getattr(other, k))
        if other.foreign_body is not None:
            self.foreign_body = other.foreign_body
        return self

    def calibrate(self, val: Iterable[torch.Tensor]) -> OODDetector:
        """Fit everything that depends on the validation split (the densities stay): the
        distance-to-sigma conversion, the per-image score's references and the threshold."""
        if not self.density.image_ref:
            raise RuntimeError("OODDetector.calibrate: the densities are not fitted")
        dist, sig, stats, fb = [], [], [], []
        for x in val:
            feats, d, s, out = self._evaluate(x)
            m = self.foreign_body_map(x)
            dist.append(d.double().flatten().cpu().numpy())
            sig.append(ggd_std(out.alpha, out.beta).double().flatten().cpu().numpy())
            stats.append(self._statistics(d, s, out, feats, x, m))
            if m is not None:
                fb.append(m.double().flatten().cpu().numpy())
        if not dist:
            raise ValueError("OODDetector.calibrate: no validation images")
        dist, sig = np.concatenate(dist), np.concatenate(sig)
        if self.foreign_body is not None:
            self.foreign_body.calibrate(np.concatenate(fb), sig)
        self.d_ref = float(np.quantile(dist, 0.95))
        self.sigma_ref = float(np.median(sig))
        self.conversion = DistanceSigma.calibrate(
            dist, sig, self.quantile, self.power, offset=self.offset, gain=self.gain
        )
        stats = {k: np.concatenate([st[k] for st in stats]) for k in stats[0]}
        n = len(stats["pooled"])
        if n >= MIN_VAL_COMBINED:
            self.image_score, self.val_scores = MaxZScore.calibrate(stats, local=self.local)
            name = "max z of log pooled distance, log lung-field contrast" + (
                ", log foreign-body top-k mean" if self.foreign_body is not None else ""
            )
        else:  # too few images for a mean and spread: the pooled distance alone
            warnings.warn(
                f"OODDetector.calibrate: {n} validation image(s), fewer than "
                f"{MIN_VAL_COMBINED}; the per-image score is the pooled distance alone",
                stacklevel=2,
            )
            self.image_score, self.val_scores = None, stats["pooled"]
            name = "pooled multi-level Mahalanobis"
        self.threshold = OODThreshold.calibrate(self.val_scores, self.level, name)
        return self

    def _evaluate(self, x: torch.Tensor):
        """One eval-mode forward pass of ``x``: (the encoder outputs of ``density.levels``,
        the per-pixel distance map u, the pooled distances, the stage output)."""
        feats, out = encoder_outputs(self.model, x, self.density.levels, self.stage)
        return (feats, *self.density.evaluate_features(feats, out, x))

    def _statistics(self, dist, pooled, out, feats, x, m=None) -> dict[str, np.ndarray]:
        """Per image (B,) each: the pooled distance and the lung-field contrast (of ``dist``,
        or with ``contrast_density="knn"`` of the kNN map, :meth:`knn_contrast`); with a
        foreign-body term also its top-k statistic of the map ``m``."""
        if self.contrast_knn is None:
            contrast = self.local(dist, out.mu)
        else:
            contrast = self.knn_contrast(feats, out.mu, x)
        stats = {"pooled": np.asarray(pooled, dtype=np.float64), "lung_contrast": contrast}
        if m is not None:
            stats[FOREIGN_BODY] = self.foreign_body.statistic(m, x, out.mu)
        return stats

    def _score(self, dist, pooled, out, feats, x, m=None) -> np.ndarray:
        if self.image_score is None:
            return np.asarray(pooled, dtype=np.float64)
        return self.image_score(self._statistics(dist, pooled, out, feats, x, m))

    def foreign_body_map(self, x: torch.Tensor) -> torch.Tensor | None:
        """The foreign-body map ``m`` (B, 1, H, W) of model inputs ``x``, or None without a
        foreign-body term."""
        return None if self.foreign_body is None else self.foreign_body.map(x)

    def knn_contrast(self, feats: list[torch.Tensor], mu: torch.Tensor, x: torch.Tensor):
        """The lung-field contrast (B,) of the kNN map ``v = d_knn(g) / reference`` of the
        patch vectors ``g`` of :attr:`contrast_level` (``feats``: encoder outputs of
        ``self.density.levels``, padded coordinates; ``mu`` (B, 1, H, W) the predicted mean;
        ``x`` the input). At a full-resolution level the distances are computed only at the
        pixels of the eroded lung field ``R`` (:meth:`LungContrast.region`); otherwise over
        the whole level, upsampled bilinearly to the padded input and cropped, as u is."""
        knn = self.contrast_knn
        if knn is None or knn.memory is None:
            raise RuntimeError("OODDetector.knn_contrast: no fitted kNN contrast density")
        f = feats[self.density.levels.index(self.contrast_level)].detach().float().cpu()
        g = patch_features(f, self.density.patch)  # (B, P, h, w), padded coordinates
        return knn_lung_contrast(knn, self.local, g, mu, x, self.model.config.stride)

    def score(self, x: torch.Tensor) -> np.ndarray:
        """The per-image score (B,) of normalized inputs ``x`` (B, C, H, W); one pass."""
        return self.score_and_distance(x)[0]

    def score_and_distance(self, x: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """(:meth:`score` (B,), the pixel distance map u (B, 1, H, W)) of normalized inputs
        ``x``, from one pass; ``epistemic_sigma(u)`` is the density's epistemic sigma."""
        score, dist, _ = self._from_input(x)
        return score, dist

    def score_and_sigma(self, x: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """(:meth:`score` (B,), the epistemic sigma map (B, 1, H, W), D units) of normalized
        inputs ``x`` from one pass: ``epistemic_sigma(u, m)`` with the foreign-body map where
        the detector has one."""
        score, dist, m = self._from_input(x)
        return score, self.epistemic_sigma(dist, m)

    def _from_input(self, x):
        """(score, distance map u, foreign-body map m or None) from one pass of ``x``."""
        if self.threshold is None:
            raise RuntimeError("OODDetector: call fit(train, val) first")
        feats, dist, pooled, out = self._evaluate(x)
        m = self.foreign_body_map(x)
        return self._score(dist, pooled, out, feats, x, m), dist, m

    def score_features(self, feats: list[torch.Tensor], mu: torch.Tensor, x: torch.Tensor):
        """:meth:`score` from the stage's encoder outputs ``feats`` (one per level, padded
        coordinates, as ``ProgressiveGenerator.mc_prefix`` holds them) and its mean ``mu``
        (B, 1, H, W): no forward pass of its own."""
        return self.score_and_distance_features(feats, mu, x)[0]

    def score_and_distance_features(
        self, feats: list[torch.Tensor], mu: torch.Tensor, x: torch.Tensor
    ) -> tuple[np.ndarray, torch.Tensor]:
        """:meth:`score_and_distance` from encoder outputs (as :meth:`score_features`)."""
        score, dist, _ = self._from_features(feats, mu, x)
        return score, dist

    def score_and_sigma_features(
        self, feats: list[torch.Tensor], mu: torch.Tensor, x: torch.Tensor
    ) -> tuple[np.ndarray, torch.Tensor]:
        """:meth:`score_and_sigma` from encoder outputs (as :meth:`score_features`)."""
        score, dist, m = self._from_features(feats, mu, x)
        return score, self.epistemic_sigma(dist, m)

    def _from_features(self, feats, mu, x):
        """(score, distance map u, foreign-body map m or None) from encoder outputs."""
        if self.threshold is None:
            raise RuntimeError("OODDetector: call fit(train, val) first")
        dist, pooled, out = self.density.evaluate_features(feats, _Mean(mu), x)
        m = self.foreign_body_map(x)
        return self._score(dist, pooled, out, feats, x, m), dist, m

    def predict(self, x: torch.Tensor) -> OODPrediction:
        if self.threshold is None:
            raise RuntimeError("OODDetector: call fit(train, val) first")
        feats, dist, pooled, out = self._evaluate(x)  # one forward pass
        m = self.foreign_body_map(x)
        score = self._score(dist, pooled, out, feats, x, m)
        mean, ale = out.mu, ggd_std(out.alpha, out.beta)
        epi = self.epistemic_sigma(dist, m).to(ale.dtype)
        return OODPrediction(
            mean, ale, epi, (ale**2 + epi**2).sqrt(), dist, score, self.threshold.flag(score), m
        )

    def epistemic_sigma(self, u: torch.Tensor, m: torch.Tensor | None = None) -> torch.Tensor:
        """Epistemic sigma (D units) of the distance map ``u``: the fitted
        :class:`DistanceSigma`, or the hinge rule of a state that predates it; with the
        foreign-body map ``m``, ``sqrt(sigma_u^2 + sigma_m^2)`` (:class:`MapSigma`)."""
        if self.conversion is not None:
            s = self.conversion(u)
        else:
            s = distance_to_sigma(u, self.d_ref, self.sigma_ref)
        if m is None or self.foreign_body is None:
            return s
        return (s**2 + self.foreign_body.sigma(m).to(s.device, s.dtype) ** 2).sqrt()

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict:
        """Plain data (floats, lists, NumPy arrays) to store beside a checkpoint."""
        if self.threshold is None:
            raise RuntimeError("OODDetector.state: call fit(train, val) first")
        parts = [
            {
                k: None if getattr(p, k) is None else vars(getattr(p, k)).copy()
                for k in ("pixel", "image")
            }
            for p in self.density.parts
        ]
        state = {
            "levels": list(self.levels),
            "level": self.level,
            "stage": self.stage,
            "val_scores": [float(v) for v in self.val_scores],
            "pixel_levels": list(self.pixel_levels),
            "patch": self.density.patch,
            "conversion": self.conversion.to_dict() if self.conversion is not None else None,
            "d_ref": self.d_ref,
            "sigma_ref": self.sigma_ref,
            "threshold": self.threshold.to_dict(),
            "image_score": None if self.image_score is None else self.image_score.to_dict(),
            "pixel_ref": list(self.density.pixel_ref),
            "image_ref": list(self.density.image_ref),
            "parts": parts,
        }
        if self.contrast_knn is not None:  # absent: the Gaussian contrast (older states too)
            state["contrast"] = contrast_state(self.contrast_knn, self.contrast_dtype)
        if self.foreign_body is not None:  # absent: no foreign-body term (older states too)
            state["foreign_body"] = self.foreign_body.state()
        return state

    @classmethod
    def from_state(cls, model, state: dict) -> OODDetector:
        """The detector of :meth:`state` for ``model`` (the same trained generator)."""
        legacy = "patch" not in state  # written before patches and the power conversion
        det = cls(
            model,
            state["levels"],
            state["level"],
            int(state.get("stage", -1)),
            pixel_levels=state["levels"] if legacy else state["pixel_levels"],
            patch=1 if legacy else int(state["patch"]),
        )
        if state.get("val_scores") is not None:
            det.val_scores = np.asarray(state["val_scores"], dtype=np.float64)
        det.d_ref, det.sigma_ref = float(state["d_ref"]), float(state["sigma_ref"])
        det.threshold = OODThreshold.from_dict(state["threshold"])
        conv = state.get("conversion")
        det.conversion = None if conv is None else DistanceSigma.from_dict(conv)
        if det.conversion is not None:
            c = det.conversion
            det.power, det.quantile, det.offset, det.gain = c.power, c.quantile, c.offset, c.gain
        score = state.get("image_score")  # absent: written before the combined score
        det.image_score = None if score is None else MaxZScore.from_dict(score)
        if det.image_score is not None:
            det.local = det.image_score.local
        det.density.pixel_ref = list(state["pixel_ref"])
        det.density.image_ref = list(state["image_ref"])
        for part, saved in zip(det.density.parts, state["parts"], strict=True):
            part.pixel = None if saved.get("pixel") is None else GaussianDensity(**saved["pixel"])
            part.image = GaussianDensity(**saved["image"])
        contrast = state.get("contrast")  # absent: the Gaussian contrast of u
        if contrast is not None:
            det.contrast_dtype, det.contrast_knn = contrast_from_state(contrast)
        fb = state.get("foreign_body")
        if fb is not None:
            det.foreign_body = ForeignBodyTerm.from_state(fb)
        return det
