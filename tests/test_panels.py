"""Panels show the arrays they are given, on the documented colour scales."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from pathlib import Path  # noqa: E402

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


def test_attention_figure_shows_the_given_maps_with_stage_labels():
    from darkfield_nb.panels import attention_figure

    rng = np.random.default_rng(3)
    x, mu = rng.random((12, 12)), torch.tensor(rng.random((1, 1, 12, 12)), dtype=torch.float32)
    gate = torch.tensor(rng.random((1, 1, 12, 12)) * 2, dtype=torch.float32)
    fig = attention_figure(x, mu, gate, stage=2)
    images = _images(fig)
    assert [ax.get_title() for ax in fig.axes[:3]] == [
        "input",
        "stage 2 mean",
        "stage 2 normalized sigma",
    ]
    np.testing.assert_allclose(images[1].get_array(), mu[0, 0].numpy())
    np.testing.assert_allclose(images[2].get_array(), gate[0, 0].numpy())
    assert [im.get_cmap().name for im in images] == ["gray", "magma", "viridis"]
    plt.close(fig)


def test_first_of_each_case_hand_computed():
    from darkfield_nb.panels import first_of_each_case

    rows = [
        {"split": "test", "case": "healthy"},
        {"split": "test", "case": "effusion"},
        {"split": "ood", "case": "healthy"},
        {"split": "test", "case": "healthy"},
        {"split": "ood", "case": "pacemaker"},
    ]
    assert first_of_each_case(rows) == [0, 1, 4]
    assert first_of_each_case(rows, limit=2) == [0, 1]
    assert first_of_each_case(rows, by_split=True) == [0, 1, 2, 4]
    no_case = [{"split": "test"}, {"split": "ood"}, {"split": "test"}]
    assert first_of_each_case(no_case) == [0, 1]  # without a case column: one per split


def _tiny_model(n_stages=2):
    from darkfield_nb.models import GeneratorConfig, ProgressiveGenerator

    torch.manual_seed(0)
    cfg = GeneratorConfig(n_stages=n_stages, base_width=4, depth=2, dropout=0.2, norm="batch")
    return ProgressiveGenerator(cfg).eval()


def test_stage_digest_is_sha256_of_sorted_state_and_sees_buffers():
    import hashlib

    from darkfield_nb.stage_report import stage_digest

    stage = _tiny_model().stages[0]
    h = hashlib.sha256()
    for name in sorted(stage.state_dict()):
        h.update(name.encode())
        h.update(stage.state_dict()[name].numpy().tobytes())
    assert stage_digest(stage) == h.hexdigest()[:16]
    bn = next(m for m in stage.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_mean += 1e-3  # a drifting BatchNorm statistic changes the digest
    assert stage_digest(stage) != h.hexdigest()[:16]


def test_check_frozen_passes_for_an_unchanged_stage_and_names_a_moved_one(tmp_path):
    from darkfield_nb import checkpoint
    from darkfield_nb.stage_report import check_frozen

    model = _tiny_model()
    checkpoint.save(tmp_path / "stage0.pt", model, stage=0, epoch=1, stages_trained=1)
    before, after = check_frozen(model, tmp_path, stage=1)
    assert before == after
    with torch.no_grad():
        next(model.stages[0].parameters()).add_(0.01)
    with pytest.raises(RuntimeError, match="stage0.pt: the frozen stage 1 moved"):
        check_frozen(model, tmp_path, stage=1)


def test_stage_figures_hand_computed():
    from darkfield_nb.stage_report import stage_figures

    history = [
        {"stage": 0, "val_mse": 0.5},
        {"stage": 1, "val_mse": 0.3, "val_ssim": 0.2},
        {"stage": 1, "val_mse": 0.2, "val_ssim": 0.4, "train_l1": 9.0},
    ]
    assert stage_figures(history, 1) == {"val_mse": 0.2, "val_ssim": 0.4, "stage": 2, "epochs": 2}


def test_validation_case_shows_every_stage_of_the_first_val_image():
    from darkfield_nb.data import PairedDataset
    from darkfield_nb.stage_report import validation_case

    data = Path(__file__).resolve().parents[1] / "data_samples"
    model = _tiny_model()
    fig, outs, item = validation_case(model, data, stage=1, samples=2, device="auto")
    first = PairedDataset(data, split="val", pad_multiple=1, check=False)[0]
    assert item["id"] == first["id"] and len(outs) == 2
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:4] == ["input", "target D", "stage 1", "stage 2"]
    np.testing.assert_allclose(_images(fig)[3].get_array(), outs[1].mu[0, 0].numpy())
    assert fig._suptitle.get_text() == f"validation case {first['id']}"
    plt.close(fig)
