"""Vendor display processing and burnt-in annotations of the simulated radiographs.

References: numpy counts of grey levels, Pearson correlation (numpy.corrcoef) between the
normal and the inverted display, the closed form of the sigmoid look-up table at its ends,
and the annotation mask compared with the pixels that changed.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from darkfield_nb.physics import (
    VENDOR_LOOKS,
    AcquisitionConfig,
    DisplayRanges,
    make_patient,
    sample_display,
    simulate,
    to_radiograph,
)
from darkfield_nb.physics.display import annotation_mask
from darkfield_nb.physics.radiograph import RadiographConfig, tone_curve

SIZE = 128


def _line_integral():
    p = make_patient(6, 0, "healthy", display=DisplayRanges.fixed())
    return simulate(p, SIZE, acquisition=AcquisitionConfig(noise=False)).line_integral


def test_eight_bit_quantization_gives_at_most_256_levels():
    a = _line_integral()
    img8 = to_radiograph(a, RadiographConfig(bits=8))
    img12 = to_radiograph(a, RadiographConfig(bits=12))
    assert img8.max() <= 255 and len(np.unique(img8)) <= 256
    assert len(np.unique(img12)) > 256  # 12 bits really keep more levels
    # 8-bit is the 12-bit image requantized: same picture within one 8-bit step
    assert np.abs(img8 / 255.0 - img12 / 4095.0).max() <= 1.0 / 255 + 1.0 / 4095


def test_inverted_display_correlates_minus_one_with_normal():
    a = _line_integral()
    normal = to_radiograph(a, RadiographConfig()).astype(float)
    inverted = to_radiograph(a, RadiographConfig(invert=True)).astype(float)
    assert np.corrcoef(normal.ravel(), inverted.ravel())[0, 1] == pytest.approx(-1.0, abs=1e-6)
    assert np.array_equal(normal + inverted, np.full_like(normal, 4095))


def test_sigmoid_lut_maps_ends_to_ends_and_is_monotone():
    cfg = RadiographConfig(lut="sigmoid", gamma=1.0, sigmoid_slope=9.0, sigmoid_center=0.55)
    w = np.linspace(0.0, 1.0, 1001)
    v = tone_curve(w, cfg)
    assert v[0] == pytest.approx(0.0, abs=1e-12) and v[-1] == pytest.approx(1.0, abs=1e-12)
    assert np.all(np.diff(v) > 0)
    # S shape: steeper at the centre than at the ends
    dv = np.gradient(v, w)
    assert dv[550] > 3 * dv[10] and dv[550] > 3 * dv[990]
    with pytest.raises(ValueError, match="lut"):
        tone_curve(w, dataclasses.replace(cfg, lut="cubic"))


def test_every_vendor_look_keeps_lungs_darker_than_mediastinum():
    from darkfield_nb import labels

    for name in VENDOR_LOOKS:
        p = make_patient(6, 1, "healthy", display=DisplayRanges(looks=(name,)))
        pair = simulate(p, SIZE)
        assert p.display.look == name
        assert pair.attenuation.max() <= (1 << VENDOR_LOOKS[name].bits) - 1
        lung = labels.has_label(pair.mask, labels.LUNG)
        heart = labels.has_label(pair.mask, labels.HEART) & ~lung
        att = pair.attenuation.astype(float)
        assert att[lung].mean() < att[heart].mean(), name


def test_display_changes_attenuation_only_darkfield_keeps_physical_d():
    a = make_patient(6, 2, "healthy", display=DisplayRanges(looks=("gamma12",)))
    b = make_patient(6, 2, "healthy", display=DisplayRanges(looks=("sigmoid8",)))
    pa, pb = simulate(a, SIZE), simulate(b, SIZE)
    assert np.array_equal(pa.darkfield, pb.darkfield)
    assert not np.array_equal(pa.attenuation, pb.attenuation)


def test_burnt_in_marker_and_text_are_where_the_mask_says():
    ranges = DisplayRanges(looks=("gamma12",), marker_probability=1.0, text_probability=1.0)
    p = make_patient(6, 3, "healthy", display=ranges)
    assert p.display.marker in ("L", "R") and p.display.text
    with_text = simulate(p, SIZE)
    plain = simulate(
        dataclasses.replace(p, display=dataclasses.replace(p.display, marker=None, text=[])), SIZE
    )
    changed = with_text.attenuation != plain.attenuation
    mask = annotation_mask(p.display, SIZE)
    assert mask.sum() > 20
    assert np.array_equal(changed & ~mask, np.zeros_like(mask))  # nothing outside the mask
    assert np.all(with_text.attenuation[mask] == 4095)  # burnt in at full scale
    # the side marker sits in the top corner on the patient's side (L = image right)
    rows, cols = np.nonzero(annotation_mask(dataclasses.replace(p.display, text=[]), SIZE))
    assert rows.max() < SIZE // 4
    assert (cols.min() > SIZE // 2) == (p.display.marker == "L")


def test_inverted_display_is_off_by_default_and_an_option():
    draws = [sample_display(np.random.default_rng(i)).radiograph.invert for i in range(50)]
    assert not any(draws)
    on = [
        sample_display(np.random.default_rng(i), DisplayRanges(invert_probability=1.0))
        for i in range(5)
    ]
    assert all(d.radiograph.invert for d in on)
    assert make_patient(1, 0, "inverted_display").display.radiograph.invert


def test_unknown_look_names_the_problem():
    with pytest.raises(ValueError, match="unknown look 'agfa'"):
        sample_display(np.random.default_rng(0), DisplayRanges(looks=("agfa",)))


def test_vendor_looks_keep_the_table_of_main_before_the_refactor():
    """The five looks, in order, with the field values of the table as written out per look
    before it became one table (commit 9ed8e05, physics/display.py): the shared defaults of
    that VendorLook and each look's own settings, copied here by hand."""
    defaults = {
        "lut": "gamma",
        "gamma": (1.6, 2.0),
        "sigmoid_slope": (4.0, 7.0),
        "sigmoid_center": (0.5, 0.65),
        "high_percentile": (99.5, 99.9),
        "low_percentile": None,
        "equalize_amount": (0.08, 0.2),
        "unsharp_amount": (0.4, 0.8),
        "unsharp_radius": (0.004, 0.008),
        "bits": 12,
    }
    own = {
        "gamma12": {},
        "sigmoid12": {
            "lut": "sigmoid",
            "gamma": (1.0, 1.3),
            "equalize_amount": (0.0, 0.1),
            "unsharp_amount": (0.3, 0.6),
        },
        "equalized12": {
            "gamma": (1.3, 1.7),
            "equalize_amount": (0.25, 0.4),
            "unsharp_amount": (0.9, 1.4),
            "unsharp_radius": (0.003, 0.006),
        },
        "sigmoid8": {
            "lut": "sigmoid",
            "gamma": (1.0, 1.4),
            "low_percentile": (0.5, 3.0),
            "equalize_amount": (0.05, 0.15),
            "unsharp_amount": (0.2, 0.5),
            "bits": 8,
        },
        "gamma8": {
            "gamma": (1.8, 2.4),
            "high_percentile": (99.0, 99.8),
            "equalize_amount": (0.1, 0.25),
            "unsharp_amount": (0.1, 0.4),
            "bits": 8,
        },
    }
    assert list(VENDOR_LOOKS) == ["gamma12", "sigmoid12", "equalized12", "sigmoid8", "gamma8"]
    for name, settings in own.items():
        got = dataclasses.asdict(VENDOR_LOOKS[name])
        want = {"name": name, **defaults, **settings}
        assert got == want, name
        for key, value in want.items():  # tuples stay tuples, ints ints (== alone would pass)
            assert type(got[key]) is type(value), (name, key)
