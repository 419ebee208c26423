"""The foreign-body map as a term of the out-of-distribution detector.

A trained foreign-body segmenter (:mod:`.foreign_body`, an :class:`~.fpi.FPINet`) gives a map
``m(x)`` in [0, 1] of the model input ``x`` (flip-averaged, :func:`~.fpi.fpi_map`). The
detector (:class:`~.detector.OODDetector`) uses it twice:

* per pixel, an epistemic sigma :class:`~.conversion.MapSigma`, added in quadrature to the
  density's: ``sigma_epi = sqrt(sigma_u(u)^2 + sigma_m(m)^2)``;
* per image, the statistic ``f(x) = mean of the top_k largest m inside the thorax``, a third
  statistic of the max-z score (:class:`~.combined.MaxZScore`, name ``"foreign_body"``). The
  thorax is the convex hull of the predicted lung field ``{mu > t}`` (:func:`convex_hull_mask`;
  ``mu`` the generator's mean, ``t = 0.15`` D as in :class:`~.combined.LungContrast`): both
  lungs, the mediastinum and the hila, without the shoulders, the collimator's corners and the
  burnt-in text, where the segmenter's false positives of in-distribution images sit. Fewer
  than ``min_pixels`` pixels in the field (no lung predicted): the body from the input alone,
  ``fill_holes(x > 0.05)`` (:func:`~.fpi.body_from_input`); ``region="body"`` always uses the
  body. Chosen in ``bench/ood_fpi.py`` on the tune half of the simulated device cases.

Stored (:meth:`ForeignBodyTerm.state`) as the network's method, config and float16 weights,
the conversion, ``top_k`` and the region: about 1.6 MB for the 0.81 M-parameter default.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
from scipy.spatial import ConvexHull, QhullError

from .conversion import MapSigma
from .fpi import FPINet, body_from_input, config_for_method, fpi_map, top_k_mean

NAME = "foreign_body"  # the per-image statistic's name in MaxZScore
REGIONS = ("thorax", "body")


def convex_hull_mask(mask: np.ndarray) -> np.ndarray:
    """The filled convex hull of the True pixels of a 2-D ``mask`` (pixel centres; a pixel is
    inside when it satisfies every facet inequality ``n . p + c <= 1e-9`` of
    ``scipy.spatial.ConvexHull``); the mask itself when it has fewer than 3 pixels or they are
    collinear."""
    mask = np.asarray(mask, dtype=bool)
    pts = np.argwhere(mask)
    if len(pts) < 3:
        return mask.copy()
    try:
        hull = ConvexHull(pts)
    except QhullError:  # collinear
        return mask.copy()
    r0, c0 = pts.min(0)
    r1, c1 = pts.max(0)
    rr, cc = np.mgrid[r0 : r1 + 1, c0 : c1 + 1]
    grid = np.stack([rr.ravel(), cc.ravel()], 1).astype(np.float64)
    inside = (grid @ hull.equations[:, :2].T + hull.equations[:, 2] <= 1e-9).all(1)
    out = np.zeros_like(mask)
    out[r0 : r1 + 1, c0 : c1 + 1] = inside.reshape(rr.shape)
    return out | mask


class ForeignBodyTerm:
    """``net``: a trained :class:`FPINet`; ``conversion``: its :class:`MapSigma` (None until
    :meth:`calibrate`); ``top_k``: the per-image statistic's pixel count."""

    def __init__(
        self,
        net: FPINet,
        conversion: MapSigma | None = None,
        *,
        top_k: int = 50,
        quantile: float = 0.99,
        gain: float = 3.0,
        power: float = 1.0,
        region: str = "thorax",
        mu_threshold: float = 0.15,
        min_pixels: int = 64,
    ) -> None:
        if top_k < 1:
            raise ValueError(f"ForeignBodyTerm: top_k={top_k}; need >= 1")
        if region not in REGIONS:
            raise ValueError(f"ForeignBodyTerm: region={region!r}; choose one of {REGIONS}")
        self.region, self.mu_threshold = region, float(mu_threshold)
        self.min_pixels = int(min_pixels)
        self.net = net.eval()
        self.conversion = conversion
        self.top_k, self.quantile = int(top_k), float(quantile)
        self.gain, self.power = float(gain), float(power)

    def map(self, x: torch.Tensor) -> torch.Tensor:
        """``m`` (B, 1, H, W) of model inputs ``x`` (B, 1, H, W), on ``x``'s device."""
        dev = x.device
        self.net.to(dev)
        return fpi_map(self.net, x.float())

    def area(self, x: np.ndarray, mu: np.ndarray | None) -> np.ndarray:
        """The pixels (bool, H x W) the per-image statistic reads for one input ``x`` and its
        predicted mean ``mu`` (2-D each; module docstring)."""
        if self.region == "thorax" and mu is not None:
            field = np.asarray(mu) > self.mu_threshold
            if field.sum() >= self.min_pixels:
                return convex_hull_mask(field)
        return body_from_input(x)

    def statistic(
        self, m: torch.Tensor, x: torch.Tensor, mu: torch.Tensor | None = None
    ) -> np.ndarray:
        """Per image (B,): the mean of the ``top_k`` largest values of ``m`` inside
        :meth:`area` of ``x`` and ``mu`` (B, 1, H, W each; the whole image where the area is
        empty)."""
        mm = m.detach().double().cpu().numpy()[:, 0]
        xx = x.detach().float().cpu().numpy()[:, 0]
        mus = [None] * len(mm) if mu is None else mu.detach().double().cpu().numpy()[:, 0]
        out = np.empty(len(mm))
        for i, (mi, xi, ui) in enumerate(zip(mm, xx, mus, strict=True)):
            v = mi[self.area(xi, ui)]
            out[i] = top_k_mean(v if v.size else mi, self.top_k)
        return out

    def calibrate(self, m, aleatoric) -> ForeignBodyTerm:
        """The conversion from validation map values and aleatoric sigmas; returns self."""
        self.conversion = MapSigma.calibrate(m, aleatoric, self.quantile, self.gain, self.power)
        return self

    def sigma(self, m: torch.Tensor) -> torch.Tensor:
        """The epistemic sigma of ``m`` (D units)."""
        if self.conversion is None:
            raise RuntimeError("ForeignBodyTerm.sigma: not calibrated")
        return self.conversion(m)

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict:
        if self.conversion is None:
            raise RuntimeError("ForeignBodyTerm.state: not calibrated")
        cfg = self.net.config
        return {
            "method": cfg.method,
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
            "state": {
                k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()
                for k, v in self.net.state_dict().items()
            },
            "conversion": self.conversion.to_dict(),
            "top_k": self.top_k,
            "region": self.region,
            "mu_threshold": self.mu_threshold,
            "min_pixels": self.min_pixels,
        }

    @classmethod
    def from_state(cls, state: dict) -> ForeignBodyTerm:
        """The term of :meth:`state` (weights as tensors or arrays: the store's reader turns
        tensors into float64 arrays)."""
        try:
            cfg_cls = config_for_method(str(state["method"]))
            cfg = cfg_cls(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()}
            )
            net = FPINet(cfg)
            weights = {
                k: torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v)
                for k, v in state["state"].items()
            }
            net.load_state_dict({k: w.to(net.state_dict()[k].dtype) for k, w in weights.items()})
        except (KeyError, TypeError, RuntimeError) as e:
            raise ValueError(f"foreign_body term: malformed state ({e})") from e
        conv = MapSigma.from_dict(state["conversion"])
        return cls(
            net,
            conv,
            top_k=int(state["top_k"]),
            quantile=conv.quantile,
            gain=conv.gain,
            power=conv.power,
            region=str(state.get("region", "body")),
            mu_threshold=float(state.get("mu_threshold", 0.15)),
            min_pixels=int(state.get("min_pixels", 64)),
        )


__all__ = ["NAME", "REGIONS", "ForeignBodyTerm", "convex_hull_mask"]
