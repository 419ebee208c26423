"""One simulated patient: from random seeds to a paired attenuation / dark-field image.

Every patient is seeded from ``(seed, index)`` through ``numpy.random.SeedSequence`` and has
independent random streams for anatomy, lung texture, pathology, device, exposure and noise.
So a patient is the same whatever order patients are generated in, and the same patient with
the pathology switched off (``case="healthy"``) has the same anatomy, texture, framing,
display, exposure and noise draws: a controlled comparison (severity 0 gives the healthy pair).

The pipeline of :func:`simulate`: render the phantom on the patient's framed detector grid
(:mod:`~darkfield_nb.physics.framing`), compose the noise-free line integrals ``A`` and ``D``,
rotate, collimate, acquire (blur, stripes, noise), then process ``A`` for display
(:mod:`~darkfield_nb.physics.display`); ``D`` keeps its physical scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from darkfield_nb.physics import materials
from darkfield_nb.physics.acquisition import AcquisitionConfig, Measured, acquire, beam_hardening
from darkfield_nb.physics.anatomy import Anatomy, sample_anatomy
from darkfield_nb.physics.devices import DEVICE_CASES, sample_device
from darkfield_nb.physics.display import Display, DisplayRanges, burn_in, sample_display
from darkfield_nb.physics.framing import (
    Framing,
    FramingRanges,
    collimate,
    render_grid,
    rotate_crop,
    sample_framing,
)
from darkfield_nb.physics.geometry import Grid
from darkfield_nb.physics.pathology import PATHOLOGY_CASES, sample_pathology
from darkfield_nb.physics.phantom import Scene, finish_scene, project_phantom
from darkfield_nb.physics.radiograph import RadiographConfig, to_radiograph

CASES = ("healthy", *PATHOLOGY_CASES, *DEVICE_CASES, "high_contrast", "inverted_display")
_STREAMS = (
    *("anatomy", "texture", "pathology", "device", "exposure", "noise", "lesion", "hardware"),
    *("framing", "display", "severity"),
)
SEVERITY_RANGE = (0.1, 1.0)  # severity of a pathology drawn uniformly when not given


@dataclass
class Exposure:
    """Per-patient acquisition and display settings."""

    energy_kev: float = materials.DEFAULT_ENERGY_KEV
    dose: float = 1.0  # multiplies the photon count N0
    visibility: float = 0.25  # V0
    nu: float = 4.0  # Student-t degrees of freedom of the dark-field noise
    stripe_scale: float = 1.0
    radiograph: RadiographConfig = field(default_factory=RadiographConfig)


def sample_exposure(rng: np.random.Generator, high_contrast: bool = False) -> Exposure:
    """Routine exposures vary a little; a high-contrast case is a low-kVp, low-dose exposure
    processed with a steep, saturating tone curve (out of distribution)."""
    exp = Exposure(
        energy_kev=float(np.clip(rng.normal(47.0, 1.0), 45.0, 50.0)),
        dose=float(np.exp(rng.normal(0.0, 0.25))),
        visibility=float(0.25 * rng.uniform(0.9, 1.1)),
        nu=float(rng.uniform(3.0, 5.0)),
        stripe_scale=float(rng.uniform(0.5, 1.5)),
        radiograph=RadiographConfig(
            high_percentile=float(rng.uniform(99.5, 99.9)),
            gamma=float(rng.uniform(1.6, 2.0)),
            equalize_amount=float(rng.uniform(0.08, 0.2)),
            unsharp_amount=float(rng.uniform(0.4, 0.8)),
        ),
    )
    if high_contrast:
        exp.energy_kev = float(rng.uniform(38.0, 41.0))
        exp.dose = float(rng.uniform(0.25, 0.4))
        exp.radiograph = RadiographConfig(
            high_percentile=float(rng.uniform(96.0, 98.0)),
            gamma=float(rng.uniform(2.6, 3.2)),
            equalize_amount=0.0,
            unsharp_amount=float(rng.uniform(1.2, 1.8)),
        )
    return exp


@dataclass
class Patient:
    """Everything random about one patient (draws from :func:`make_patient`)."""

    seed: int
    index: int
    case: str
    anatomy: Anatomy
    exposure: Exposure
    framing: Framing = field(default_factory=Framing)
    display: Display | None = None  # None: exposure.radiograph, no annotations
    severity: float = 0.0
    pathology: object | None = None
    device: object | None = None
    streams: dict = field(default_factory=dict)  # name -> SeedSequence

    def rng(self, name: str) -> np.random.Generator:
        """A fresh generator for stream ``name`` (the same draws every time it is asked)."""
        return np.random.default_rng(self.streams[name])


def make_patient(
    seed: int,
    index: int = 0,
    case: str = "healthy",
    *,
    severity: float | None = None,
    framing: FramingRanges | None = None,
    display: DisplayRanges | None = None,
) -> Patient:
    """Draw patient ``index`` of the data set seeded with ``seed``, with the given ``case``.

    ``case``: ``"healthy"``, a pathology (emphysema, pneumonia, pneumothorax, effusion,
    nodule) of ``severity`` in [0, 1] (drawn from :data:`SEVERITY_RANGE` when None), a device
    (pacemaker, cables, clips), ``"high_contrast"`` or ``"inverted_display"``. ``framing``
    and ``display`` are the ranges the framing and the vendor look are drawn from (defaults:
    :class:`FramingRanges`, :class:`DisplayRanges`; ``.fixed()`` gives the first simulator's
    single framing and look).
    """
    if case not in CASES:
        raise ValueError(f"case must be one of {', '.join(CASES)}; got {case!r}")
    if int(seed) < 0 or int(index) < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    ranges = framing or FramingRanges()
    root = np.random.SeedSequence(int(seed), spawn_key=(int(index),))
    streams = dict(zip(_STREAMS, root.spawn(len(_STREAMS)), strict=True))
    anatomy = sample_anatomy(np.random.default_rng(streams["anatomy"]), ranges.arms_up_probability)
    exposure = sample_exposure(np.random.default_rng(streams["exposure"]), case == "high_contrast")
    frame = sample_framing(np.random.default_rng(streams["framing"]), anatomy, ranges)
    disp = sample_display(np.random.default_rng(streams["display"]), display)
    if case == "high_contrast":  # its own steep processing, no vendor look
        disp = Display(look="high_contrast", radiograph=exposure.radiograph)
    if case == "inverted_display":
        disp.radiograph = replace(disp.radiograph, invert=True)
    drawn = float(np.random.default_rng(streams["severity"]).uniform(*SEVERITY_RANGE))
    patient = Patient(
        seed=int(seed),
        index=int(index),
        case=case,
        anatomy=anatomy,
        exposure=exposure,
        framing=frame,
        display=disp,
        streams=streams,
    )
    if case in PATHOLOGY_CASES:
        patient.severity = drawn if severity is None else float(severity)
        patient.pathology = sample_pathology(
            case, patient.rng("pathology"), anatomy, patient.severity
        )
        if hasattr(patient.pathology, "adjust_anatomy"):
            patient.anatomy = patient.pathology.adjust_anatomy(anatomy)
    if case in DEVICE_CASES:
        patient.device = sample_device(case, patient.rng("device"), anatomy, frame.fov_cm)
    return patient


def render_scene(
    patient: Patient, size: int, fov_cm: float = 40.0, *, grid: Grid | None = None
) -> Scene:
    """Project the patient's phantom, pathology and device (noise-free, before blur) on
    ``grid`` (default: ``size`` pixels over ``fov_cm``, centred on the phantom origin)."""
    grid = grid or Grid(int(size), float(fov_cm))
    scene = project_phantom(
        patient.anatomy, grid, patient.exposure.energy_kev, rng=patient.rng("texture")
    )
    if patient.pathology is not None:
        patient.pathology.apply(scene, patient.rng("lesion"))
    finish_scene(scene)
    if patient.device is not None:
        patient.device.apply(scene, patient.rng("hardware"))
    return scene


def compose(scene: Scene, cfg: AcquisitionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free line integrals of a scene.

    ``A = A_body + A_bone + A_metal + sum_lungs (mu_lung - mu_t) L_lung + dA``
    ``D = max(eps L_lung + dD, 0) + beam_hardening(A_bone, A_metal, A_body)``
    """
    lung = scene.lung_total
    A = scene.A_body + scene.A_bone + scene.A_metal + (scene.mu_lung - scene.mu_t) * lung + scene.dA
    A = np.maximum(A, 0.0)
    D_lung = np.maximum(scene.eps * lung + scene.dD, 0.0)
    D = D_lung + beam_hardening(scene.A_bone, scene.A_metal, np.maximum(scene.A_body, 0), cfg)
    return A.astype(np.float32), D.astype(np.float32)


@dataclass
class Pair:
    """A simulated pair and what it was made from. Images are in the framed detector frame;
    ``scene`` is the render before rotation (padded by ``pad`` pixels per side)."""

    attenuation: np.ndarray  # processed radiograph, uint16 (``display.bits`` values)
    darkfield: np.ndarray  # measured D, float32
    mask: np.ndarray  # uint16 label bits
    line_integral: np.ndarray  # measured A (after blur and noise), float32
    line_integral_clean: np.ndarray  # noise-free A before blur (collimated)
    darkfield_clean: np.ndarray  # noise-free D before blur (collimated)
    measured: Measured
    scene: Scene
    body: np.ndarray  # bool, inside the patient and the exposed field
    lung_length: np.ndarray  # total lung path (cm) after pathology
    open_field: np.ndarray  # w: 1 exposed, 0 behind the collimator shutters
    annotation: np.ndarray  # bool, burnt-in marker and text pixels
    framing: Framing
    bits: int  # stored bit depth of ``attenuation``
    pad: int = 0


def simulate(
    patient: Patient,
    size: int,
    fov_cm: float | None = None,
    acquisition: AcquisitionConfig | None = None,
) -> Pair:
    """Render, acquire and process one patient at ``size`` x ``size`` pixels.

    The field of view, centre, rotation and shutters are the patient's framing; ``fov_cm``
    overrides the field width only.
    """
    if not 16 <= int(size) <= 4096:
        raise ValueError(f"size must be between 16 and 4096 pixels, got {size}")
    size = int(size)
    cfg = acquisition or AcquisitionConfig()
    framing = patient.framing
    if fov_cm is not None:
        framing = replace(
            framing,
            fov_cm=float(fov_cm),
            chest_fraction=2 * patient.anatomy.chest_a / float(fov_cm),
        )
    grid, pad = render_grid(framing, size)
    scene = render_scene(patient, size, grid=grid)
    A, D = compose(scene, cfg)
    theta = framing.rotation_deg
    A = rotate_crop(A, theta, pad)
    D = np.maximum(rotate_crop(D, theta, pad), 0.0)
    # label bits, body (bit 14) and metal (bit 15) turned in one nearest-neighbour pass
    packed = scene.mask | (scene.body.astype(np.uint16) << 14)
    packed |= scene.metal_outlier.astype(np.uint16) << 15
    packed = rotate_crop(packed, theta, pad, order=0)
    mask = packed & np.uint16((1 << 14) - 1)
    body = (packed & np.uint16(1 << 14)) > 0
    metal = (packed & np.uint16(1 << 15)) > 0
    lung = rotate_crop(scene.lung_total, theta, pad)
    A, D, w = collimate(A, D, framing)
    exposed = w >= 0.5
    mask = np.where(exposed, mask, 0).astype(np.uint16)
    body = body & exposed
    ex = patient.exposure
    meas = acquire(
        A,
        D,
        framing.fov_cm * 10.0 / size,
        patient.rng("noise"),
        cfg,
        dose=ex.dose,
        visibility=ex.visibility,
        nu=ex.nu,
        stripe_scale=ex.stripe_scale,
        metal_outlier=metal & exposed,
    )
    disp = patient.display or Display(look="exposure", radiograph=ex.radiograph)
    radiograph = to_radiograph(meas.attenuation, disp.radiograph, window_mask=w > 0.99)
    radiograph, annotation = burn_in(radiograph, disp, disp.radiograph.bits)
    return Pair(
        attenuation=radiograph,
        darkfield=meas.darkfield,
        mask=mask,
        line_integral=meas.attenuation,
        line_integral_clean=A,
        darkfield_clean=D,
        measured=meas,
        scene=scene,
        body=body,
        lung_length=lung,
        open_field=w,
        annotation=annotation,
        framing=framing,
        bits=disp.radiograph.bits,
        pad=pad,
    )
