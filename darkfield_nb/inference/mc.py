"""Monte Carlo dropout for a batch of images whose result does not depend on the batch.

``uncertainty.mc_dropout_predict`` draws dropout masks for the whole stacked batch, so an
image's maps depend on which images share its batch. Here pass ``t`` uses the same masks for
every image of the batch, drawn from a generator seeded by ``(seed, t, layer)``: an image gets
the same masks whether it runs alone, in a batch of 32, after a resume or on another rank. The
statistics are those of ``mc_dropout_predict`` (docstring of ``darkfield_nb.uncertainty``)::

    mean       = (1/T) sum_t mu_t
    epistemic  = sqrt((1/T) sum_t (mu_t - mean)^2)
    aleatoric  = sqrt((1/T) sum_t Var_GGD(alpha_t, beta_t))
    total      = sqrt(aleatoric^2 + epistemic^2)

The deterministic prefix (earlier stages and the dropout stage's encoder) runs once
(``ProgressiveGenerator.mc_prefix``); the passes run ``chunk`` at a time on the stacked batch,
through ``shared_decoder.SharedDecoder`` (the skip half of every decoder convolution computed
once, not per pass) where it applies, else ``mc_suffix``. With dropout only at the mean head
(placements "head", "head_reg") alpha and beta are the same in every pass, so the aleatoric
term is ``Var_GGD(alpha, beta)`` of the one deterministic output, computed once, and the passes
produce only the mean head's map (one channel each, not C). Instance norms keep the input's
memory layout (``fast_norm``), so a channels_last model is not copied to and fro.
``samples=0``: one deterministic pass with dropout off (eval mode): mean = that pass's mu,
epistemic = 0, total = aleatoric. A model without active dropout also runs
once (epistemic = 0), as in ``mc_dropout_predict``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from darkfield_nb.inference.fast_norm import layout_preserving_norms
from darkfield_nb.inference.shared_decoder import shared_decoder
from darkfield_nb.uncertainty import ggd_variance

#: Pixels per batched call (passes x images x H x W). CPU: 2 rows of 256 x 256: the decoder is
#: bound by memory traffic between its layers, and CPU time per image (T = 20, one thread, the
#: shipped model, session 16) was 1.5-1.7 s with 1-2 rows per call, 1.7-1.9 s with 4-8, 3.1 s with
#: 16 (the earlier default, which made the pipeline slower than the per-image loop).
PIXEL_BUDGET = {"cpu": 2**17, "cuda": 2**23}


def _dropouts(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


def _mask(module: nn.Module, shape: tuple[int, ...], seed: int, t: int, layer: int) -> torch.Tensor:
    """Pass ``t``'s keep mask of dropout ``layer`` for one image's feature map ``shape``
    (C, H, W): channel masks (C, 1, 1) for Dropout2d, element masks (C, H, W) otherwise;
    scaled by 1 / (1 - p) like ``nn.Dropout``."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(t) * 1_009 + int(layer))
    c = shape[0]
    mshape = (c, 1, 1) if isinstance(module, nn.Dropout2d) else tuple(shape)
    keep = torch.rand(mshape, generator=g) >= module.p
    return keep.float() / (1.0 - module.p)


@contextlib.contextmanager
def fixed_masks(model: nn.Module, passes: list[int], batch: int, seed: int) -> Iterator[None]:
    """Inside the block every dropout layer applies pass ``passes[i]``'s mask to rows
    ``i * batch .. (i + 1) * batch - 1`` of its input (the sample-major stacking of
    ``mc_suffix``); every module is in eval mode. Modes and hooks are restored on exit."""
    saved = [(m, m.training) for m in model.modules()]
    handles = []

    def make_hook(layer: int):
        def hook(module, inputs, output):
            x = inputs[0]
            n = x.shape[0] // batch
            masks = torch.stack(
                [_mask(module, tuple(x.shape[1:]), seed, passes[i], layer) for i in range(n)]
            ).to(device=x.device, dtype=x.dtype)
            shaped = x.reshape(n, batch, *x.shape[1:]) * masks[:, None]
            return shaped.reshape(x.shape)

        return hook

    try:
        model.eval()
        for layer, m in enumerate(_dropouts(model)):
            handles.append(m.register_forward_hook(make_hook(layer)))
        yield
    finally:
        for h in handles:
            h.remove()
        for m, mode in saved:
            m.training = mode


def _stage_index(model: nn.Module, stage: int) -> int:
    n = model.config.n_stages
    if not -n <= stage < n:
        raise ValueError(f"stage={stage} out of range for {n} stages")
    return stage % n


@torch.no_grad()
def mc_predict_batch(
    model: nn.Module,
    x: torch.Tensor,
    samples: int = 20,
    seed: int = 0,
    stage: int = -1,
    chunk: int | None = None,
    amp_dtype: torch.dtype | None = None,
    on_prefix=None,
    on_deterministic=None,
) -> dict[str, torch.Tensor]:
    """MC dropout maps (module docstring) of x (B, 1, H, W) with a ProgressiveGenerator:
    ``{"darkfield", "aleatoric", "epistemic", "total"}``, each (B, 1, H, W) float32.

    ``chunk``: passes per call (default: as many as fit ``PIXEL_BUDGET``); ``amp_dtype``:
    autocast dtype for the network (None: float32); statistics are accumulated in float64.
    ``on_prefix``: called with the deterministic prefix (``MCPrefix``) once it is computed
    (not when the model runs a single deterministic pass), e.g. to reuse its encoder features.
    ``on_deterministic``: called with the stage's eval-mode output (``StageOutput``, cropped)
    where the passes compute it anyway (dropout only at the mean head:
    ``SharedDecoder.deterministic``), e.g. for the lung field of the OOD score; with such a
    model the aleatoric variance is computed once, since alpha and beta do not change between
    passes.
    """
    if samples < 0:
        raise ValueError(f"samples={samples} must be >= 0 (0: one deterministic pass)")
    k = _stage_index(model, stage)
    with layout_preserving_norms(model):
        return _predict(model, x, samples, seed, k, chunk, amp_dtype, on_prefix, on_deterministic)


def _predict(
    model, x, samples, seed, k, chunk, amp_dtype, on_prefix, on_deterministic
) -> dict[str, torch.Tensor]:
    b, _, h, w = x.shape
    amp = torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    active = model.first_dropout_stage(k) is not None and bool(_dropouts(model))
    if samples == 0 or not active:
        saved = model.training
        model.eval()
        try:
            with amp:
                out = model(x, n_stages=k + 1)[k]
        finally:
            model.train(saved)
        mu = out.mu.float()
        ale = ggd_variance(out.alpha.double(), out.beta.double()).sqrt().float()
        zero = torch.zeros_like(mu)
        return {"darkfield": mu, "aleatoric": ale, "epistemic": zero, "total": ale.clone()}
    with amp:
        prefix = model.mc_prefix(x, k)
        decoder = shared_decoder(model, prefix, k)
        det = decoder.deterministic() if decoder is not None else None
    if on_prefix is not None:
        on_prefix(prefix)
    if on_deterministic is not None and det is not None:
        on_deterministic(det)
    if chunk is None:
        budget = PIXEL_BUDGET.get(x.device.type, 2**20)
        if det is not None:  # a pass copies one channel (the mean head's), not C features
            budget *= decoder.h.shape[1]
        chunk = max(1, min(samples, budget // max(1, b * h * w)))
    chunk = max(1, min(int(chunk), samples))
    n = 0
    mean = m2 = ale = None
    if det is not None:  # alpha and beta are the same in every pass: one variance
        ale = ggd_variance(det.alpha.double(), det.beta.double())
    done = 0
    while done < samples:
        c = min(chunk, samples - done)
        with fixed_masks(model, list(range(done, done + c)), b, seed), amp:
            if det is not None:
                mu = decoder.pass_means(c)
            else:
                out = decoder(c) if decoder is not None else model.mc_suffix(prefix, c, k)
                mu = out.mu
                var = ggd_variance(out.alpha.double(), out.beta.double()).reshape(c, b, 1, h, w)
                ale = var.sum(0) if ale is None else ale + var.sum(0)
        mu = mu.double().reshape(c, b, 1, h, w)
        c_mean = mu.mean(0)
        c_m2 = ((mu - c_mean) ** 2).sum(0)
        if n == 0:
            mean, m2 = c_mean, c_m2
        else:  # Chan et al.'s parallel update of mean and sum of squared deviations
            tot = n + c
            delta = c_mean - mean
            mean = mean + delta * (c / tot)
            m2 = m2 + c_m2 + delta**2 * (n * c / tot)
        n += c
        done += c
    ale_var = ale if det is not None else ale / n
    epi_var = m2 / n
    return {
        "darkfield": mean.float(),
        "aleatoric": ale_var.sqrt().float(),
        "epistemic": epi_var.sqrt().float(),
        "total": (ale_var + epi_var).sqrt().float(),
    }
