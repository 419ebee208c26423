"""Dropout placement variants of a built generator (``GeneratorConfig.dropout_placement``).

A :class:`~darkfield_nb.models.unet.UNetStage` of depth ``L`` has ``L`` decoder dropout slots
``stage.drop[j]`` (``j = 0`` acts on the bottleneck features before the first up-convolution,
``j = L - 1`` on the features before the last one) and ``L`` encoder slots ``stage.enc_drop[i]``
(the outputs of encoder blocks ``0 .. L-1``, seen by the skip connections and the next level).
Placements (the model option; :class:`Placement` adds a rate, kind and stages to apply it to an
already built model, e.g. one loaded from a checkpoint):

=================== ==========================================================================
``"last"``          ``drop[L-1]`` only: the last decoder level (finest features that are dropped)
``"decoder"``       every ``drop[j]``: every decoder level (the default)
``"bottleneck"``    ``drop[0]`` only: the bottleneck features
``"encoder_decoder"`` every ``drop[j]`` and every ``enc_drop[i]``
=================== ==========================================================================

Dropout layers have no parameters, so a placed model has the same ``state_dict`` keys as the
unplaced one. :func:`apply_placement` also writes the placement into ``model.config`` so that a
checkpoint saved afterwards rebuilds the same model. With encoder dropout the Monte Carlo prefix
ends at the stage's input (:meth:`~darkfield_nb.models.ProgressiveGenerator.mc_prefix`), so
every ``mc_dropout_predict`` strategy stays valid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from torch import nn

from darkfield_nb.models import ProgressiveGenerator
from darkfield_nb.models.unet import dropout_slots

PLACEMENTS = ("last", "decoder", "bottleneck", "encoder_decoder")
KINDS = ("channel", "element")


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


def _stage_indices(model: ProgressiveGenerator, stages: str | list[int]) -> list[int]:
    n = model.config.n_stages
    if stages == "last":
        return [n - 1]
    if stages == "all":
        return list(range(n))
    if isinstance(stages, str):
        raise ValueError(f"Placement: stages={stages!r} must be 'last', 'all' or a list of ints")
    return sorted({int(k) % n for k in stages})


def apply_placement(model: ProgressiveGenerator, placement: Placement) -> ProgressiveGenerator:
    """Put dropout into ``model`` in place (and return it): the chosen stages get
    ``UNetStage.set_dropout(rate, kind, where)`` (every other slot ``nn.Identity``), the other
    stages none, and ``model.config`` records the placement."""
    chosen = _stage_indices(model, placement.stages)
    for k, stage in enumerate(model.stages):
        stage.set_dropout(placement.rate if k in chosen else 0.0, placement.kind, placement.where)
    # a new config (the old object may be shared with other models), set on every stage
    model.config = replace(
        model.config,
        dropout=placement.rate,
        dropout_kind=placement.kind,
        dropout_placement=placement.where,
        dropout_stages=list(chosen),
    )
    for stage in model.stages:
        stage.config = model.config
    return model


def dropout_layers(model: nn.Module) -> list[nn.Module]:
    """Every dropout layer of ``model`` (decoder and encoder slots alike)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


def set_rate(model: nn.Module, rate: float, where: str | None = None) -> nn.Module:
    """Change the rate of the dropout layers at inference. With ``where`` (a placement name)
    only the layers of that placement keep ``rate``; the others get 0 (a model trained with
    dropout at every decoder level can so be sampled at its last level or bottleneck only).
    A slot without a dropout layer (``nn.Identity``) cannot be switched on here."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"set_rate: rate={rate} must be in [0, 1)")
    if where is not None and where not in PLACEMENTS:
        raise ValueError(f"set_rate: where={where!r} must be one of {PLACEMENTS}")
    handled: set[int] = set()
    for stage in getattr(model, "stages", []):
        depth = len(stage.drop)
        keep = set(range(depth)) if where is None else dropout_slots(where, depth)
        for j, m in enumerate(stage.drop):
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.p = rate if j in keep else 0.0
                handled.add(id(m))
        for m in stage.enc_drop:
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.p = rate if where in (None, "encoder_decoder") else 0.0
                handled.add(id(m))
    for m in dropout_layers(model):
        if id(m) not in handled:
            m.p = rate
    return model


def has_encoder_dropout(model: nn.Module) -> bool:
    """True when an encoder block carries active dropout."""
    return any(stage.has_encoder_dropout for stage in getattr(model, "stages", []))


def mc_strategy(model: nn.Module) -> str:
    """``mc_dropout_predict`` strategy for ``model``: "batched" (the prefix shared across passes
    stops before the first dropout layer, encoder dropout included) for a generator, "repeat"
    for any other module."""
    return "batched" if isinstance(model, ProgressiveGenerator) else "repeat"
