"""The keyword arguments naming a predictive distribution (calibration.PredictiveKw): every
metric that takes them rejects a misspelled key at once with a TypeError naming the function,
the bad key and the allowed keys, as Python does for an ordinary keyword; and the keywords give
the same numbers as the distributions they name (scipy.stats.norm / gennorm computed here)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import stats

from darkfield_nb import calibration as cal

RNG = np.random.default_rng(3)
Y, MU = RNG.normal(size=500), RNG.normal(size=500)
SIGMA = RNG.uniform(0.5, 2.0, size=500)
ALPHA, BETA = RNG.uniform(0.5, 2.0, size=500), RNG.uniform(0.8, 2.5, size=500)

# (function, its positional arguments, the keys it allows)
MASKED = ("sigma", "alpha", "beta", "mask")
CALLS = [
    (cal.pit, (Y, MU), ("sigma", "alpha", "beta")),
    (cal.central_pit, (Y, MU), ("sigma", "alpha", "beta")),
    (cal.coverage_curve, (Y, MU), MASKED),
    (cal.coverage, (Y, MU, 0.9), MASKED),
    (cal.miscalibration_area, (Y, MU), MASKED),
    (cal.calibration_errors, (Y, MU), MASKED),
    (cal.interval_width, (0.9,), MASKED),
]


@pytest.mark.parametrize("fn, args, allowed", CALLS, ids=[c[0].__name__ for c in CALLS])
def test_a_misspelled_key_fails_at_once_naming_function_key_and_allowed_keys(fn, args, allowed):
    with pytest.raises(TypeError) as err:
        fn(*args, sigam=SIGMA)
    text = str(err.value)
    assert text.startswith(f"{fn.__name__}()"), text
    assert "'sigam'" in text
    assert re.search(r"allowed: (.*)$", text).group(1) == ", ".join(allowed)


def test_the_keys_are_those_of_the_typed_dicts():
    assert tuple(cal.DistributionKw.__annotations__) == ("sigma", "alpha", "beta")
    assert tuple(cal.PredictiveKw.__annotations__) == ("sigma", "alpha", "beta", "mask")


def test_pit_takes_no_mask():
    with pytest.raises(TypeError, match=r"pit\(\) got unexpected keyword argument\(s\) 'mask'"):
        cal.pit(Y, MU, sigma=SIGMA, mask=Y > 0)


@pytest.mark.parametrize(
    "dist",
    [{}, {"sigma": SIGMA, "alpha": ALPHA, "beta": BETA}, {"alpha": ALPHA}, {"sigma": None}],
    ids=["none", "both", "alpha only", "sigma None"],
)
def test_neither_or_both_kinds_is_a_value_error(dist):
    with pytest.raises(ValueError, match="coverage: give either sigma"):
        cal.coverage(Y, MU, 0.9, **dist)


def test_the_keywords_name_the_distributions_of_scipy():
    ref_gauss, ref_ggd = stats.norm.cdf(Y, MU, SIGMA), stats.gennorm.cdf(Y, BETA, MU, ALPHA)
    np.testing.assert_allclose(cal.pit(Y, MU, sigma=SIGMA), ref_gauss, atol=1e-12)
    np.testing.assert_allclose(cal.pit(Y, MU, alpha=ALPHA, beta=BETA), ref_ggd, atol=1e-12)
    # a key given as None counts as not given (the signature before the TypedDict had None)
    gauss_none = cal.pit(Y, MU, sigma=SIGMA, alpha=None, beta=None)
    np.testing.assert_allclose(gauss_none, ref_gauss, atol=1e-12)


def test_the_mask_selects_the_pixels_of_coverage_and_interval_width():
    mask = Y > 0
    inside = np.abs(Y - MU) <= stats.norm.ppf(0.95) * SIGMA  # central 90 % interval
    assert cal.coverage(Y, MU, 0.9, sigma=SIGMA, mask=mask) == pytest.approx(inside[mask].mean())
    half = stats.gennorm.ppf(0.95, BETA, 0, ALPHA)
    width = cal.interval_width(0.9, alpha=ALPHA, beta=BETA, mask=mask)
    assert width == pytest.approx(2 * half[mask].mean())
