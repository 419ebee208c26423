"""The kNN lung-field contrast of the OOD detector's per-image score (opt-in).

The detector's per-image score reads a lung-field contrast (:class:`~.combined.LungContrast`)
of the Gaussian distance map u. ``OODDetector(contrast_density="knn")`` (opt-in) takes it from a
second density of the same pixel-level patch vectors instead:
:class:`~.knn.KNNDensity` (distance to the nearest member of a greedy k-center coreset, default
10,000 members picked in a 64-dim random projection, k = 1), fitted on the very vectors the
pixel Gaussian is fitted on (``MultiLevelDensity.fit(keep_vectors=True)``):

    contrast = Q_0.99(v) / Q_0.5(v) over R,   v(x) = d_knn(g_0(x)) / reference,

``R`` the eroded predicted lung field of :class:`LungContrast`, ``g_0`` the patch vectors of
the first pixel level. Only the per-image score changes; u, the epistemic sigma and the total
map stay Gaussian (the kNN map did not help them, ``bench/ood_knn.py``). At a full-resolution
pixel level (level 0) the kNN distances are computed only at the pixels of ``R``; at a coarser
one, over the whole level and upsampled like u. The memory bank is rounded to
``contrast_dtype`` (float16 by default, as stored) right after the fit, so a stored detector
scores exactly as the fitted one (float16 moves a distance by at most
``max_j ||m_j - fp16(m_j)|| <= 2^-11 max_j ||m_j||``; on v5's patch vectors 0.07 % at most,
the contrast by 2e-5 relative).

Cost per 256 px image, 1 thread, v5 (session 21, 2 shared cores at load average 3.5-4.4;
fastest of 3-5; encoder features given): the Gaussian contrast 0.0006-0.0007 s (on the map u,
which the pixel map needs anyway: 0.115 s with the pooled distances); the kNN contrast
restricted to the lung field 0.77 s (9,581 lung pixels) to 1.36 s (17,896), against 4.9-5.1 s
for the kNN distance at all 65,536 pixels; the forward pass 0.44-0.50 s. The kNN contrast
costs 1.5-3 forward passes.

Why (``bench/ood_knn.py``, ``bench/RESULTS.md``): on v5's simulated device cases the per-image
AUROC (device cases against test) rose from 0.794 to 0.896 with it, at a detector pass of about
5x a forward pass instead of 1.3x; the shipped detector keeps the Gaussian contrast.

Stored (``contrast`` of the detector state, ``epistemic.store`` version 4): {"density": "knn",
"dtype", "knn": KNNDensity.to_dict() with the memory bank a ``dtype`` tensor}.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from darkfield_nb.data.transforms import pad_to_multiple, unpad

from .combined import LungContrast
from .knn import KNNDensity

CONTRAST_DENSITIES = ("gaussian", "knn")
CONTRAST_DTYPES = {"float16": np.float16, "float32": np.float32}


def default_contrast_knn() -> KNNDensity:
    """The kNN settings chosen in ``bench/ood_knn.py`` (session 21): 10,000 coreset members
    picked in a 64-dim random projection, exact distances, k = 1, seed 0."""
    return KNNDensity(size=10_000, dim=64, projection="coreset", k=1, seed=0)


def knn_lung_contrast(
    knn: KNNDensity,
    local: LungContrast,
    g: torch.Tensor,
    mu: torch.Tensor,
    x: torch.Tensor,
    stride: int,
) -> np.ndarray:
    """The lung-field contrast (B,) of the kNN map ``v = d_knn(g) / reference`` of the patch
    vectors ``g`` (B, P, h, w) in the network's padded coordinates (``stride``: its padding
    multiple); ``mu`` (B, 1, H, W) the predicted mean, ``x`` the input. At full resolution the
    distances are computed only at the pixels of the eroded lung field ``R``
    (:meth:`LungContrast.region`); at a coarser level over the whole level, upsampled
    bilinearly to the padded input and cropped, as u is."""
    xp, pads = pad_to_multiple(x, stride)
    if g.shape[-2:] != xp.shape[-2:]:  # a coarser level: the whole map, as u
        b, c, h, w = g.shape
        v = knn.distance(g.permute(0, 2, 3, 1).reshape(-1, c)) / knn.reference
        size = tuple(xp.shape[-2:])
        up = F.interpolate(v.reshape(b, 1, h, w), size=size, mode="bilinear")
        return local(unpad(up, pads).to(x.dtype), mu)
    top, left = int(pads[0]), int(pads[2])
    out = np.ones(g.shape[0])
    for i, mi in enumerate(mu.detach().double().cpu().numpy()[:, 0]):
        ys, xs = np.nonzero(local.region(mi))
        if ys.size < local.min_pixels:
            continue
        rows = g[i][:, torch.from_numpy(ys + top), torch.from_numpy(xs + left)].T
        v = (knn.distance(rows) / knn.reference).to(x.dtype)
        out[i] = local.contrast(v.double().numpy())
    return out


def contrast_state(knn: KNNDensity, dtype: str) -> dict:
    """The fitted kNN contrast density as plain data, its memory bank a ``dtype`` tensor
    (float16: 2 bytes per value; the rest are floats and small arrays)."""
    d = knn.to_dict()
    d["memory"] = torch.from_numpy(d["memory"]).to(getattr(torch, dtype))
    d["index"] = torch.from_numpy(d["index"])
    if d["matrix"] is not None:
        d["matrix"] = torch.from_numpy(d["matrix"])
    return {"density": "knn", "dtype": dtype, "knn": d}


def contrast_from_state(contrast: dict) -> tuple[str, KNNDensity]:
    """(dtype, the kNN density) of a :func:`contrast_state`; ValueError for another density."""
    if contrast.get("density") != "knn":
        raise ValueError(
            f"OODDetector.from_state: contrast density {contrast.get('density')!r} is not 'knn'"
        )
    return str(contrast["dtype"]), KNNDensity.from_dict(contrast["knn"])
