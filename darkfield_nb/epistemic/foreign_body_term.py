"""The foreign-body map as a term of the out-of-distribution detector.

A trained foreign-body segmenter (:mod:`.foreign_body`, an :class:`~.fpi.FPINet`) gives a map
``m(x)`` in [0, 1] of the model input ``x`` (flip-averaged, :func:`~.fpi.fpi_map`). The
detector (:class:`~.detector.OODDetector`) uses it twice:

* per pixel, an epistemic sigma :class:`~.conversion.MapSigma`, added in quadrature to the
  density's: ``sigma_epi = sqrt(sigma_u(u)^2 + sigma_m(m)^2)``;
* per image, the statistic ``f(x) = mean of the top_k largest m inside the body`` (the body
  from the input alone, ``fill_holes(x > 0.05)``, :func:`~.fpi.body_from_input`), a third
  statistic of the max-z score (:class:`~.combined.MaxZScore`, name ``"foreign_body"``).

Stored (:meth:`ForeignBodyTerm.state`) as the network's method, config and float16 weights,
the conversion and ``top_k``: about 1.6 MB for the 0.81 M-parameter default.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch

from .conversion import MapSigma
from .fpi import FPINet, _config_class, body_from_input, fpi_map

NAME = "foreign_body"  # the per-image statistic's name in MaxZScore


class ForeignBodyTerm:
    """``net``: a trained :class:`FPINet`; ``conversion``: its :class:`MapSigma` (None until
    :meth:`calibrate`); ``top_k``: the per-image statistic's pixel count."""

    def __init__(
        self,
        net: FPINet,
        conversion: MapSigma | None = None,
        *,
        top_k: int = 100,
        quantile: float = 0.99,
        gain: float = 3.0,
    ) -> None:
        if top_k < 1:
            raise ValueError(f"ForeignBodyTerm: top_k={top_k}; need >= 1")
        self.net = net.eval()
        self.conversion = conversion
        self.top_k, self.quantile, self.gain = int(top_k), float(quantile), float(gain)

    def map(self, x: torch.Tensor) -> torch.Tensor:
        """``m`` (B, 1, H, W) of model inputs ``x`` (B, 1, H, W), on ``x``'s device."""
        dev = x.device
        self.net.to(dev)
        return fpi_map(self.net, x.float())

    def statistic(self, m: torch.Tensor, x: torch.Tensor) -> np.ndarray:
        """Per image (B,): the mean of the ``top_k`` largest values of ``m`` inside the body of
        ``x`` (the whole image where the input shows no body)."""
        mm = m.detach().double().cpu().numpy()[:, 0]
        xx = x.detach().float().cpu().numpy()[:, 0]
        out = np.empty(len(mm))
        for i, (mi, xi) in enumerate(zip(mm, xx, strict=True)):
            v = mi[body_from_input(xi)]
            v = v if v.size else mi.ravel()
            k = min(self.top_k, v.size)
            out[i] = np.partition(v, v.size - k)[v.size - k :].mean()
        return out

    def calibrate(self, m, aleatoric) -> ForeignBodyTerm:
        """The conversion from validation map values and aleatoric sigmas; returns self."""
        self.conversion = MapSigma.calibrate(m, aleatoric, self.quantile, self.gain)
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
        }

    @classmethod
    def from_state(cls, state: dict) -> ForeignBodyTerm:
        """The term of :meth:`state` (weights as tensors or arrays: the store's reader turns
        tensors into float64 arrays)."""
        try:
            cfg_cls = _config_class(str(state["method"]))
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
        return cls(net, conv, top_k=int(state["top_k"]), quantile=conv.quantile, gain=conv.gain)


__all__ = ["NAME", "ForeignBodyTerm"]
