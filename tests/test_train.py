"""Training: loss goes down, frozen stages do not move, NaN guard, exact resume, history files,
two-process DDP.

References: the model's own L1 on the training images before training (a closed quantity the
run must lower), bitwise snapshots of the frozen stage's parameters and buffers, an
uninterrupted run with the same seed (bitwise equal final weights after kill + resume), the
returned history (the CSV/JSON files must hold the same values), and rank 0's weights (rank 1
must hold bitwise the same after DDP training).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from helpers import ddp_env, free_port
from scipy import ndimage

from darkfield_nb import checkpoint
from darkfield_nb.contract import write_manifest
from darkfield_nb.io import write_image
from darkfield_nb.models import DiscriminatorConfig, GeneratorConfig, build_generator
from darkfield_nb.train import (
    HISTORY_CSV,
    HISTORY_JSON,
    NonFiniteLossError,
    StageSchedule,
    TrainConfig,
    make_datasets,
    read_history,
    train_progressive,
    train_stage,
)
from darkfield_nb.train import step as step_module

SIZE = 64


def make_tiny_dataset(root: Path, n: int = 8, n_val: int = 2, seed: int = 0) -> Path:
    """A learnable toy pair set: D is a smooth function of the attenuation field plus texture."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        field = ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE)), 4)
        field = (field - field.min()) / (np.ptp(field) + 1e-9)
        texture = ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE)), 1)
        d = (0.5 * (1 - field) ** 2 + 0.02 * texture).astype(np.float32)
        write_image(root / "attenuation" / f"im{i}.png", (field * 60000 + 1000).astype(np.uint16))
        write_image(root / "darkfield" / f"im{i}.tif", d)
        split = "val" if i >= n - n_val else "train"
        rows.append({"id": f"im{i}", "patient": f"p{i}", "split": split})
    write_manifest(root / "manifest.csv", rows)
    return root


def tiny_config(**kw) -> TrainConfig:
    model = kw.pop("model", {})
    stages = kw.pop("stages", [StageSchedule(epochs=2, batch_size=2, lr=1e-3, warmup_epochs=1)])
    base = GeneratorConfig(n_stages=2, base_width=4, depth=2, norm="batch", dropout=0.1)
    return TrainConfig(
        model=replace(base, **model),
        discriminator=DiscriminatorConfig(width=8, n_layers=2),
        stages=stages,
        crop_size=32,
        cache_data=True,
        **kw,
    )


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny_data"))


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _train_l1(model, dataset) -> float:
    """Mean |y - mu| of stage 0 over whole training images, eval mode (no crop, no augment)."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(len(dataset)):
            att, target, _ = dataset.load_raw(i)
            from darkfield_nb.data import normalize_input

            x = torch.from_numpy(normalize_input(att))[None, None]
            y = torch.from_numpy(target)[None, None]
            total += float((model(x, n_stages=1)[0].mu - y).abs().mean())
    return total / len(dataset)


def test_config_round_trip_and_validation():
    cfg = tiny_config(seed=3)
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert cfg.schedule(5) is cfg.stages[-1]
    sched = StageSchedule(epochs=5, lr=1e-4, final_lr_factor=0.1, warmup_epochs=2)
    assert sched.lr_at(0) == pytest.approx(1e-4) and sched.lr_at(4) == pytest.approx(1e-5)
    assert [sched.ggd_weight_at(e) for e in range(3)] == [0.0, 0.0, sched.ggd_weight]
    with pytest.raises(ValueError, match="amp="):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="StageSchedule: epochs=0"):
        StageSchedule(epochs=0)


def test_short_run_lowers_training_loss_and_writes_history(tmp_path, data_root):
    cfg = tiny_config(
        model={"n_stages": 1, "norm": "instance"},
        stages=[StageSchedule(epochs=4, batch_size=2, lr=2e-3, warmup_epochs=2)],
    )
    train_ds, _ = make_datasets(data_root, cfg)
    torch.manual_seed(cfg.seed)
    before = _train_l1(build_generator(cfg.model), train_ds)
    result = train_progressive(data_root, tmp_path / "run", cfg, device="cpu", progress=False)
    after = _train_l1(result.model, train_ds)
    hist = result.history
    print(
        f"train L1 before {before:.4f} after {after:.4f}; history l1 "
        f"{hist[0]['train_l1']:.4f} -> {hist[-1]['train_l1']:.4f}"
    )
    assert after < 0.5 * before
    assert hist[-1]["train_l1"] < hist[0]["train_l1"]
    assert [(h["stage"], h["epoch"], h["phase"]) for h in hist] == [
        (0, 1, "l1"),
        (0, 2, "l1"),
        (0, 3, "l1+ggd"),
        (0, 4, "l1+ggd"),
    ]
    assert all(math.isfinite(h[k]) for h in hist for k in ("val_psnr", "val_ssim", "val_nll"))

    run = tmp_path / "run"
    for name in ("last.pt", "stage0.pt", "model.pt", HISTORY_CSV, HISTORY_JSON):
        assert (run / name).exists(), name
    # the files hold the returned history
    assert read_history(run) == hist
    with open(run / HISTORY_CSV, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(hist)
    for row, rec in zip(rows, hist, strict=True):
        assert float(row["train_loss"]) == pytest.approx(rec["train_loss"], rel=1e-12)
        assert float(row["val_psnr"]) == pytest.approx(rec["val_psnr"], rel=1e-12)
    # the final checkpoint loads into the same weights
    loaded = checkpoint.load(run / "model.pt")
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert checkpoint.load_checkpoint(run / "model.pt")["stages_trained"] == 1


def test_existing_run_is_not_overwritten_and_config_must_match(tmp_path, data_root):
    cfg = tiny_config(
        model={"n_stages": 1},
        stages=[StageSchedule(epochs=1, batch_size=2)],
        max_steps_per_epoch=1,
    )
    train_progressive(data_root, tmp_path / "run", cfg, device="cpu", progress=False)
    with pytest.raises(FileExistsError, match="already holds a training run"):
        train_progressive(data_root, tmp_path / "run", cfg, device="cpu", progress=False)
    other = tiny_config(
        model={"n_stages": 1},
        stages=[StageSchedule(epochs=1, batch_size=2)],
        max_steps_per_epoch=1,
        seed=5,
    )
    with pytest.raises(ValueError, match="seed: given 5, stored 0"):
        train_progressive(
            data_root, tmp_path / "run", other, resume=True, device="cpu", progress=False
        )


def test_frozen_stage_bitwise_unchanged_while_next_stage_trains(tmp_path, data_root):
    """Stage 0 (BatchNorm, whose running statistics would drift in train mode) must keep every
    parameter and buffer bit for bit while stage 1 trains; stage 1's must move."""
    cfg = tiny_config(stages=[StageSchedule(epochs=1, batch_size=2, lr=1e-3, warmup_epochs=0)])
    train_ds, val_ds = make_datasets(data_root, cfg)
    torch.manual_seed(0)
    model = build_generator(cfg.model)
    train_stage(model, 0, train_ds, val_ds, cfg, tmp_path, device="cpu", progress=False)
    frozen0 = _state(model.stages[0])
    before1 = _state(model.stages[1])
    assert any("running_mean" in k for k in frozen0)
    train_stage(model, 1, train_ds, val_ds, cfg, tmp_path, device="cpu", progress=False)
    after0 = model.stages[0].state_dict()
    for k, v in frozen0.items():
        assert torch.equal(v, after0[k]), f"frozen stage 0 changed: {k}"
    after1 = model.stages[1].state_dict()
    moved = [k for k in before1 if not torch.equal(before1[k], after1[k])]
    assert any("running_mean" in k for k in moved) and any("weight" in k for k in moved)


def test_nan_guard_stops_with_clear_error_and_keeps_last_checkpoint(
    tmp_path, data_root, monkeypatch
):
    cfg = tiny_config(
        model={"n_stages": 1},
        stages=[StageSchedule(epochs=3, batch_size=2, warmup_epochs=0)],
    )
    steps_per_epoch = 3  # 6 training images, batch 2
    calls = {"n": 0}
    real = step_module.ggd_loss

    def poisoned(*args, **kw):
        calls["n"] += 1
        value = real(*args, **kw)
        return value * math.nan if calls["n"] == steps_per_epoch + 2 else value

    monkeypatch.setattr(step_module, "ggd_loss", poisoned)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"stage 0, epoch 2, step 2: non-finite loss"):
        train_progressive(data_root, run, cfg, device="cpu", progress=False)
    good = checkpoint.load_checkpoint(run / "last.pt")
    assert (good["stage"], good["epoch"], len(good["history"])) == (0, 1, 1)
    model = checkpoint.load(run / "last.pt")
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert len(read_history(run)) == 1


def test_gradient_clipping_survives_float32_overflow_of_the_squared_norm():
    """Finite float32 gradients of 1e20-3e20 (a GGD NLL spike) have squares beyond float32:
    torch's clip_grad_norm_ reports Inf, ours the true norm (float64 reference) and scales the
    gradients to norm ``clip``; an Inf gradient still gives an Inf norm."""
    import numpy as np

    from darkfield_nb.train.step import _grad_norm

    grads = [np.array([1e20, -2e20, 3e20], np.float32), np.array([[2e20, 0.5]], np.float32)]

    def params():
        ps = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
        for p, g in zip(ps, grads, strict=True):
            p.grad = torch.from_numpy(g.copy())
        return ps

    reference = float(np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads)))
    assert not torch.isfinite(torch.nn.utils.clip_grad_norm_(params(), 1.0))  # the old failure
    ps = params()
    norm = _grad_norm(ps, clip=1.0)
    assert float(norm) == pytest.approx(reference, rel=1e-6)
    clipped = np.sqrt(sum((p.grad.double() ** 2).sum().item() for p in ps))
    assert clipped == pytest.approx(1.0, rel=1e-5)
    ps = params()
    assert float(_grad_norm(ps, clip=0.0)) == pytest.approx(reference, rel=1e-6)
    assert float(ps[0].grad[0]) == float(np.float32(1e20))  # clip 0: untouched
    ps[1].grad[0, 1] = math.inf
    assert not math.isfinite(float(_grad_norm(ps, clip=1.0)))


@pytest.mark.parametrize("kill_at", [(0, 1, 1), (1, 1, 2)], ids=["stage0", "stage1"])
def test_kill_mid_epoch_and_resume_matches_uninterrupted_run(tmp_path, data_root, kill_at):
    """Kill at (stage, 0-based epoch, step) with KeyboardInterrupt, resume, compare with a run
    that was never interrupted: same history length and values, bitwise equal final weights.
    Dropout (last stage), augmentation and the adversarial term are on: all seeded per epoch."""
    cfg = tiny_config(
        stages=[StageSchedule(epochs=3, batch_size=2, lr=1e-3, warmup_epochs=1)],
        model={"conditioning": "attention"},
    )
    ref = train_progressive(data_root, tmp_path / "ref", cfg, device="cpu", progress=False)

    def killer(stage, epoch, step, values):
        if (stage, epoch, step) == kill_at:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_progressive(data_root, run, cfg, device="cpu", progress=False, on_step=killer)
    partial = checkpoint.load_checkpoint(run / "last.pt")
    assert (partial["stage"], partial["epoch"]) == kill_at[:2]
    resumed = train_progressive(data_root, run, None, resume=True, device="cpu", progress=False)

    assert len(resumed.history) == len(ref.history) == 6
    skip = {"seconds", "images_per_s"}
    for a, b in zip(resumed.history, ref.history, strict=True):
        assert {k: v for k, v in a.items() if k not in skip} == {
            k: v for k, v in b.items() if k not in skip
        }
    ref_state = checkpoint.load_checkpoint(tmp_path / "ref" / "model.pt")["generator"]
    res_state = checkpoint.load_checkpoint(run / "model.pt")["generator"]
    for k, v in ref_state.items():
        assert torch.equal(v, res_state[k]), k
    # a completed run resumes to a no-op
    again = train_progressive(data_root, run, None, resume=True, device="cpu", progress=False)
    assert len(again.history) == 6


def test_attention_conditioning_weights_l1_by_previous_sigma(tmp_path, data_root, monkeypatch):
    """With conditioning="attention", stage 1's L1 is the weighted L1 with the weight equal to
    the model's attention map of stage 0's output; stage 0 uses the plain L1."""
    seen = []
    real = step_module.uncertainty_weighted_l1

    def spy(target, mu, weight, reduction="mean"):
        seen.append(weight.detach().clone())
        return real(target, mu, weight, reduction)

    monkeypatch.setattr(step_module, "uncertainty_weighted_l1", spy)
    cfg = tiny_config(
        model={"conditioning": "attention"},
        stages=[StageSchedule(epochs=1, batch_size=2, warmup_epochs=0)],
        max_steps_per_epoch=2,
    )
    train_progressive(data_root, tmp_path / "run", cfg, device="cpu", progress=False)
    assert len(seen) == 2  # stage 1 only, one per step
    for w in seen:
        assert w.shape == (2, 1, 32, 32)
        assert torch.allclose(w.mean(dim=(-2, -1)), torch.ones(2, 1), atol=0.05)


def test_bf16_autocast_and_channels_last_path_runs_on_cpu(tmp_path, data_root):
    """The GPU path's options (bf16 autocast, channels_last) also run on CPU, with finite
    losses and float32 weights."""
    cfg = tiny_config(
        model={"n_stages": 1},
        stages=[StageSchedule(epochs=1, batch_size=2)],
        amp="bf16",
        channels_last=True,
        max_steps_per_epoch=2,
    )
    result = train_progressive(data_root, tmp_path / "run", cfg, device="cpu", progress=False)
    rec = result.history[-1]
    assert math.isfinite(rec["train_loss"]) and math.isfinite(rec["val_psnr"])
    assert all(p.dtype == torch.float32 for p in result.model.parameters())


# --------------------------------------------------------------------------------------------
# Two processes, DDP over Gloo on the loopback interface
# --------------------------------------------------------------------------------------------


def _ddp_worker(rank: int, world: int, port: int, data_root: str, out: str, dump: str) -> None:
    ddp_env(rank, world, port)
    cfg = tiny_config(stages=[StageSchedule(epochs=1, batch_size=2, lr=1e-3, warmup_epochs=0)])
    result = train_progressive(data_root, out, cfg, device="cpu", progress=False)
    torch.save(
        {"state": result.model.state_dict(), "history": result.history},
        Path(dump) / f"rank{rank}.pt",
    )


def test_ddp_two_cpu_processes_hold_identical_weights(tmp_path, data_root):
    out, dump = tmp_path / "run", tmp_path / "dump"
    dump.mkdir()
    mp.spawn(
        _ddp_worker,
        args=(2, free_port(), str(data_root), str(out), str(dump)),
        nprocs=2,
        join=True,
    )
    r0 = torch.load(dump / "rank0.pt", weights_only=True)
    r1 = torch.load(dump / "rank1.pt", weights_only=True)
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), f"ranks differ in {k}"
    cfg = tiny_config()
    torch.manual_seed(cfg.seed)
    init = build_generator(cfg.model).state_dict()
    for k in ("stages.0.down.0.0.weight", "stages.1.head_mu.weight"):
        assert not torch.equal(init[k], r0["state"][k]), f"{k} did not train"
    # 6 training images, 2 processes x batch 2: one step per epoch and stage on each rank
    assert [h["steps"] for h in r0["history"]] == [1, 1]
    assert r0["history"] == r1["history"]
    # rank 0 wrote the files; they hold its weights
    saved = checkpoint.load(out / "model.pt").state_dict()
    for k, v in r0["state"].items():
        assert torch.equal(v, saved[k]), k


def test_resume_without_last_checkpoint_is_refused_naming_the_folder(tmp_path, data_root):
    """A kill during the very first checkpoint write leaves only a temporary: resuming must
    not start a fresh run with default settings (issue 14, item 2)."""
    from darkfield_nb.io import atomic_path

    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match=r"run: nothing to resume: the folder does not"):
        train_progressive(data_root, run, None, resume=True, device="cpu", progress=False)
    run.mkdir()
    cm = atomic_path(run / "last.pt")  # the write a kill interrupted: its temporary stays
    partial = cm.__enter__()
    partial.write_bytes(b"PK\x03\x04")
    with pytest.raises(FileNotFoundError) as info:
        train_progressive(data_root, run, None, resume=True, device="cpu", progress=False)
    message = str(info.value)
    assert message.startswith(f"{run}: nothing to resume: no last.pt in it; {partial.name} is")
    assert "resume=False" in message and "\n" not in message
    assert list(run.iterdir()) == [partial]  # nothing trained, nothing written


def test_resume_cleans_temporaries_a_killed_write_left(tmp_path, data_root):
    cfg = tiny_config(
        model={"n_stages": 1}, stages=[StageSchedule(epochs=1, batch_size=2)], max_steps_per_epoch=1
    )
    run = tmp_path / "run"
    train_progressive(data_root, run, cfg, device="cpu", progress=False)
    left = [run / ".last.abcd1234.tmp.pt", run / ".history.zz99zz99.tmp.csv"]
    mine = run / ".notes"  # not our naming: kept
    for p in [*left, mine]:
        p.write_bytes(b"")
    with pytest.warns(UserWarning, match=r"run: removed 2 temporary file\(s\) left by an interr"):
        train_progressive(data_root, run, None, resume=True, device="cpu", progress=False)
    assert not any(p.exists() for p in left) and mine.exists()


def test_images_must_fit_the_model_stride_before_training(tmp_path, data_root):
    """make_datasets refuses images smaller than stride + 1 of the configured generator, by
    file, before any epoch. Reference: the generator itself fails on such an input."""
    from darkfield_nb.models import ProgressiveGenerator

    deep = GeneratorConfig(n_stages=1, depth=6, base_width=2)  # stride 64: needs 65 px
    with torch.no_grad(), pytest.raises(ValueError, match="more than 1 spatial element"):
        ProgressiveGenerator(deep).eval()(torch.rand(1, 1, SIZE, SIZE))
    deep_cfg = tiny_config(model={"n_stages": 1, "depth": 6, "norm": "instance"})
    cfg = replace(deep_cfg, crop_size=None)
    with pytest.raises(ValueError, match=r"im0\.png: image is 64 x 64 px, too small.*at least 65"):
        make_datasets(data_root, cfg)
    train, val = make_datasets(data_root, replace(tiny_config(), crop_size=None))  # depth 2: 5 px
    assert (len(train), len(val)) == (6, 2) and train.min_side == val.min_side == 5


def test_unwritable_run_folder_is_found_before_training(tmp_path, data_root, monkeypatch):
    import errno
    import tempfile

    from darkfield_nb.io import WriteError
    from darkfield_nb.train import stage as stage_module

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    def no_epoch(*args, **kwargs):
        raise AssertionError("an epoch ran before the run folder was checked")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(stage_module, "_run_epoch", no_epoch)
    with pytest.raises(WriteError, match=r"run: cannot write: permission denied"):
        train_progressive(data_root, tmp_path / "run", tiny_config(), device="cpu", progress=False)
