"""Checkpoints: round trips, fp16 storage, refusal of foreign files, weights-only loading.

References: the saved module itself (bitwise equality of every parameter and buffer), the
fp16 rounding bound (relative error <= 2**-11 for normal numbers), and files written by plain
``torch.save``/``pickle`` that are not checkpoints.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from darkfield_nb import checkpoint
from darkfield_nb.models import (
    DiscriminatorConfig,
    GeneratorConfig,
    PatchDiscriminator,
    ProgressiveGenerator,
)


def _tiny_model(seed: int = 0, **kw) -> ProgressiveGenerator:
    torch.manual_seed(seed)
    cfg = GeneratorConfig(n_stages=2, base_width=4, depth=2, norm="batch", **kw)
    model = ProgressiveGenerator(cfg)
    # move the BatchNorm running statistics away from their initial values
    model.train()
    with torch.no_grad():
        model(torch.randn(3, 1, 32, 32))
    return model


def _assert_state_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


class _Arbitrary:
    """A class that weights-only loading must refuse to unpickle."""

    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_round_trip_weights_config_and_training_state(tmp_path):
    model = _tiny_model(attention_max=5.0, conditioning="attention")
    disc = PatchDiscriminator(DiscriminatorConfig(width=4, n_layers=2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.999))
    model(torch.randn(2, 1, 32, 32))[-1].mu.mean().backward()
    opt.step()
    history = [{"stage": 0, "epoch": 1, "train_loss": 0.5}]
    path = checkpoint.save(
        tmp_path / "sub" / "c.pt",
        model,
        stage=1,
        epoch=3,
        stages_trained=1,
        optimizer=opt,
        discriminator=disc,
        history=history,
        train_config={"seed": 7},
    )
    assert path.exists()
    assert not [p for p in path.parent.iterdir() if p.name != "c.pt"]  # no temp file left

    loaded = checkpoint.load(path)
    assert isinstance(loaded, ProgressiveGenerator)
    assert loaded.config == model.config
    assert not loaded.training
    _assert_state_equal(model, loaded)

    raw = checkpoint.load_checkpoint(path)
    assert raw["format"] == checkpoint.FORMAT
    assert raw["format_version"] == checkpoint.FORMAT_VERSION
    assert (raw["stage"], raw["epoch"], raw["stages_trained"]) == (1, 3, 1)
    assert raw["history"] == history
    assert raw["train_config"] == {"seed": 7}
    assert raw["generator_config"] == model.config.to_dict()
    assert raw["discriminator_config"] == disc.config.to_dict()
    opt2 = torch.optim.Adam(loaded.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt2.load_state_dict(raw["optimizer"])
    for s1, s2 in zip(opt.state.values(), opt2.state.values(), strict=True):
        assert torch.equal(s1["exp_avg"], s2["exp_avg"])
        assert torch.equal(s1["exp_avg_sq"], s2["exp_avg_sq"])


def test_half_stores_fp16_and_loads_float32_close(tmp_path):
    model = _tiny_model()
    full = checkpoint.save(tmp_path / "full.pt", model, stage=1, epoch=1)
    half = checkpoint.save(tmp_path / "half.pt", model, stage=1, epoch=1, half=True, rng=False)
    raw = checkpoint.load_checkpoint(half)
    assert raw["generator_dtype"] == "float16"
    floats = [v for v in raw["generator"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    # integer buffers (BatchNorm's num_batches_tracked) keep their dtype
    assert raw["generator"]["stages.0.down.0.1.num_batches_tracked"].dtype == torch.int64
    assert half.stat().st_size < 0.7 * full.stat().st_size

    loaded = checkpoint.load(half)
    ref = model.state_dict()
    for k, v in loaded.state_dict().items():
        assert v.dtype == ref[k].dtype, k
        if v.is_floating_point():
            # fp16 round-to-nearest: relative error <= 2**-11 for normal numbers, plus the
            # subnormal spacing 2**-24 near zero
            bound = ref[k].abs() * 2.0**-11 + 2.0**-24
            assert bool(((v - ref[k]).abs() <= bound).all()), k
        else:
            assert torch.equal(v, ref[k])


def test_rng_states_restore_exactly(tmp_path):
    model = _tiny_model()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = checkpoint.save(tmp_path / "r.pt", model, stage=0, epoch=0)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    checkpoint.set_rng_state(checkpoint.load_checkpoint(path)["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1]
    assert torch.equal(got[2], expected[2])


def test_unwraps_ddp_like_wrappers(tmp_path):
    model = _tiny_model()

    class Wrapper(torch.nn.Module):  # the shape of DistributedDataParallel: .module
        def __init__(self, m):
            super().__init__()
            self.module = m

    path = checkpoint.save(tmp_path / "w.pt", Wrapper(model), stage=0, epoch=1)
    _assert_state_equal(model, checkpoint.load(path))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt: checkpoint file not found"):
        checkpoint.load(tmp_path / "nope.pt")
    with pytest.raises(checkpoint.CheckpointError, match="is a directory"):
        checkpoint.load(tmp_path)


def test_refuses_files_that_are_not_torch_files(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello, I am not a checkpoint\n")
    with pytest.raises(checkpoint.CheckpointError, match=r"notes\.pt: not a PyTorch checkpoint"):
        checkpoint.load(text)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(checkpoint.CheckpointError, match=r"empty\.pt: not a PyTorch"):
        checkpoint.load_checkpoint(empty)


def test_refuses_plain_torch_dict_and_state_dict(tmp_path):
    model = _tiny_model()
    sd = tmp_path / "state_dict.pt"
    torch.save(model.state_dict(), sd)
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load(sd)
    msg = str(err.value)
    assert "state_dict.pt" in msg and "not a darkfield-nb checkpoint" in msg
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else", "weights": torch.zeros(2)}, other)
    with pytest.raises(checkpoint.CheckpointError, match="not a darkfield-nb checkpoint"):
        checkpoint.load_checkpoint(other)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(checkpoint.CheckpointError, match="holds a Tensor"):
        checkpoint.load_checkpoint(tensor)


def test_refuses_newer_format_and_incomplete_checkpoint(tmp_path):
    model = _tiny_model()
    path = checkpoint.save(tmp_path / "c.pt", model, stage=0, epoch=1)
    raw = torch.load(path, weights_only=True)
    raw["format_version"] = checkpoint.FORMAT_VERSION + 1
    torch.save(raw, tmp_path / "newer.pt")
    with pytest.raises(checkpoint.CheckpointError, match=r"newer\.pt: checkpoint format version"):
        checkpoint.load(tmp_path / "newer.pt")
    raw["format_version"] = checkpoint.FORMAT_VERSION
    del raw["generator"]
    torch.save(raw, tmp_path / "partial.pt")
    with pytest.raises(checkpoint.CheckpointError, match=r"partial\.pt: .*missing .*generator"):
        checkpoint.load(tmp_path / "partial.pt")


def test_weights_only_refuses_arbitrary_pickled_objects(tmp_path, capsys):
    """A file with the right marker but a pickled callable must not be unpickled: with
    ``weights_only=False`` loading it would call ``print`` (arbitrary code)."""
    model = _tiny_model()
    path = checkpoint.save(tmp_path / "c.pt", model, stage=0, epoch=1)
    raw = torch.load(path, weights_only=True)
    raw["history"] = [_Arbitrary()]
    evil = tmp_path / "evil.pt"
    torch.save(raw, evil)
    with pytest.raises(checkpoint.CheckpointError, match=r"evil\.pt: refusing to load"):
        checkpoint.load(evil)
    assert "arbitrary code ran" not in capsys.readouterr().out
    # the unsafe loader would indeed have run it: the test above can fail
    torch.load(evil, weights_only=False)
    assert "arbitrary code ran" in capsys.readouterr().out


def test_state_dict_not_matching_config_is_reported(tmp_path):
    model = _tiny_model()
    path = checkpoint.save(tmp_path / "c.pt", model, stage=0, epoch=1)
    raw = torch.load(path, weights_only=True)
    raw["generator_config"]["base_width"] = 8
    torch.save(raw, tmp_path / "mismatch.pt")
    with pytest.raises(checkpoint.CheckpointError, match=r"mismatch\.pt: cannot rebuild"):
        checkpoint.load(tmp_path / "mismatch.pt")


def _adam_after_one_step(module: torch.nn.Module, *inputs: torch.Tensor) -> torch.optim.Adam:
    opt = torch.optim.Adam(module.parameters(), lr=1e-3, betas=(0.5, 0.999))
    out = module(*inputs)
    (out[-1].mu if isinstance(out, list) else out).mean().backward()
    opt.step()
    return opt


def _assert_optimizer_equal(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys() and sa["state"]
    for k, entry in sa["state"].items():
        for name, value in entry.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb["state"][k][name]))


@pytest.mark.parametrize("stage_done", [False, True])
def test_training_state_round_trip_restores_every_object_and_the_rng(tmp_path, stage_done):
    """save_training_state then restore_training_state into fresh objects: weights, both
    optimizers and the RNG streams equal the saved ones; stages_trained counts the stage
    only once it is done."""
    model = _tiny_model(seed=0)
    torch.manual_seed(1)
    disc = PatchDiscriminator(DiscriminatorConfig(width=4, n_layers=2))
    opt_g = _adam_after_one_step(model, torch.randn(2, 1, 32, 32))
    opt_d = _adam_after_one_step(disc, torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32))
    torch.manual_seed(5)
    path = checkpoint.save_training_state(
        tmp_path / "last.pt",
        model,
        stage=1,
        epoch=4,
        stage_done=stage_done,
        optimizer=opt_g,
        discriminator=disc,
        disc_optimizer=opt_d,
        history=[{"stage": 1, "epoch": 4}],
        train_config={"seed": 0},
    )
    expected_draw = torch.rand(4)
    raw = checkpoint.load_checkpoint(path)
    assert raw["stages_trained"] == (2 if stage_done else 1)

    model2 = _tiny_model(seed=9)
    torch.manual_seed(10)
    disc2 = PatchDiscriminator(DiscriminatorConfig(width=4, n_layers=2))
    opt_g2 = torch.optim.Adam(model2.parameters(), lr=5e-2, betas=(0.5, 0.999))
    opt_d2 = torch.optim.Adam(disc2.parameters(), lr=5e-2, betas=(0.5, 0.999))
    torch.manual_seed(99)
    epoch = checkpoint.restore_training_state(
        raw, model2, discriminator=disc2, optimizer=opt_g2, disc_optimizer=opt_d2
    )
    assert epoch == 4
    _assert_state_equal(model, model2)
    _assert_state_equal(disc, disc2)
    _assert_optimizer_equal(opt_g, opt_g2)
    _assert_optimizer_equal(opt_d, opt_d2)
    assert torch.equal(torch.rand(4), expected_draw)


def test_save_trained_holds_weights_only_and_float32_state_undoes_half(tmp_path):
    model = _tiny_model()
    path = checkpoint.save_trained(
        tmp_path / "stage1.pt", model, stage=1, epoch=7, history=[{"epoch": 7}]
    )
    raw = checkpoint.load_checkpoint(path)
    assert (raw["stage"], raw["epoch"], raw["stages_trained"]) == (1, 7, 2)
    assert all(raw[k] is None for k in ("rng", "optimizer", "discriminator", "disc_optimizer"))
    assert raw["history"] == [{"epoch": 7}]

    half = checkpoint.load_checkpoint(
        checkpoint.save(tmp_path / "h.pt", model, stage=1, epoch=7, half=True, rng=False)
    )["generator"]
    full = checkpoint.float32_state(half)
    assert full.keys() == half.keys()
    ints = [k for k, v in half.items() if not v.is_floating_point()]
    assert ints and all(full[k].dtype == half[k].dtype for k in ints)  # BatchNorm counters kept
    for k, v in half.items():
        if v.is_floating_point():
            # float16 -> float32 is exact: casting back gives the stored bits
            assert full[k].dtype == torch.float32 and torch.equal(full[k].half(), v), k


def test_contents_checked_against_a_model_built_from_the_config(tmp_path):
    """check_contents counts missing / unexpected / wrongly shaped tensors against the state
    dict of a generator built from the stored config (the reference), and non-finite weights
    exactly."""
    model = _tiny_model()
    path = checkpoint.save(tmp_path / "c.pt", model, stage=1, epoch=1)
    raw = torch.load(path, weights_only=True)
    assert checkpoint.check_contents(raw) is None
    reference = ProgressiveGenerator(GeneratorConfig.from_stored_dict(raw["generator_config"]))
    stage1 = [k for k in reference.state_dict() if k.startswith("stages.1.")]
    cut = {**raw, "generator": {k: v for k, v in raw["generator"].items() if k not in stage1}}
    assert f"{len(stage1)} missing (first: {stage1[0]})" in checkpoint.check_contents(cut)
    assert "no weights for stage(s) 1" in checkpoint.check_contents(cut)
    extra = {**raw, "generator": {**raw["generator"], "spare.weight": torch.zeros(2)}}
    assert "1 unexpected (first: spare.weight)" in checkpoint.check_contents(extra)
    key = next(k for k, v in raw["generator"].items() if v.is_floating_point() and v.numel() > 3)
    poisoned = raw["generator"][key].clone()
    poisoned.view(-1)[:3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    bad = {**raw, "generator": {**raw["generator"], key: poisoned}}
    assert f"3 non-finite value(s) (NaN/Inf) in 1 tensor(s) (first: {key})" in (
        checkpoint.check_contents(bad)
    )
    torch.save(bad, tmp_path / "nan.pt")
    with pytest.raises(checkpoint.CheckpointError, match=r"nan\.pt: the generator weights hold 3"):
        checkpoint.load_checkpoint(tmp_path / "nan.pt")
    # a dict that did not come from load_checkpoint is checked by generator_from_checkpoint
    with pytest.raises(checkpoint.CheckpointError, match=r"^mine\.pt: the generator weights"):
        checkpoint.generator_from_checkpoint(bad, source="mine.pt")


def test_shipped_model_passes_the_checks():
    from darkfield_nb.paths import pretrained_checkpoint

    raw = checkpoint.load_checkpoint(pretrained_checkpoint())
    assert checkpoint.check_contents(raw) is None and raw["stages_trained"] == 3


def test_failed_torch_save_is_a_write_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    """torch's zip writer reports a full disk as RuntimeError('PytorchStreamWriter failed
    ...'): save turns it into WriteError naming the file; the old checkpoint stays whole."""
    from darkfield_nb.io import WriteError

    model = _tiny_model()
    path = checkpoint.save(tmp_path / "c.pt", model, stage=0, epoch=1)
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail] PytorchStreamWriter failed writing file data/3")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(WriteError, match=r"c\.pt: cannot write the checkpoint"):
        checkpoint.save(path, model, stage=0, epoch=2)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["c.pt"]

    def bug(*args, **kwargs):
        raise RuntimeError("some other failure")

    monkeypatch.setattr(torch, "save", bug)
    with pytest.raises(RuntimeError, match="some other failure") as info:
        checkpoint.save(path, model, stage=0, epoch=2)
    assert not isinstance(info.value, WriteError)
