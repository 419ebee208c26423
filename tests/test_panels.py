"""Panels show the arrays they are given, on the documented colour scales."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from darkfield_nb.panels import D_MAX, case_panel, show_pairs  # noqa: E402


def _images(fig):
    return [ax.images[0] for ax in fig.axes if ax.images]


def test_case_panel_shows_each_map_on_its_documented_scale():
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 16)), rng.random((16, 16)) * 0.5
    means = [torch.tensor(rng.random((1, 1, 16, 16)), dtype=torch.float32) for _ in range(3)]
    alea, epi = rng.random((16, 16)) * 0.05, rng.random((16, 16)) * 0.01
    fig = case_panel(x, means, alea, epi, target=y)
    images = _images(fig)
    assert len(images) == 7  # input, target, 3 stages, aleatoric, epistemic
    np.testing.assert_allclose(images[0].get_array(), x.astype(np.float32))
    np.testing.assert_allclose(images[3].get_array(), means[1][0, 0].numpy())
    assert images[1].get_clim() == (0.0, D_MAX)
    # each sigma map runs from 0 to its own 99th percentile
    assert images[5].get_clim()[1] == pytest.approx(np.percentile(alea.astype(np.float32), 99))
    assert images[6].get_clim()[1] == pytest.approx(np.percentile(epi.astype(np.float32), 99))
    labels = [ax.get_title() for ax in fig.axes[:7]]
    assert labels[2:5] == ["stage 1", "stage 2", "stage 3"]
    plt.close(fig)


def test_synthesis_panel_labels_the_synthesized_image():
    from darkfield_nb.panels import synthesis_panel
    from darkfield_nb.synthesis import Synthesis

    rng = np.random.default_rng(2)
    syn = Synthesis(*(rng.random((8, 8)).astype(np.float32) for _ in range(4)))
    fig = synthesis_panel(rng.random((8, 8)), syn, target=rng.random((8, 8)))
    assert [ax.get_title() for ax in fig.axes[:5]] == [
        "input",
        "target D",
        "synthesized D",
        "aleatoric sigma",
        "epistemic sigma",
    ]
    plt.close(fig)


def test_show_pairs_one_column_per_item():
    rng = np.random.default_rng(1)
    items = [
        {
            "id": f"c{i}",
            "input": rng.random((1, 8, 8)),
            "target": rng.random((1, 8, 8)),
            "mask": np.ones((1, 8, 8), np.int32),
        }
        for i in range(3)
    ]
    fig = show_pairs(items, mask_bit=1)
    assert len(_images(fig)) == 6
    assert [ax.get_title() for ax in fig.axes[:3]] == ["c0", "c1", "c2"]
    plt.close(fig)


def test_plot_history_marks_stage_starts():
    from darkfield_nb.panels import plot_history

    history = [
        {"stage": s, "train_l1": 1.0 / (i + 1), "val_l1": 0.5}
        for i, s in enumerate([0, 0, 1, 1, 1, 2])
    ]
    fig = plot_history(history, keys=("train_l1",))
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [1, 1 / 2, 1 / 3, 1 / 4, 1 / 5, 1 / 6])
    starts = sorted(line.get_xdata()[0] for line in ax.lines[1:])
    assert starts == [2.5, 5.5]  # stage 1 starts at epoch 3, stage 2 at epoch 6
    plt.close(fig)
