"""An interactive threshold explorer for uncertainty maps (ipywidgets 8 + ipympl).

``threshold_explorer(result, target=None, masks=None)`` shows, for one case at a time,

* the synthesized dark-field image with the flagged pixels (sigma > threshold) in red,
* the chosen sigma map (aleatoric, epistemic, total, or recalibrated when the result has one),
* a sparsification plot (MAE of the kept pixels against the fraction removed, with the oracle)
  with the current flagged fraction marked; without a target, the sorted sigma values instead,

and a live readout (:mod:`darkfield_nb.widgets.readout`). Moving a control updates the artists
in place (``set_data``, ``set_xdata``) and asks the canvas for one redraw. In a notebook run with
``%matplotlib widget`` the figure is the ipympl canvas widget; under another backend (papermill,
tests) the figure is shown as a static image in an ``Output`` widget and re-rendered on change.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass

import ipywidgets as w
import matplotlib.pyplot as plt
import numpy as np
from IPython import get_ipython
from IPython.display import display

from darkfield_nb.labels import DEVICE_BITS

from .readout import (
    ThresholdStats,
    format_readout,
    sparsification,
    threshold_at_percentile,
    threshold_stats,
)

KINDS = ("aleatoric", "epistemic", "total", "recalibrated")
MODES = ("sigma", "percentile")
FLAG_RGB = (1.0, 0.1, 0.1)


def _np(a) -> np.ndarray | None:
    if a is None:
        return None
    if hasattr(a, "detach"):
        a = a.detach().float().cpu().numpy()
    return np.asarray(a)


def _images(a, n: int | None = None) -> list[np.ndarray]:
    """(B, 1, H, W) / (B, H, W) / (H, W) array-like -> list of (H, W) float arrays."""
    arr = _np(a)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 4:
        arr = arr[:, 0]
    if arr.ndim != 3 or (n is not None and arr.shape[0] != n):
        raise ValueError(f"threshold_explorer: a map of shape {arr.shape}; expected {n} images")
    return list(arr)


@dataclass
class Case:
    """One image of the explorer: predicted mean, sigma maps by kind, GGD shape, target, mask."""

    name: str
    mean: np.ndarray
    sigmas: dict[str, np.ndarray]
    beta: np.ndarray | None = None
    target: np.ndarray | None = None
    mask: np.ndarray | None = None


def _field(result, name: str):
    return result.get(name) if isinstance(result, dict) else getattr(result, name, None)


def make_cases(result, target=None, masks=None, names=None) -> list[Case]:
    """Cases from one MC-dropout result (maps (B, 1, H, W)) or a list of them (one image or
    batch each, sizes may differ); ``target``/``masks`` match (a list may hold None)."""
    results = list(result) if isinstance(result, (list, tuple)) else [result]
    per = len(results) > 1 or isinstance(result, (list, tuple))
    tgts = list(target) if per and isinstance(target, (list, tuple)) else [target] * len(results)
    msks = list(masks) if per and isinstance(masks, (list, tuple)) else [masks] * len(results)
    if len(tgts) != len(results) or len(msks) != len(results):
        raise ValueError("threshold_explorer: give one target and one mask (or None) per result")
    cases: list[Case] = []
    for res, tgt, msk in zip(results, tgts, msks, strict=True):
        means = _images(_field(res, "mean"))
        n = len(means)
        sig = {k: _images(_field(res, k), n) for k in KINDS if _field(res, k) is not None}
        if not sig:
            raise ValueError("threshold_explorer: the result holds no sigma map")
        beta = _images(_field(res, "beta"), n) if _field(res, "beta") is not None else [None] * n
        tg = _images(tgt, n) if tgt is not None else [None] * n
        mk = _images(msk, n) if msk is not None else [None] * n
        for i in range(n):
            cases.append(
                Case(
                    name=f"case {len(cases)}",
                    mean=means[i],
                    sigmas={k: v[i] for k, v in sig.items()},
                    beta=beta[i],
                    target=tg[i],
                    mask=None if mk[i] is None else mk[i].astype(np.int64),
                )
            )
    if names is not None:
        if len(names) != len(cases):
            raise ValueError(f"threshold_explorer: {len(names)} names for {len(cases)} cases")
        for c, nm in zip(cases, names, strict=True):
            c.name = str(nm)
    return cases


class ValueLastSlider(w.FloatSlider):
    """A ``FloatSlider`` whose batched updates reach the browser with ``value`` as the last key.

    ``hold_sync`` sends the changed traits in one message, listed in the iteration order of a
    Python set of their names: an order fixed by the kernel process's string-hash seed
    (``PYTHONHASHSEED``), so it differs from one kernel to the next. The browser's slider
    (ipywidgets 8 ``FloatSliderView`` on noUiSlider) handles the keys in message order: a new
    ``value`` handled before the new ``max``/``min``/``step`` is clamped and snapped to the *old*
    range, and with ``continuous_update`` the browser sends that value back to the kernel as if
    the user had moved the handle (percentile mode then opened near 0: handle at 2.4,
    readout at percentile 2.40, instead of 90).
    With ``value`` last, the browser sets the new range first, then the value inside it."""

    def send_state(self, key: str | Iterable[str] | None = None) -> None:
        if key is not None and not isinstance(key, str):
            key = sorted(key, key=lambda k: (k == "value", k))
        super().send_state(key)


class ThresholdExplorer:
    """The widget tree and its state; build it with :func:`threshold_explorer`.

    Controls: ``.case`` (Dropdown), ``.kind`` (ToggleButtons), ``.mode`` ("sigma": the slider is
    the threshold in D; "percentile": the slider is the percentile of the sigma map),
    ``.slider``, ``.opacity``. Outputs: ``.readout`` (HTML, class ``dfnb-readout``), ``.stats``
    (the current :class:`ThresholdStats`), ``.mask`` (the current boolean flag map), ``.fig``.
    """

    def __init__(self, cases: list[Case], level: float = 0.9) -> None:
        self.cases, self.level = cases, level
        self._busy = False
        kinds = [k for k in KINDS if all(k in c.sigmas for c in cases)]
        self.case = w.Dropdown(
            options=[(c.name, i) for i, c in enumerate(cases)], value=0, description="case"
        )
        self.kind = w.ToggleButtons(
            options=kinds, value="total" if "total" in kinds else kinds[0], description="sigma"
        )
        self.mode = w.ToggleButtons(options=list(MODES), value="sigma", description="threshold")
        self.slider = ValueLastSlider(
            description="sigma >",
            readout_format=".4f",
            continuous_update=True,
            layout=w.Layout(width="480px"),
        )
        self.opacity = w.FloatSlider(value=0.6, min=0.0, max=1.0, step=0.05, description="opacity")
        self.readout = w.HTML()
        self.readout.add_class("dfnb-readout")
        self._build_figure()
        self._set_slider_range(percentile=90.0)
        for control in (self.case, self.kind):
            control.observe(self._on_case_or_kind, names="value")
        self.mode.observe(self._on_mode, names="value")
        self.slider.observe(self._on_threshold, names="value")
        self.opacity.observe(self._on_threshold, names="value")
        self._show_case()
        controls = w.VBox([self.case, self.kind, self.mode, self.slider, self.opacity])
        self.widget = w.VBox([controls, self.readout, self._figure_widget])

    # ------------------------------------------------------------------ state
    @property
    def current(self) -> Case:
        return self.cases[self.case.value]

    @property
    def sigma(self) -> np.ndarray:
        return self.current.sigmas[self.kind.value]

    @property
    def threshold(self) -> float:
        """The threshold in D units for the slider's value in the current mode."""
        if self.mode.value == "percentile":
            return threshold_at_percentile(self.sigma, self.slider.value)
        return float(self.slider.value)

    def compute(self) -> ThresholdStats:
        """The readout of the current case, kind and threshold."""
        return self._stats(self.current, self.kind.value, self.threshold)

    def _stats(self, c: Case, kind: str, threshold: float) -> ThresholdStats:
        device = None if c.mask is None else (c.mask & DEVICE_BITS) > 0
        return threshold_stats(
            c.sigmas[kind],
            threshold,
            mean=c.mean,
            target=c.target,
            beta=c.beta,
            device=device,
            level=self.level,
            kind=kind,
        )

    def summary(self, percentile: float = 90.0, kind: str = "total") -> dict[str, dict]:
        """Case name -> readout (dict) with the ``kind`` sigma thresholded at its own
        ``percentile``: the numbers the explorer would show in percentile mode, computed
        without moving any control."""
        out = {}
        for c in self.cases:
            t = threshold_at_percentile(c.sigmas[kind], percentile)
            out[c.name] = self._stats(c, kind, t).as_dict()
        return out

    # ------------------------------------------------------------------ figure
    def _build_figure(self) -> None:
        with plt.ioff():
            self.fig, (a0, a1, a2) = plt.subplots(1, 3, figsize=(9.4, 3.3), layout="constrained")
        c = self.current
        self.ax_image, self.ax_sigma, self.ax_sparse = a0, a1, a2
        self.im_mean = a0.imshow(c.mean, cmap="gray")
        self.im_flag = a0.imshow(np.zeros((*c.mean.shape, 4)), interpolation="nearest")
        self.im_sigma = a1.imshow(self.sigma, cmap="magma")
        self.fig.colorbar(self.im_sigma, ax=a1, fraction=0.046, label="sigma (D)")
        for ax in (a0, a1):
            ax.set_axis_off()
        (self.line_model,) = a2.plot([], [], color="C0", label="by sigma")
        (self.line_oracle,) = a2.plot([], [], color="0.5", ls="--", label="oracle")
        self.vline = a2.axvline(0.0, color="C3", lw=1.2)
        a2.legend(loc="upper right", fontsize=8)
        canvas = self.fig.canvas
        if isinstance(canvas, w.DOMWidget):  # ipympl: the canvas is a widget
            canvas.header_visible = False
            self._figure_widget, self._static = canvas, False
        else:  # any other backend: a static image re-rendered on change
            self._figure_widget, self._static = w.Output(), True

    def _redraw(self) -> None:
        if self._static:
            if get_ipython() is None:  # plain Python (tests): nothing to show the image in
                return
            self._figure_widget.clear_output(wait=True)
            with self._figure_widget:
                display(self.fig)
        else:
            self.fig.canvas.draw_idle()

    def _show_case(self) -> None:
        """New case or kind: images, colour scale and sparsification curves, then the flag."""
        c, s = self.current, self.sigma
        h, wd = c.mean.shape
        extent = (-0.5, wd - 0.5, h - 0.5, -0.5)
        for im in (self.im_mean, self.im_flag, self.im_sigma):
            im.set_extent(extent)
        self.im_mean.set_data(c.mean)
        self.im_mean.set_clim(*np.percentile(c.mean, [1, 99]))
        self.im_sigma.set_data(s)
        self.im_sigma.set_clim(0.0, float(np.percentile(s, 99.5)) or 1e-12)
        self.ax_image.set_title("dark-field, flagged in red", fontsize=9)
        self.ax_sigma.set_title(f"{self.kind.value} sigma", fontsize=9)
        ax = self.ax_sparse
        if c.target is not None:
            f, model, oracle = sparsification(s, np.abs(c.target - c.mean))
            self.line_model.set_data(f, model)
            self.line_oracle.set_data(f, oracle)
            ax.set_xlabel("fraction removed (most uncertain first)")
            ax.set_ylabel("MAE of the rest (D)")
            ax.set_title("sparsification", fontsize=9)
            top = max(float(model.max()), float(oracle.max()))
        else:
            q = np.linspace(0.0, 1.0, 101)
            vals = np.quantile(s, 1.0 - q)
            self.line_model.set_data(q, vals)
            self.line_oracle.set_data([], [])
            ax.set_xlabel("fraction of pixels above")
            ax.set_ylabel("sigma (D)")
            ax.set_title("no target: sigma by rank", fontsize=9)
            top = float(vals.max())
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, top * 1.05 or 1.0)
        self._update()

    def _update(self) -> None:
        """New threshold or opacity: the flag overlay, the marker, the readout; one redraw."""
        self.stats = self.compute()
        self.mask = self.sigma > self.stats.threshold
        rgba = np.zeros((*self.mask.shape, 4))
        rgba[..., :3] = FLAG_RGB
        rgba[..., 3] = self.mask * self.opacity.value
        self.im_flag.set_data(rgba)
        self.vline.set_xdata([self.stats.flagged, self.stats.flagged])
        self.readout.value = f"<code>{html.escape(format_readout(self.stats))}</code>"
        self._redraw()

    # ------------------------------------------------------------------ callbacks
    def _set_slider_range(self, percentile: float) -> None:
        """Slider bounds for the current mode and sigma map, value at ``percentile``.

        The changes go to the browser in one message (``hold_sync``), the range before the
        value (:class:`ValueLastSlider`): sent one by one, or with the value first, the
        browser's slider clamps the new value to the old range and sends that back. The value
        is put on the slider's step grid, ``min + step * round((v - min) / step)``, where the
        browser would snap it (and send the snapped value back)."""
        self._busy = True
        try:
            with self.slider.hold_sync():
                if self.mode.value == "percentile":
                    self.slider.description = "percentile"
                    self.slider.max = 100.0  # widen first so that min <= value <= max holds
                    self.slider.min, self.slider.step = 0.0, 0.1
                    self.slider.readout_format = ".1f"
                    self.slider.value = round(percentile, 1)
                else:
                    top = float(self.sigma.max()) or 1e-12
                    step = top / 1000
                    t = threshold_at_percentile(self.sigma, percentile)
                    self.slider.description = "sigma >"
                    self.slider.max = max(top, self.slider.value)
                    self.slider.min, self.slider.step = 0.0, step
                    self.slider.readout_format = ".4g"
                    self.slider.value = min(round(t / step) * step, top)
                    self.slider.max = top
        finally:
            self._busy = False

    def _on_case_or_kind(self, _change) -> None:
        self._set_slider_range(self.stats.percentile)
        self._show_case()

    def _on_mode(self, _change) -> None:
        self._set_slider_range(self.stats.percentile)
        self._update()

    def _on_threshold(self, _change) -> None:
        if not self._busy:
            self._update()

    def _ipython_display_(self) -> None:
        display(self.widget)


def threshold_explorer(result, target=None, masks=None, *, names=None, level: float = 0.9):
    """Open the explorer for ``result`` (an ``MCDropoutResult`` or a list of them).

    ``target``: true dark-field maps (same shapes), or None (real radiographs: the readout then
    has no error figures); ``masks``: label masks (``darkfield_nb.labels`` bit flags) for the
    device figure; ``names``: one label per case; ``level``: the central interval of the
    coverage figure. A result with a ``recalibrated`` sigma map offers it as a fourth kind.
    Returns a :class:`ThresholdExplorer` (display it, or read its widgets in tests).
    """
    return ThresholdExplorer(make_cases(result, target, masks, names), level=level)
