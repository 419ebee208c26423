"""The threshold explorer's callbacks and readout, checked against direct NumPy / SciPy
computations (scipy.stats.gennorm for the interval, brute force for sparsification)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import gennorm, norm

pytest.importorskip("ipywidgets")

from darkfield_nb.labels import CABLE, LUNG, PACEMAKER  # noqa: E402
from darkfield_nb.uncertainty import MCDropoutResult  # noqa: E402
from darkfield_nb.widgets import (  # noqa: E402
    interval_factor,
    parse_readout,
    sparsification,
    threshold_at_percentile,
    threshold_explorer,
    threshold_stats,
)

RTOL = 2e-5  # the readout prints 6 significant digits


def _result(b=2, h=20, w=24, seed=0, recalibrated=False):
    rng = np.random.default_rng(seed)

    def t(a):
        return torch.from_numpy(a.astype(np.float32))

    mean = rng.uniform(0.0, 0.4, (b, 1, h, w))
    ale = rng.uniform(0.01, 0.05, (b, 1, h, w))
    epi = rng.uniform(0.001, 0.02, (b, 1, h, w))
    beta = rng.uniform(0.8, 2.5, (b, 1, h, w))
    total = np.sqrt(ale**2 + epi**2)
    res = MCDropoutResult(
        mean=t(mean),
        aleatoric=t(ale),
        epistemic=t(epi),
        total=t(total),
        alpha=t(ale),
        beta=t(beta),
        n_samples=4,
    )
    if recalibrated:
        res.recalibrated = t(1.3 * total)
    target = mean + rng.standard_normal(mean.shape) * total * 1.2
    mask = np.full((b, 1, h, w), LUNG, dtype=np.int32)
    mask[:, :, 2:6, 3:9] |= PACEMAKER
    mask[:, :, 10, :] |= CABLE
    return res, t(target), torch.from_numpy(mask)


def _reference(sigma, t, mean, target, beta, device, level=0.9):
    """Every readout figure straight from its definition, with gennorm for the interval."""
    flag = sigma > t
    keep = ~flag
    err = np.abs(target - mean)
    scale = sigma / gennorm.std(beta)  # GGD of shape beta with standard deviation sigma
    half = gennorm.ppf(0.5 + level / 2, beta) * scale
    return {
        "threshold": t,
        "percentile": 100 * keep.mean(),
        "flagged": flag.mean(),
        "error_share": err[flag].sum() / err.sum(),
        "mae_kept": err[keep].mean(),
        "coverage_kept": (err[keep] <= half[keep]).mean(),
        "device_caught": flag[device].sum() / device.sum(),
    }


def _check(readout_text, ref):
    got = parse_readout(readout_text.removeprefix("<code>").removesuffix("</code>"))
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=RTOL, abs=1e-9), key
    return got


@pytest.mark.parametrize("level", [0.5, 0.9, 0.99])
def test_interval_factor_matches_gennorm(level):
    beta = np.array([0.5, 1.0, 1.7, 2.0, 4.0])
    expected = gennorm.ppf(0.5 + level / 2, beta) / gennorm.std(beta)
    np.testing.assert_allclose(interval_factor(level, beta), expected, rtol=1e-6)
    assert interval_factor(level) == pytest.approx(norm.ppf(0.5 + level / 2))


def test_sparsification_matches_brute_force():
    rng = np.random.default_rng(1)
    s, e = rng.random(200), rng.random(200)
    f, model, oracle = sparsification(s, e, fractions=[0.0, 0.1, 0.5, 0.9])
    for frac, m, o in zip(f, model, oracle, strict=True):
        k = 200 - int(frac * 200)
        assert m == pytest.approx(e[np.argsort(s)[:k]].mean())
        assert o == pytest.approx(np.sort(e)[:k].mean())
    assert np.all(oracle <= model + 1e-12)  # the oracle is a lower bound


def test_slider_updates_mask_and_every_readout_number():
    res, target, mask = _result()
    ex = threshold_explorer(res, target=target, masks=mask)
    assert ex.kind.value == "total" and "recalibrated" not in ex.kind.options
    im_before = ex.im_flag
    for case in (0, 1):
        ex.case.value = case
        for kind in ("aleatoric", "epistemic", "total"):
            ex.kind.value = kind
            sigma = getattr(res, kind)[case, 0].numpy().astype(np.float64)
            for t in np.quantile(sigma, [0.2, 0.75, 0.95]):
                ex.slider.value = float(t)
                t_used = float(ex.slider.value)  # the slider rounds to its step
                np.testing.assert_array_equal(ex.mask, sigma > t_used)
                m = mask[case, 0].numpy()
                ref = _reference(
                    sigma,
                    t_used,
                    res.mean[case, 0].numpy().astype(np.float64),
                    target[case, 0].numpy().astype(np.float64),
                    res.beta[case, 0].numpy().astype(np.float64),
                    (m & (PACEMAKER | CABLE)) > 0,
                )
                got = _check(ex.readout.value, ref)
                assert got["kind"] == kind
                # the overlay is updated in place: same artist, alpha = flag * opacity
                assert ex.im_flag is im_before
                np.testing.assert_allclose(
                    ex.im_flag.get_array()[..., 3], (sigma > t_used) * ex.opacity.value
                )
                assert ex.vline.get_xdata()[0] == pytest.approx(ref["flagged"])


def test_percentile_mode_and_opacity():
    res, target, mask = _result(b=1)
    ex = threshold_explorer(res, target=target, masks=mask)
    ex.mode.value = "percentile"
    ex.slider.value = 80.0
    sigma = res.total[0, 0].numpy().astype(np.float64)
    t = np.percentile(sigma, 80.0)
    np.testing.assert_array_equal(ex.mask, sigma > t)
    got = parse_readout(ex.readout.value[6:-7])
    assert got["threshold"] == pytest.approx(t, rel=RTOL)
    assert got["flagged"] == pytest.approx(0.2, abs=1 / sigma.size)
    ex.opacity.value = 0.25
    assert ex.im_flag.get_array()[..., 3].max() == pytest.approx(0.25)
    ex.mode.value = "sigma"  # back to D units: the same flag (slider at the same percentile)
    assert ex.slider.description == "sigma >"
    assert parse_readout(ex.readout.value[6:-7])["flagged"] == pytest.approx(0.2, abs=0.01)


def test_recalibrated_kind_offered_when_present():
    res, target, mask = _result(b=1, recalibrated=True)
    ex = threshold_explorer(res, target=target, masks=mask)
    assert "recalibrated" in ex.kind.options
    ex.kind.value = "recalibrated"
    ex.slider.value = 0.03
    sigma = 1.3 * res.total[0, 0].numpy().astype(np.float64)
    np.testing.assert_array_equal(ex.mask, sigma.astype(np.float32) > float(ex.slider.value))


def test_without_target_and_masks_the_error_figures_are_absent():
    res, _, _ = _result(b=1)
    ex = threshold_explorer(res)
    ex.slider.value = 0.02
    got = parse_readout(ex.readout.value[6:-7])
    for key in ("error_share", "mae_kept", "coverage_kept", "device_caught"):
        assert got[key] is None
    sigma = res.total[0, 0].numpy()
    assert got["flagged"] == pytest.approx((sigma > ex.slider.value).mean(), rel=RTOL)


def test_cases_of_different_sizes_with_and_without_target():
    small, tgt, msk = _result(b=2, h=16, w=16)
    big, _, _ = _result(b=1, h=40, w=32, seed=3)
    ex = threshold_explorer(
        [small, big], target=[tgt, None], masks=[msk, None], names=["a", "b", "real"]
    )
    assert [o[0] for o in ex.case.options] == ["a", "b", "real"]
    ex.case.value = 2
    assert ex.mask.shape == (40, 32) and ex.im_mean.get_array().shape == (40, 32)
    assert parse_readout(ex.readout.value[6:-7])["mae_kept"] is None
    ex.case.value = 0
    assert parse_readout(ex.readout.value[6:-7])["mae_kept"] is not None


def test_threshold_stats_hand_case():
    sigma = np.array([[0.1, 0.2], [0.3, 0.4]])
    mean = np.zeros((2, 2))
    target = np.array([[0.1, -0.5], [0.2, 1.0]])
    s = threshold_stats(sigma, 0.25, mean=mean, target=target, device=sigma > 0.35)
    # flagged: 0.3, 0.4 -> errors 0.2 + 1.0 of 1.8 in all; kept errors 0.1, 0.5
    assert s.flagged == 0.5 and s.percentile == 50.0
    assert s.error_share == pytest.approx(1.2 / 1.8)
    assert s.mae_kept == pytest.approx(0.3)
    # Gaussian 90 % half-widths 1.645 * 0.1 = 0.16 (0.1 inside), 1.645 * 0.2 = 0.33 (0.5 out)
    assert s.coverage_kept == pytest.approx(0.5)
    assert s.device_caught == 1.0


def test_bad_shapes_are_reported():
    with pytest.raises(ValueError, match="differs from sigma"):
        threshold_stats(np.ones((3, 3)), 0.5, mean=np.ones((3, 3)), target=np.ones((2, 3)))
    with pytest.raises(ValueError, match="percentile=120"):
        threshold_at_percentile(np.ones((3, 3)), 120)
    with pytest.raises(ValueError, match="3 names for 2 cases"):
        threshold_explorer(_result(b=2)[0], names=["a", "b", "c"])


def test_summary_equals_the_readout_in_percentile_mode():
    res, target, mask = _result(b=2)
    ex = threshold_explorer(res, target=target, masks=mask, names=["a", "b"])
    table = ex.summary(percentile=85.0, kind="epistemic")
    assert ex.kind.value == "total" and ex.mode.value == "sigma"  # no control moved
    ex.kind.value, ex.mode.value = "epistemic", "percentile"
    for index, name in enumerate(["a", "b"]):
        ex.case.value = index
        ex.slider.value = 85.0
        shown = parse_readout(ex.readout.value[6:-7])
        for key, value in table[name].items():
            if isinstance(value, float):
                assert shown[key] == pytest.approx(value, rel=RTOL), key


# ---------------------------------------------------------------- the browser's copy of the slider
class _BrowserSlider:
    """The browser's copy of the threshold slider, as ipywidgets 8.1 (jupyterlab_widgets 3.0,
    FloatSliderView on noUiSlider) handles a kernel message, written from its JavaScript:

    * Backbone's ``model.set(state)`` stores every key of the message, then fires
      ``change:<key>`` for the changed keys in the message's key order;
    * ``change:max|min|step`` -> ``noUiSlider.updateOptions({start: model.value, range, step})``;
      ``change:value`` -> ``noUiSlider.set(model.value)`` on the slider's *current* range/step;
    * noUiSlider clamps to its range, snaps to its step and fires ``update``; with
      ``continuous_update`` the view then stores the slider's value in the model and, when it
      differs, sends it to the kernel (``touch``) as if the user had moved the handle.

    ``echo_update`` messages carry the browser's own last value back and are applied the same
    way (each browser message here gets its echo before the next one leaves)."""

    def __init__(self, state: dict) -> None:
        self.model = {k: state[k] for k in ("value", "min", "max", "step")}
        self.ui = dict(self.model)  # noUiSlider's own range, step and value
        self.outbox: list[dict] = []
        self._set_handle(self.model["value"])  # binding 'update' fires it once on render

    def _set_handle(self, v: float) -> None:
        lo, hi, step = self.ui["min"], self.ui["max"], self.ui["step"]
        v = min(max(v, lo), hi)
        self.ui["value"] = min(lo + round((v - lo) / step) * step, hi)
        if self.model["value"] != self.ui["value"]:  # the 'update' handler
            self.model["value"] = self.ui["value"]
            self.outbox.append({"value": self.ui["value"]})

    def receive(self, msg: dict) -> None:
        state = msg["state"]
        changed = [k for k in state if k in self.model and state[k] != self.model[k]]
        self.model.update({k: state[k] for k in changed})
        for key in changed:
            if key == "value":
                if self.ui["value"] != self.model["value"]:
                    self._set_handle(self.model["value"])
            else:
                self.ui.update({k: self.model[k] for k in ("min", "max", "step")})
                self._set_handle(self.model["value"])


class _KeyOrder(set):
    """A set that iterates with ``first`` first: stands in for the string-hash order of a kernel
    process (PYTHONHASHSEED), which decides the key order of a ``hold_sync`` message."""

    def __init__(self, first: str) -> None:
        super().__init__()
        self.first = first

    def __iter__(self):
        return iter(sorted(super().__iter__(), key=lambda k: (k != self.first, k)))


def _connect(ex, monkeypatch, first: str | None) -> tuple[_BrowserSlider, list[dict]]:
    sent: list[dict] = []
    monkeypatch.setattr(ex.slider, "_send", lambda msg, buffers=None: sent.append(msg))
    if first is not None:
        ex.slider._states_to_send = _KeyOrder(first)
        assert type(ex.slider._states_to_send) is _KeyOrder  # traitlets kept it
    return _BrowserSlider(ex.slider.get_state()), sent


def _pump(ex, browser: _BrowserSlider, sent: list[dict]) -> None:
    """Kernel -> browser messages, then the browser's answers back to the kernel's real
    ``set_state`` (echo, property lock, observers), until neither side has anything to send."""
    for _ in range(20):
        while sent:
            browser.receive(sent.pop(0))
        if not browser.outbox:
            return
        ex.slider.set_state(browser.outbox.pop(0))
    raise AssertionError("the kernel and the browser kept answering each other")


KEY_ORDERS = ["value", "max", "step", "description", None]  # None: this process's hash order
SIGMAS = ("aleatoric", "epistemic", "total")


def _explorer_in_browser(monkeypatch, first):
    res, target, mask = _result(b=1)
    ex = threshold_explorer(res, target=target, masks=mask)
    browser, sent = _connect(ex, monkeypatch, first)
    _pump(ex, browser, sent)  # the page renders the slider
    return ex, browser, sent, {k: getattr(res, k)[0, 0].numpy().astype(np.float64) for k in SIGMAS}


def _agree(ex, browser) -> dict:
    """The kernel's slider holds the browser's value; the readout as parsed."""
    assert browser.model["value"] == browser.ui["value"] == ex.slider.value
    return parse_readout(ex.readout.value[6:-7])


@pytest.mark.parametrize("first", KEY_ORDERS)
def test_mode_switch_reaches_the_browser_in_any_key_order(monkeypatch, first):
    """Sigma -> percentile -> sigma mode as a user clicks it, whatever order the kernel's
    batched slider message lists its keys in. The readout must describe the value the browser's
    slider shows. The old explorer failed when ``value`` came first: the browser clamped 90 to
    the sigma range [0, max sigma] and sent that back as the percentile (CI: percentile 2.40)."""
    ex, browser, sent, sigmas = _explorer_in_browser(monkeypatch, first)
    s = sigmas["total"]
    p = ex.stats.percentile
    ex.mode.set_state({"index": 1})
    _pump(ex, browser, sent)
    got = _agree(ex, browser)
    assert (browser.ui["min"], browser.ui["max"]) == (0.0, 100.0)
    assert browser.ui["value"] == pytest.approx(p, abs=0.05)
    assert got["threshold"] == pytest.approx(np.percentile(s, browser.ui["value"]), rel=RTOL)
    assert got["percentile"] == pytest.approx(browser.ui["value"], abs=100 / s.size + 0.05)

    flagged = got["flagged"]  # back to sigma mode: the same share flagged, in D units
    ex.mode.set_state({"index": 0})
    _pump(ex, browser, sent)
    got = _agree(ex, browser)
    assert browser.ui["max"] == pytest.approx(s.max())
    assert got["flagged"] == pytest.approx(np.mean(s > browser.ui["value"]), rel=RTOL)
    assert got["flagged"] == pytest.approx(flagged, abs=3 / s.size)


@pytest.mark.parametrize("first", KEY_ORDERS)
def test_kind_switch_reaches_the_browser_in_any_key_order(monkeypatch, first):
    """Sigma mode, epistemic -> total (a wider range): the slider moves to the kept percentile
    of the new sigma map. The old explorer, ``value`` first, left it clamped at the old max."""
    ex, browser, sent, sigmas = _explorer_in_browser(monkeypatch, first)
    ex.kind.set_state({"index": list(ex.kind.options).index("epistemic")})
    _pump(ex, browser, sent)
    _agree(ex, browser)
    p = ex.stats.percentile
    ex.kind.set_state({"index": list(ex.kind.options).index("total")})
    _pump(ex, browser, sent)
    got = _agree(ex, browser)
    s = sigmas["total"]
    assert np.percentile(s, p) > sigmas["epistemic"].max()  # beyond the old range
    assert browser.ui["value"] == pytest.approx(np.percentile(s, p), abs=s.max() / 1000)
    assert got["kind"] == "total"
    assert got["flagged"] == pytest.approx(np.mean(s > browser.ui["value"]), rel=RTOL)
