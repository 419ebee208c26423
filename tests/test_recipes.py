"""Training recipes: the shipped model's settings and the data set they name."""

from __future__ import annotations

import pytest

from darkfield_nb.data import validate_dataset
from darkfield_nb.models import ProgressiveGenerator, count_parameters
from darkfield_nb.train import TrainConfig, recipes, upgan_stages


def test_recipe_data_is_simulated_once_then_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(
        recipes, "PRETRAINED_DATA", {"patients": 4, "ood": 1, "size": 64, "seed": 3}
    )
    root = recipes.recipe_data(tmp_path, progress=False)
    assert root == tmp_path / "phantom256" and validate_dataset(root) == []
    stamp = (root / "manifest.csv").stat().st_mtime_ns
    assert recipes.recipe_data(tmp_path, progress=False) == root
    assert (root / "manifest.csv").stat().st_mtime_ns == stamp  # not regenerated


def test_baseline_matches_the_progressive_model_in_parameters_and_epochs():
    """The science comparison is only fair if the single-stage baseline has about the same
    number of parameters (within 3 %) and trains for the same total number of epochs."""
    three, one = recipes.pretrained(), recipes.single_stage_baseline()
    p3 = count_parameters(ProgressiveGenerator(three.model))
    p1 = count_parameters(ProgressiveGenerator(one.model))
    assert abs(p1 - p3) / p3 < 0.03
    total = sum(three.schedule(k).epochs for k in range(three.n_stages))
    assert one.n_stages == 1 and one.schedule(0).epochs == total
    assert one.crop_size == three.crop_size and one.discriminator == three.discriminator


def test_upgan_schedule_is_the_design_table_and_the_shipped_recipe_uses_it():
    """Stage weights as written in DESIGN section 5 / train.config's table: lr 2e-4, 1e-4,
    1e-4; L1 1 -> 0.5 -> 0.1; GGD 1e-4 -> 1e-3 -> 1e-2."""
    table = [(2e-4, 1.0, 1e-4), (1e-4, 0.5, 1e-3), (1e-4, 0.1, 1e-2)]
    defaults = TrainConfig().stages
    assert [(s.epochs, s.warmup_epochs, s.batch_size) for s in defaults] == [
        (50, 5, 8),
        (50, 5, 8),
        (150, 5, 8),
    ]
    shipped = recipes.pretrained().stages
    assert [(s.epochs, s.warmup_epochs, s.batch_size) for s in shipped] == [
        (12, 3, 8),
        (10, 2, 8),
        (10, 2, 8),
    ]
    for stages in (defaults, shipped, upgan_stages(4, warmup_epochs=1)):
        assert [(s.lr, s.l1_weight, s.ggd_weight) for s in stages] == table
        assert all((s.adv_weight, s.final_lr_factor) == (0.01, 0.1) for s in stages)
    with pytest.raises(ValueError, match="epochs=.* must be one number or 3"):
        upgan_stages((10, 10))
