"""The Monte Carlo passes of the dropout stage's decoder, with what they share computed once.

A U-Net decoder level ``j`` of :class:`~darkfield_nb.models.unet.UNetStage` computes
``h <- block_j(cat[upconv_j(drop_j(h)), skip_j])``, and the first layer of ``block_j`` is a
convolution W (bias b) over the concatenated channels. It is linear in its input, so with W split
along its input channels into W_u (the upsampled half) and W_s (the skip half)::

    W * cat[u, s] + b  =  W_u * u  +  (W_s * s + b)

The skip features s come from the encoder, which is deterministic (it is the Monte Carlo prefix,
``ProgressiveGenerator.mc_prefix``), so ``S_j = W_s * s + b`` is the same for all T passes: it is
computed once per image and added to every pass. That removes the skip half of every level's
first convolution from the passes, about a third of the decoder's multiply-adds (the first
convolution maps 2w -> w channels, the second w -> w). Decoder levels before the first active
dropout layer (placements "last" and "bottleneck" have some) are deterministic too and run once;
with placement "head" the whole decoder runs once and only the 1x1 mean head sees the T passes.
The result equals ``ProgressiveGenerator.mc_suffix`` up to float rounding (the sum is split in
two); ``tests/test_inference_shared_decoder.py`` compares them on every placement, norm,
padding, upsampling and conditioning.

:func:`shared_decoder` returns None where this does not apply (the dropout stage drops encoder
features, a later stage is asked for, or a block does not start with a plain convolution);
``mc.mc_predict_batch`` then runs ``mc_suffix``.
"""

from __future__ import annotations

import torch
from torch import nn

from darkfield_nb.data.transforms import unpad
from darkfield_nb.models import StageOutput
from darkfield_nb.models.progressive import MCPrefix


def _active(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0


class SharedDecoder:
    """The decoder of stage ``prefix.stage`` for B images, T passes at a time (module docstring).

    Built once per batch of images (inside the same autocast as the passes); calling it with
    ``repeats`` runs that many passes stacked sample-major along the batch, like
    ``mc_suffix(prefix, repeats)``, and returns the cropped (repeats * B, 1, H, W) output.
    """

    def __init__(self, model: nn.Module, prefix: MCPrefix) -> None:
        self.stage = model.stages[prefix.stage]
        self.residual = bool(model.config.residual) and prefix.prev_mu is not None
        self.prefix = prefix
        self.b = prefix.feats[-1].shape[0]
        feats = prefix.feats
        h = feats[-1]
        st = self.stage
        self.first = len(st.drop)  # the first level with active dropout
        for j, drop in enumerate(st.drop):
            if _active(drop):
                self.first = j
                break
            h = st.up[j](torch.cat([st.upconv[j](h), feats[-2 - j]], dim=1))
        self.h = h  # the deterministic input of level ``first`` (B rows)
        self.skip_terms = []  # S_j of the levels run per pass
        self.weights = []  # W_u of those levels
        for j in range(self.first, len(st.drop)):
            conv = st.up[j][0]
            cu = st.upconv[j].out_channels
            w_u, w_s = conv.weight[:, :cu].contiguous(), conv.weight[:, cu:].contiguous()
            self.skip_terms.append(conv._conv_forward(feats[-2 - j], w_s, conv.bias))
            self.weights.append(w_u)
        self._once: StageOutput | None = None  # the heads on ``h`` (constant_scale only)

    @property
    def constant_scale(self) -> bool:
        """True when no pass-dependent dropout lies before the heads (placements "head",
        "head_reg"): then the scale and shape heads read the same ``h`` in every pass, so
        alpha and beta are the same for all passes, and only the mean head sees the masks."""
        return self.first == len(self.stage.drop)

    def _heads_once(self) -> StageOutput:
        """The three heads on the deterministic features ``h``, uncropped, without the
        residual; computed once (constant_scale only)."""
        if self._once is None:
            self._once = self.stage.heads(self.h)
        return self._once

    def _residual_crop(self, mu: torch.Tensor, c: int) -> torch.Tensor:
        """``c`` stacked passes of the padded mean, the previous stage's mean added (residual
        stages), cropped to the input."""
        if self.residual:
            b = self.b
            mu = (self.prefix.prev_mu.unsqueeze(0) + mu.unflatten(0, (c, b))).flatten(0, 1)
        return unpad(mu, self.prefix.pads)

    def deterministic(self) -> StageOutput | None:
        """The stage's eval-mode output (no dropout; cropped, residual added), B rows, where
        it comes for free: with ``constant_scale`` it is the heads on ``h``, which the passes
        compute anyway. None otherwise (dropout inside the decoder: the deterministic pass
        would be a decoder pass of its own)."""
        if not self.constant_scale:
            return None
        once = self._heads_once()
        pads = self.prefix.pads
        return StageOutput(self._residual_crop(once.mu, 1), *(unpad(t, pads) for t in once[1:]))

    def __call__(self, repeats: int) -> StageOutput:
        st, b, c = self.stage, self.b, int(repeats)
        h = self.h
        if self.first < len(st.drop):
            h = h.repeat(c, 1, 1, 1)
        for i, j in enumerate(range(self.first, len(st.drop))):
            block = st.up[j]
            u = st.upconv[j](st.drop[j](h))
            a = block[0]._conv_forward(u, self.weights[i], None)
            a.unflatten(0, (c, b)).add_(self.skip_terms[i].unsqueeze(0))
            h = block[1:](a)
        if self.constant_scale:
            once = self._heads_once()
            mu = self._mean_head(c)
            alpha, beta = (t.repeat(c, 1, 1, 1) for t in (once.alpha, once.beta))
        else:
            mu, alpha, beta = st.heads(h, st.head_drop(h))
        pads = self.prefix.pads
        return StageOutput(self._residual_crop(mu, c), unpad(alpha, pads), unpad(beta, pads))

    def pass_means(self, repeats: int) -> torch.Tensor:
        """``self(repeats).mu`` without the scale and shape maps (``constant_scale`` only:
        they are the same in every pass, :meth:`deterministic` has them): the cropped means of
        ``repeats`` passes, (repeats * B, 1, H, W), residual added."""
        if not self.constant_scale:
            raise RuntimeError("SharedDecoder.pass_means: dropout lies inside the decoder")
        return self._residual_crop(self._mean_head(repeats), repeats)

    def _mean_head(self, repeats: int) -> torch.Tensor:
        """The mean head's padded output for ``repeats`` passes (constant_scale)."""
        st = self.stage
        if isinstance(st.head_drop, nn.Dropout2d):
            return self._channel_masked_mean(repeats)
        h = self.h.repeat(repeats, 1, 1, 1)  # element dropout: one copy of h per pass
        return st.head_mu(st.head_drop(h))

    def _channel_masked_mean(self, repeats: int) -> torch.Tensor:
        """Placement "head" with channel dropout: pass t multiplies channel c of the last
        decoder features h by one keep factor m_tc before the mean head, so
        ``mu_t = W (m_t * h) + b = (W * m_t) h + b``: the masks go into the head's weights and
        the features are read once for all passes, not copied per pass. The masks are those
        the dropout layer draws (under ``mc.fixed_masks``: the pass's seeded masks), read by
        applying it to a (repeats * B, C, 1, 1) tensor of ones."""
        st, b, h = self.stage, self.b, self.h
        keep = st.head_drop(h.new_ones(repeats * b, h.shape[1], 1, 1)).view(repeats, b, -1)
        w = st.head_mu.weight.flatten(1).to(h.dtype)  # (1, C)
        mu = torch.einsum("tbc,bchw->tbhw", keep * w, h) + st.head_mu.bias.to(h.dtype)
        return mu.flatten(0, 1).unsqueeze(1)


def _plain_conv(block: nn.Module, channels: int) -> bool:
    if not isinstance(block, nn.Sequential) or not isinstance(block[0], nn.Conv2d):
        return False
    conv = block[0]
    return conv.groups == 1 and conv.in_channels == channels


def shared_decoder(model: nn.Module, prefix: MCPrefix, upto: int) -> SharedDecoder | None:
    """A :class:`SharedDecoder` for ``model``'s Monte Carlo passes of stage ``upto``, or None
    where it does not apply (module docstring)."""
    n = model.config.n_stages
    if prefix.inp is not None or prefix.stage != upto % n:
        return None
    st = model.stages[prefix.stage]
    if not (hasattr(st, "up") and hasattr(st, "upconv") and hasattr(st, "drop")):
        return None
    for j, (upconv, block) in enumerate(zip(st.upconv, st.up, strict=True)):
        skip = prefix.feats[-2 - j].shape[1]
        if not _plain_conv(block, upconv.out_channels + skip):
            return None
    return SharedDecoder(model, prefix)
