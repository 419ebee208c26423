"""Display processing of different vendors, and what is burnt into the pixels.

Archived chest radiographs are the output of each vendor's image processing, not raw line
integrals: a window, a tone curve (gamma or S-shaped film-like look-up table), multi-scale
latitude compression and edge enhancement of different strengths, stored with 12 bits (the
modality) or 8 bits (PACS exports, public PNG data sets). Each :class:`VendorLook` is a set of
ranges for the parameters of :func:`~darkfield_nb.physics.radiograph.to_radiograph`;
:func:`sample_display` draws one look and one setting per patient.

Display processing touches the attenuation image only: the dark-field target keeps its
physical D. Burnt-in annotations (:func:`burn_in`: a side marker "L"/"R" and a line or two of
text, white at full scale) are display content too.

An inverted display (a MONOCHROME1 image read as MONOCHROME2: bones dark, air white) is a
reader error, not a vendor look: ``DisplayRanges.invert_probability`` (0 by default) or the
out-of-distribution case ``"inverted_display"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from darkfield_nb.physics.radiograph import RadiographConfig


@dataclass(frozen=True)
class VendorLook:
    """Parameter ranges (uniform) of one vendor-like processing chain."""

    name: str
    lut: str = "gamma"
    gamma: tuple[float, float] = (1.6, 2.0)
    sigmoid_slope: tuple[float, float] = (4.0, 7.0)
    sigmoid_center: tuple[float, float] = (0.5, 0.65)
    high_percentile: tuple[float, float] = (99.5, 99.9)
    low_percentile: tuple[float, float] | None = None  # None: air (A = 0) is black
    equalize_amount: tuple[float, float] = (0.08, 0.2)
    unsharp_amount: tuple[float, float] = (0.4, 0.8)
    unsharp_radius: tuple[float, float] = (0.004, 0.008)
    bits: int = 12


# One row per look with the settings every look chooses (columns: _LOOK_FIELDS); a look keeps
# VendorLook's defaults for the rest, except for the few settings _LOOK_EXTRAS gives it.
_LOOK_FIELDS = ("name", "lut", "bits", "gamma", "equalize_amount", "unsharp_amount")
_LOOK_ROWS = (
    # the first simulator's processing: gamma curve, mild compression and sharpening
    ("gamma12", "gamma", 12, (1.6, 2.0), (0.08, 0.2), (0.4, 0.8)),
    # S-shaped film-like curve, little compression
    ("sigmoid12", "sigmoid", 12, (1.0, 1.3), (0.0, 0.1), (0.3, 0.6)),
    # strong multi-scale latitude compression and edge enhancement (flat, busy look)
    ("equalized12", "gamma", 12, (1.3, 1.7), (0.25, 0.4), (0.9, 1.4)),
    # PACS export: 8 bits, window from percentiles, S curve
    ("sigmoid8", "sigmoid", 8, (1.0, 1.4), (0.05, 0.15), (0.2, 0.5)),
    # public 8-bit PNG data sets: steep gamma, soft
    ("gamma8", "gamma", 8, (1.8, 2.4), (0.1, 0.25), (0.1, 0.4)),
)
_LOOK_EXTRAS = {
    "equalized12": {"unsharp_radius": (0.003, 0.006)},  # finer edges enhanced
    "sigmoid8": {"low_percentile": (0.5, 3.0)},  # the window's low end from a percentile
    "gamma8": {"high_percentile": (99.0, 99.8)},
}
VENDOR_LOOKS: dict[str, VendorLook] = {
    row[0]: VendorLook(**dict(zip(_LOOK_FIELDS, row, strict=True)), **_LOOK_EXTRAS.get(row[0], {}))
    for row in _LOOK_ROWS
}


@dataclass
class DisplayRanges:
    """What :func:`sample_display` draws from: the looks (equally likely), the chance of an
    inverted display (a reader-error case; 0 in training by default) and of annotations."""

    looks: tuple[str, ...] = tuple(VENDOR_LOOKS)
    invert_probability: float = 0.0
    marker_probability: float = 0.8  # burnt-in "L" / "R" side marker
    text_probability: float = 0.5  # burnt-in text lines

    @classmethod
    def fixed(cls) -> DisplayRanges:
        """The first simulator's processing only, without annotations."""
        return cls(looks=("gamma12",), marker_probability=0.0, text_probability=0.0)


@dataclass
class Display:
    """One patient's display: the look, its settings and the annotations to burn in."""

    look: str
    radiograph: RadiographConfig
    marker: str | None = None  # "L" or "R"
    marker_corner: str = "top_right"
    text: list[str] = field(default_factory=list)
    text_corner: str = "bottom_left"
    text_scale: float = 0.03  # text height, fraction of the image


def sample_display(rng: np.random.Generator, ranges: DisplayRanges | None = None) -> Display:
    """Draw one patient's display from ``ranges`` (a fixed number of draws per call)."""
    r = ranges or DisplayRanges()
    for name in r.looks:
        if name not in VENDOR_LOOKS:
            raise ValueError(f"unknown look {name!r}; known: {', '.join(VENDOR_LOOKS)}")
    u = rng.uniform(0.0, 1.0, 16)
    look = VENDOR_LOOKS[r.looks[int(u[0] * len(r.looks)) % len(r.looks)]]

    def pick(rng_pair, x):
        return float(rng_pair[0] + (rng_pair[1] - rng_pair[0]) * x)

    cfg = RadiographConfig(
        high_percentile=pick(look.high_percentile, u[1]),
        gamma=pick(look.gamma, u[2]),
        equalize_amount=pick(look.equalize_amount, u[3]),
        unsharp_amount=pick(look.unsharp_amount, u[4]),
        unsharp_radius=pick(look.unsharp_radius, u[5]),
        bits=look.bits,
        lut=look.lut,
        sigmoid_slope=pick(look.sigmoid_slope, u[6]),
        sigmoid_center=pick(look.sigmoid_center, u[7]),
        low_percentile=None if look.low_percentile is None else pick(look.low_percentile, u[8]),
        invert=bool(u[9] < r.invert_probability),
    )
    marker = None
    if u[10] < r.marker_probability:
        marker = "L" if u[11] < 0.5 else "R"
    # patient's left is the image right on a PA view: an "L" sits near the image right
    corner_side = "right" if marker == "L" else "left"
    text = []
    if u[12] < r.text_probability:
        words = ["PA", "ERECT", "AP", "PORTABLE", "INSP", "STANDING", "CHEST"]
        n_words = 1 + int(u[13] * 3)
        idx = rng.choice(len(words), size=n_words, replace=False)
        text = [" ".join(words[i] for i in idx)]
        text.append(f"{int(rng.integers(1, 29)):02d}.{int(rng.integers(1, 13)):02d}.20")
    else:
        rng.choice(7, size=1)
        rng.integers(1, 29, size=2)
    return Display(
        look=look.name,
        radiograph=cfg,
        marker=marker,
        marker_corner=f"top_{corner_side}",
        text=text,
        text_corner="bottom_left" if u[14] < 0.5 else "bottom_right",
        text_scale=float(0.025 + 0.02 * u[15]),
    )


def _text_mask(lines: list[str], height_px: int) -> np.ndarray:
    """A boolean raster of ``lines`` set in Pillow's default font, ``height_px`` per line."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=max(height_px, 6))
    widths = [int(font.getlength(t)) + 2 for t in lines]
    h_line = int(height_px * 1.25) + 1
    img = Image.new("L", (max(widths), h_line * len(lines) + 1), 0)
    draw = ImageDraw.Draw(img)
    for k, t in enumerate(lines):
        draw.text((1, k * h_line), t, fill=255, font=font)
    return np.asarray(img) > 127


def annotation_mask(display: Display, size: int) -> np.ndarray:
    """Where :func:`burn_in` writes: a ``size`` x ``size`` bool mask of marker and text pixels,
    each placed in its corner with a margin of 3 % of the image."""
    out = np.zeros((size, size), bool)
    margin = int(round(0.03 * size))

    def place(mask: np.ndarray, corner: str) -> None:
        h, w = min(mask.shape[0], size - 2 * margin), min(mask.shape[1], size - 2 * margin)
        if h <= 0 or w <= 0:
            return
        mask = mask[:h, :w]
        r0 = margin if corner.startswith("top") else size - margin - h
        c0 = margin if corner.endswith("left") else size - margin - w
        out[r0 : r0 + h, c0 : c0 + w] |= mask

    if display.marker:
        place(_text_mask([display.marker], max(int(0.06 * size), 6)), display.marker_corner)
    if display.text:
        place(_text_mask(display.text, max(int(display.text_scale * size), 6)), display.text_corner)
    return out


def burn_in(image: np.ndarray, display: Display, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Write the display's marker and text into ``image`` at full scale ``2^bits - 1`` (black
    on an inverted display, as the annotation is inverted with the pixels). Returns the new
    image and the annotation mask."""
    mask = annotation_mask(display, image.shape[0])
    if not mask.any():
        return image, mask
    out = image.copy()
    out[mask] = 0 if display.radiograph.invert else (1 << bits) - 1
    return out, mask
