"""Dropout placement variants applied to a built generator, without changing ``models/unet.py``.

A :class:`~darkfield_nb.models.unet.UNetStage` of depth ``L`` has ``L`` decoder dropout slots
``stage.drop[j]`` (``j = 0`` acts on the bottleneck features before the first up-convolution,
``j = L - 1`` on the features before the last one) and ``L + 1`` encoder blocks ``stage.down[i]``.
Placements:

=================== ==========================================================================
``"last"``          ``drop[L-1]`` only: the last decoder level (finest features that are dropped)
``"decoder"``       every ``drop[j]``: every decoder level (what ``GeneratorConfig.dropout`` does)
``"bottleneck"``    ``drop[0]`` only: the bottleneck features
``"encoder_decoder"`` every ``drop[j]`` and the output of encoder blocks ``0 .. L-1`` (dropped
                    through a forward hook, so the skip connections see the dropped features)
=================== ==========================================================================

Dropout layers have no parameters, so a placed model has the same ``state_dict`` keys as the
unplaced one: store the :class:`Placement` beside a checkpoint and call :func:`apply_placement`
after building the model again. With encoder dropout the encoder is no longer a deterministic
prefix, so Monte Carlo prediction must not share it: :func:`mc_strategy` picks ``"repeat"``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from darkfield_nb.models import ProgressiveGenerator

PLACEMENTS = ("last", "decoder", "bottleneck", "encoder_decoder")
KINDS = ("channel", "element")
ENCODER_DROP = "epistemic_encoder_drop"  # attribute holding the encoder dropout layers


@dataclass
class Placement:
    """Where and how much dropout: ``where`` in :data:`PLACEMENTS`, ``rate`` in [0, 1),
    ``kind`` "channel" (``nn.Dropout2d``) or "element" (``nn.Dropout``), ``stages`` the
    0-based stages that carry it ("last", "all" or a list)."""

    where: str = "decoder"
    rate: float = 0.1
    kind: str = "channel"
    stages: str | list[int] = "last"

    def __post_init__(self) -> None:
        if self.where not in PLACEMENTS:
            raise ValueError(f"Placement: where={self.where!r} must be one of {PLACEMENTS}")
        if self.kind not in KINDS:
            raise ValueError(f"Placement: kind={self.kind!r} must be one of {KINDS}")
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"Placement: rate={self.rate} must be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dropout(rate: float, kind: str) -> nn.Module:
    return nn.Dropout2d(rate) if kind == "channel" else nn.Dropout(rate)


def _stage_indices(model: ProgressiveGenerator, stages: str | list[int]) -> list[int]:
    n = model.config.n_stages
    if stages == "last":
        return [n - 1]
    if stages == "all":
        return list(range(n))
    if isinstance(stages, str):
        raise ValueError(f"Placement: stages={stages!r} must be 'last', 'all' or a list of ints")
    return sorted({int(k) % n for k in stages})


def _decoder_slots(where: str, depth: int) -> list[int]:
    if where == "last":
        return [depth - 1]
    if where == "bottleneck":
        return [0]
    return list(range(depth))


def _encoder_hook(drop: nn.Module):
    def hook(_module: nn.Module, _inp, out):
        return drop(out)

    return hook


def apply_placement(model: ProgressiveGenerator, placement: Placement) -> ProgressiveGenerator:
    """Put dropout into ``model`` in place (and return it); every other dropout layer of the
    chosen stages is replaced by ``nn.Identity``. Apply once per built model."""
    for k in _stage_indices(model, placement.stages):
        stage = model.stages[k]
        if hasattr(stage, ENCODER_DROP):
            raise ValueError(f"apply_placement: stage {k} already carries a placement")
        depth = len(stage.drop)
        slots = set(_decoder_slots(placement.where, depth)) if placement.rate > 0 else set()
        for j in range(depth):
            stage.drop[j] = (
                _dropout(placement.rate, placement.kind) if j in slots else nn.Identity()
            )
        enc = nn.ModuleList()
        if placement.where == "encoder_decoder" and placement.rate > 0:
            for i in range(depth):
                drop = _dropout(placement.rate, placement.kind)
                enc.append(drop)
                stage.down[i].register_forward_hook(_encoder_hook(drop))
        stage.add_module(ENCODER_DROP, enc)
    return model


def dropout_layers(model: nn.Module) -> list[nn.Module]:
    """Every dropout layer of ``model`` (decoder slots and encoder hooks alike)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


def set_rate(model: nn.Module, rate: float, where: str | None = None) -> nn.Module:
    """Change the rate of the dropout layers at inference. With ``where`` (a placement name)
    only the layers of that placement keep ``rate``; the others get 0 (a model trained with
    dropout at every decoder level can so be sampled at its last level or bottleneck only).
    A layer outside the trained placement cannot be switched on here."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"set_rate: rate={rate} must be in [0, 1)")
    if where is not None and where not in PLACEMENTS:
        raise ValueError(f"set_rate: where={where!r} must be one of {PLACEMENTS}")
    stages = getattr(model, "stages", [])
    handled: set[int] = set()
    for stage in stages:
        depth = len(stage.drop)
        keep = set(range(depth)) if where is None else set(_decoder_slots(where, depth))
        for j, m in enumerate(stage.drop):
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.p = rate if j in keep else 0.0
                handled.add(id(m))
        for m in getattr(stage, ENCODER_DROP, []):
            m.p = rate if where in (None, "encoder_decoder") else 0.0
            handled.add(id(m))
    for m in dropout_layers(model):
        if id(m) not in handled:
            m.p = rate
    return model


def has_encoder_dropout(model: nn.Module) -> bool:
    """True when an encoder block carries active dropout (Monte Carlo must not share it)."""
    return any(
        m.p > 0 for stage in getattr(model, "stages", []) for m in getattr(stage, ENCODER_DROP, [])
    )


def mc_strategy(model: nn.Module) -> str:
    """``mc_dropout_predict`` strategy valid for ``model``: "batched" shares the encoder of the
    first dropout stage across passes, which is wrong once the encoder itself drops."""
    return "repeat" if has_encoder_dropout(model) else "batched"
