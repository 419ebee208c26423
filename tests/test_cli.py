"""The command line end to end on tiny folders built here (no sample data needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from darkfield_nb import checkpoint
from darkfield_nb.cli import main
from darkfield_nb.contract import write_manifest
from darkfield_nb.io import read_image, write_image
from darkfield_nb.models import GeneratorConfig, ProgressiveGenerator


def _tiny_dataset(root, n=4, size=24):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        att = rng.integers(0, 4096, (size, size)).astype(np.uint16)
        write_image(root / "attenuation" / f"p{i}.png", att)
        write_image(root / "darkfield" / f"p{i}.tif", rng.random((size, size)).astype(np.float32))
        rows.append({"id": f"p{i}", "patient": f"P{i}", "split": "test" if i < 2 else "train"})
    write_manifest(root / "manifest.csv", rows)
    return root


@pytest.fixture
def tiny_ckpt(tmp_path):
    torch.manual_seed(0)
    model = ProgressiveGenerator(GeneratorConfig(n_stages=2, base_width=4, depth=2, dropout=0.2))
    return checkpoint.save(tmp_path / "tiny.pt", model, stage=1, epoch=1)


def test_info_runs(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "device" in out


def test_validate_valid_and_broken(tmp_path, capsys):
    root = _tiny_dataset(tmp_path / "ok")
    assert main(["validate", str(root)]) == 0
    (root / "darkfield" / "p1.tif").unlink()
    assert main(["validate", str(root)]) == 1
    err = capsys.readouterr().err
    assert "p1" in err


def test_evaluate_writes_json_with_metrics_per_stage(tmp_path, tiny_ckpt):
    root = _tiny_dataset(tmp_path / "data")
    out = tmp_path / "eval.json"
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(tiny_ckpt),
            "--data",
            str(root),
            "--samples",
            "3",
            "--json",
            str(out),
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["n_images"] == 2  # the test split
    for name in ("mse", "psnr", "ssim"):
        assert len(result[name]) == 2  # one value per trained stage, stage 1 first
    # the reported MSE is the mean of the per-image values
    assert result["mse"][0] == pytest.approx(np.mean([im["mse"][0] for im in result["images"]]))
    assert 0.0 <= result["uncertainty"]["coverage_90"] <= 1.0


def _predict(inputs, out, ckpt, *flags):
    return main(
        ["predict", str(inputs), "--out", str(out), "--checkpoint", str(ckpt), "--quiet"]
        + ["--device", "cpu", "--workers", "0", *flags]
    )


def test_predict_writes_maps_summary_and_a_closing_line(tmp_path, tiny_ckpt, capsys):
    root = _tiny_dataset(tmp_path / "data")
    out = tmp_path / "pred"
    assert _predict(root / "attenuation", out, tiny_ckpt, "--samples", "2") == 0
    assert read_image(out / "total" / "p3.tif").shape == (24, 24)
    lines = capsys.readouterr().out.splitlines()
    closing = next(line for line in lines if line.startswith("predict: "))
    for word in ("4 images", "on cpu", "tiny.pt", "2 stages", "2 MC passes", "wrote 4", " s "):
        assert word in closing, (word, closing)
    assert any(f"results in {out}: summary.csv" in line for line in lines)
    assert any("--preview" in line for line in lines)
    summary = (out / "summary.csv").read_text().splitlines()
    assert len(summary) == 5 and summary[0].startswith("id,input,status,height,width,pixel_mm")

    # another --samples redoes every set and says why; the same settings skip them all
    assert _predict(root / "attenuation", out, tiny_ckpt, "--samples", "3") == 0
    text = capsys.readouterr().out
    assert "redoing 4 set(s), MC samples changed: p0.png, p1.png, p2.png, p3.png" in text
    assert _predict(root / "attenuation", out, tiny_ckpt, "--samples", "3") == 0
    assert "wrote 0, skipped 4 already done" in capsys.readouterr().out


def test_predict_samples_zero_is_one_deterministic_pass(tmp_path, tiny_ckpt, capsys):
    root = _tiny_dataset(tmp_path / "data", n=2, size=32)
    out = tmp_path / "pred"
    assert _predict(root, out, tiny_ckpt, "--samples", "0", "--format", "png16") == 0
    text = capsys.readouterr().out
    assert "1 deterministic pass" in text
    assert "is a paired data set: synthesizing its attenuation/ images" in text
    epi = read_image(out / "epistemic" / "p0.png")  # 16-bit PNG, offset 0: all zero
    assert epi.shape == (32, 32) and not epi.any()
    assert (out / "png16_scale.json").exists()


def test_predict_refuses_a_colour_file_by_name_and_goes_on(tmp_path, tiny_ckpt, capsys):
    root = _tiny_dataset(tmp_path / "data", n=2, size=32)
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 2] = 255
    write_image(root / "attenuation" / "z_chart.png", rgb[..., 2])  # grey: fine
    from PIL import Image

    Image.fromarray(rgb).save(root / "attenuation" / "a_chart.png")
    assert _predict(root / "attenuation", tmp_path / "o", tiny_ckpt, "--samples", "1") == 1
    captured = capsys.readouterr()
    assert "a_chart.png: a colour image" in captured.err
    assert "wrote 2" in captured.out  # p0, p1 (z_chart is constant: refused too)
    assert "z_chart.png: constant image" in captured.err


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    code = main(
        [
            "predict",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--checkpoint",
            str(tmp_path / "none.pt"),
        ]
    )
    assert code == 2
    assert "none.pt: checkpoint not found" in capsys.readouterr().err


def test_train_then_resume_from_the_command_line(tmp_path):
    root = _tiny_dataset(tmp_path / "data", n=6, size=32)
    rows = [
        {"id": f"p{i}", "patient": f"P{i}", "split": ("train", "val", "test")[i % 3]}
        for i in range(6)
    ]
    write_manifest(root / "manifest.csv", rows)
    run = tmp_path / "run"
    flags = [
        "--stages",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--crop-size",
        "32",
        "--base-width",
        "4",
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main(["train", "--data", str(root), "--out", str(run), *flags]) == 0
    model = checkpoint.load(run / "model.pt")
    assert model.config.n_stages == 2 and model.config.base_width == 4
    history = json.loads((run / "history.json").read_text())
    assert [h["stage"] for h in history] == [0, 1]
    # a second run into the same folder must be refused unless resuming
    assert main(["train", "--data", str(root), "--out", str(run), *flags]) == 2
    assert main(["train", "--data", str(root), "--out", str(run), "--resume", "--quiet"]) == 0
    assert len(json.loads((run / "history.json").read_text())) == 2  # nothing left to train


def test_expected_errors_are_one_line_in_a_real_process(tmp_path):
    """Through ``python -m darkfield_nb.cli``: a text file given as the checkpoint gives exit
    status 2 and one stderr line naming it, no traceback."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = _tiny_dataset(tmp_path / "data")
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    args = ["evaluate", "--checkpoint", str(bad), "--data", str(root), "--quiet"]
    done = subprocess.run(
        [sys.executable, "-m", "darkfield_nb.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"darkfield-nb evaluate: error: {bad}: not a PyTorch checkpoint")
    assert "Traceback" not in done.stderr


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    """A bug is not dressed up as a user error: it propagates (the traceback is printed)."""
    from darkfield_nb import cli

    def bug(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "_cmd_info", bug)
    with pytest.raises(ZeroDivisionError, match="a bug"):
        main(["info"])


def test_warnings_are_one_line_each(tmp_path, capsys):
    """validate reports an empty split as a warning line and still calls the folder valid."""
    root = _tiny_dataset(tmp_path / "ok")  # test and train only: no val split
    assert main(["validate", str(root)]) == 0
    captured = capsys.readouterr()
    warned = [x for x in captured.err.splitlines() if x.startswith("darkfield-nb validate: warn")]
    assert len(warned) == 1 and "split 'val' has no images" in warned[0]
    assert f"{root}: valid (4 pairs: test 2, train 2)" in captured.out


def test_evaluate_json_is_strict_and_names_the_checkpoint(tmp_path, tiny_ckpt):
    root = _tiny_dataset(tmp_path / "data")
    out = tmp_path / "e.json"
    argv = ["evaluate", "--checkpoint", str(tiny_ckpt), "--data", str(root), "--samples", "2"]
    assert main([*argv, "--device", "cpu", "--quiet", "--json", str(out)]) == 0

    def no_constants(token):
        raise AssertionError(f"non-strict JSON token {token}")

    result = json.loads(out.read_text(), parse_constant=no_constants)
    assert result["checkpoint"] == str(tiny_ckpt) and result["n_images"] == 2
