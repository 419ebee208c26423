"""Settings for the generator and the discriminator: small dataclasses, every field defaulted.

Both configs round-trip through plain dicts (``to_dict`` / ``from_dict``, or
``dataclasses.asdict`` and ``Config(**d)``) so that checkpoints can store them as JSON-able data.
Stage indices are 0-based throughout the code (stage 0 is the paper's "stage 1").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

NORMS = ("instance", "batch", "group", "none")
CONDITIONINGS = ("concat", "attention")
DROPOUT_KINDS = ("channel", "element")
DROPOUT_PLACEMENTS = ("decoder", "last", "bottleneck", "encoder_decoder", "head", "head_reg")
DISC_NORMS = ("spectral", "instance", "batch", "none")
UPSAMPLES = ("resize", "transpose")
PADDING_MODES = ("zeros", "reflect", "replicate")

#: Values that a stored GeneratorConfig dict without the key stands for. Checkpoints written
#: before these fields existed used transposed-convolution upsampling and zero padding; a dict
#: that lacks the key is one of them (see :meth:`GeneratorConfig.from_stored_dict`).
LEGACY_DEFAULTS = {"upsample": "transpose", "padding_mode": "zeros"}


def _from_dict(cls, d: dict[str, Any]):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(
            f"{cls.__name__}.from_dict: unknown field(s) {unknown}; known: {sorted(known)}"
        )
    return cls(**d)


@dataclass
class GeneratorConfig:
    """Settings of :class:`~darkfield_nb.models.ProgressiveGenerator`.

    n_stages: number of cascaded U-Net stages (1 to 3 in the paper; any >= 1 works).
    base_width: channels of the first U-Net level; level i has ``base_width * 2**i``.
    depth: number of 2x downsamplings per U-Net; inputs are padded to a multiple of ``2**depth``.
    norm: "instance" | "batch" | "group" | "none".
    dropout: dropout rate on decoder feature maps (0 turns dropout, and so MC dropout, off).
    dropout_stages: which stages carry dropout: "last", "all", or a list of 0-based indices.
    dropout_kind: "channel" (``nn.Dropout2d``, whole feature maps) or "element" (``nn.Dropout``).
    dropout_placement: where in a dropout stage: "decoder" (every decoder level, the default and
        the behaviour of models saved before the option), "last" (the last decoder level only),
        "bottleneck" (the bottleneck features only), "encoder_decoder" (every decoder level and
        the output of every encoder block but the bottleneck's), "head" (the last decoder
        features entering the 1x1 mean head: last-layer MC dropout) or "head_reg" ("head" plus
        train-time-only dropout at every decoder level); see ``models/unet.py``.
    conditioning: how stage k+1 sees stage k: "concat" feeds [x, mu_k, alpha_k, beta_k];
        "attention" feeds [x, mu_k] and gates its encoder features with stage k's normalized
        aleatoric sigma (see :class:`~darkfield_nb.models.ProgressiveGenerator`).
    alpha_floor: alpha = softplus(.) + alpha_floor (physical D units).
    beta_min, beta_max: beta = beta_min + (beta_max - beta_min) * sigmoid(.).
    in_channels: channels of the network input (1 for a grey radiograph).
    attention_max: upper clamp of the normalized sigma used as attention gate.
    residual: stage k >= 1 predicts a correction to the previous stage's mean,
        ``mu_k = mu_{k-1} + delta_k``, with its mean head initialized to zero, so a new stage
        starts exactly where the previous one ended and can only learn to improve on it.
    upsample: decoder upsampling. "resize": nearest-neighbour x2 then a 3x3 convolution
        (Odena et al. 2016, "Deconvolution and checkerboard artifacts"): every output pixel is
        made by the same kernel, so no 2-pixel grid. "transpose": ``ConvTranspose2d(2, stride=2)``,
        whose four kernel taps each serve one pixel parity and leave a checkerboard unless
        trained away (the behaviour of models saved before this field existed).
    padding_mode: border handling of every 3x3 convolution: "replicate" (default), "reflect"
        or "zeros". Zero padding marks the border of the map, and a network trained on random
        crops learns from it where the crop's edges are; see ``bench/checkerboard.py`` for the
        bright bottom-edge sigma band this gave the shipped model. "reflect" needs every
        feature map to be at least 2 pixels wide (inputs of at least ``2 * stride``).

    Dicts without ``upsample`` / ``padding_mode`` (checkpoints written before these fields
    existed) are read with :data:`LEGACY_DEFAULTS` by :meth:`from_stored_dict`; constructing
    ``GeneratorConfig()`` directly gives the new defaults.
    """

    n_stages: int = 3
    base_width: int = 16
    depth: int = 4
    norm: str = "instance"
    dropout: float = 0.1
    dropout_stages: str | list[int] = "last"
    dropout_kind: str = "channel"
    dropout_placement: str = "decoder"
    conditioning: str = "concat"
    alpha_floor: float = 1e-3
    beta_min: float = 0.3
    beta_max: float = 8.0
    in_channels: int = 1
    attention_max: float = 10.0
    residual: bool = True
    upsample: str = "resize"
    padding_mode: str = "replicate"

    def __post_init__(self) -> None:
        if isinstance(self.dropout_stages, tuple):
            self.dropout_stages = list(self.dropout_stages)
        checks = [
            (self.n_stages >= 1, f"n_stages={self.n_stages} must be >= 1"),
            (self.base_width >= 1, f"base_width={self.base_width} must be >= 1"),
            (self.depth >= 1, f"depth={self.depth} must be >= 1"),
            (self.norm in NORMS, f"norm={self.norm!r} must be one of {NORMS}"),
            (0.0 <= self.dropout < 1.0, f"dropout={self.dropout} must be in [0, 1)"),
            (
                self.dropout_kind in DROPOUT_KINDS,
                f"dropout_kind={self.dropout_kind!r} must be one of {DROPOUT_KINDS}",
            ),
            (
                self.dropout_placement in DROPOUT_PLACEMENTS,
                f"dropout_placement={self.dropout_placement!r} must be one of {DROPOUT_PLACEMENTS}",
            ),
            (
                self.conditioning in CONDITIONINGS,
                f"conditioning={self.conditioning!r} must be one of {CONDITIONINGS}",
            ),
            (self.alpha_floor > 0, f"alpha_floor={self.alpha_floor} must be > 0"),
            (
                0 < self.beta_min < self.beta_max,
                f"need 0 < beta_min ({self.beta_min}) < beta_max ({self.beta_max})",
            ),
            (self.in_channels >= 1, f"in_channels={self.in_channels} must be >= 1"),
            (self.attention_max > 1, f"attention_max={self.attention_max} must be > 1"),
            (
                self.upsample in UPSAMPLES,
                f"upsample={self.upsample!r} must be one of {UPSAMPLES}",
            ),
            (
                self.padding_mode in PADDING_MODES,
                f"padding_mode={self.padding_mode!r} must be one of {PADDING_MODES}",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"GeneratorConfig: {msg}")
        self.resolved_dropout_stages()  # validates dropout_stages

    def resolved_dropout_stages(self) -> tuple[int, ...]:
        """0-based indices of the stages that carry dropout (empty when ``dropout == 0``)."""
        if self.dropout == 0:
            return ()
        spec = self.dropout_stages
        if spec == "last":
            return (self.n_stages - 1,)
        if spec == "all":
            return tuple(range(self.n_stages))
        if isinstance(spec, str):
            raise ValueError(
                f"GeneratorConfig: dropout_stages={spec!r} must be 'last', 'all' or a list of ints"
            )
        out = []
        for k in spec:
            kk = int(k)
            if not -self.n_stages <= kk < self.n_stages:
                raise ValueError(
                    f"GeneratorConfig: dropout_stages entry {k} out of range for "
                    f"n_stages={self.n_stages}"
                )
            out.append(kk % self.n_stages)
        return tuple(sorted(set(out)))

    @property
    def stride(self) -> int:
        """Spatial size multiple the U-Net needs (inputs are padded to it internally)."""
        return 2**self.depth

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GeneratorConfig:
        """Rebuild from a dict; missing fields take the defaults (a partial dict from a user's
        config file gets the current decoder). Stored checkpoints: :meth:`from_stored_dict`."""
        return _from_dict(cls, d)

    @classmethod
    def from_stored_dict(cls, d: dict[str, Any]) -> GeneratorConfig:
        """Rebuild the config stored in a checkpoint: a missing ``upsample`` / ``padding_mode``
        means the checkpoint predates them, so it gets the legacy values
        (:data:`LEGACY_DEFAULTS`) and old checkpoints load unchanged."""
        return _from_dict(cls, {**LEGACY_DEFAULTS, **d})


@dataclass
class DiscriminatorConfig:
    """Settings of :class:`~darkfield_nb.models.PatchDiscriminator` (conditional PatchGAN).

    in_channels: channels of the conditioning input x; out_channels: channels of the image
    judged (the real or generated dark-field). The network sees them concatenated.
    width: channels of the first layer (64 in pix2pix), doubled per layer up to 8x.
    n_layers: strided layers; 3 gives the 70x70 receptive field of pix2pix.
    norm: "spectral" (spectral normalization on every conv), "instance", "batch" or "none".
    """

    in_channels: int = 1
    out_channels: int = 1
    width: int = 64
    n_layers: int = 3
    norm: str = "spectral"

    def __post_init__(self) -> None:
        if self.norm not in DISC_NORMS:
            raise ValueError(f"DiscriminatorConfig: norm={self.norm!r} must be one of {DISC_NORMS}")
        if self.n_layers < 1 or self.width < 1 or self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(
                "DiscriminatorConfig: n_layers, width, in_channels and out_channels must be >= 1, "
                f"got {self.n_layers}, {self.width}, {self.in_channels}, {self.out_channels}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiscriminatorConfig:
        return _from_dict(cls, d)
