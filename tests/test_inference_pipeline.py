"""The batch pipeline: MC statistics against a plain loop, batch invariance, completion keyed
on what produced the outputs, stale temporaries, a set or nothing, input handling, formats."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from darkfield_nb.inference import PredictConfig, TrainingGeometry, predict_folder
from darkfield_nb.inference import outputs as outputs_mod
from darkfield_nb.inference.mc import fixed_masks, mc_predict_batch
from darkfield_nb.inference.outputs import MAPS, decode_png16
from darkfield_nb.io import read_image, write_image
from darkfield_nb.models import GeneratorConfig, ProgressiveGenerator
from darkfield_nb.uncertainty import ggd_variance

GEO = TrainingGeometry((48, 48), 400 / 48)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = ProgressiveGenerator(GeneratorConfig(n_stages=2, base_width=4, depth=2, dropout=0.2))
    for stage in m.stages:  # residual stages start with a zero mean head: act as if trained
        torch.nn.init.normal_(stage.head_mu.weight, std=0.1)
    return m.eval()


def _folder(root: Path, n: int = 6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = rng.integers(36, 60, 2)
        write_image(root / f"img{i:02d}.png", rng.integers(0, 4096, (h, w)).astype(np.uint16))
    return root


def _run(model, src, out, **kw):
    sha = kw.pop("sha", "ckpt-a")
    cfg = PredictConfig(samples=kw.pop("samples", 3), progress=False, workers=0, **kw)
    return predict_folder(model, src, out, geometry=GEO, checkpoint_sha256=sha, config=cfg)


def _bytes(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for name in MAPS
        for p in sorted((out / name).glob("*"))
    }


def _summary(out: Path) -> list[dict]:
    with open(out / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------ statistics
def _plain_loop(model, x: torch.Tensor, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: the whole network, one pass at a time with pass t's masks; the means
    and GGD variances of the passes, (T, B, 1, H, W) each, in float64."""
    mus, variances = [], []
    for t in range(samples):
        with fixed_masks(model, [t], x.shape[0], seed), torch.no_grad():
            out = model(x)[-1]
        mus.append(out.mu.double().numpy())
        variances.append(ggd_variance(out.alpha.double(), out.beta.double()).numpy())
    return np.stack(mus), np.stack(variances)


def test_mc_statistics_equal_a_plain_loop_of_full_forward_passes(model):
    x = torch.rand(3, 1, 40, 44)
    got = mc_predict_batch(model, x, samples=7, seed=5, chunk=3)
    mus, variances = _plain_loop(model, x, 7, 5)
    np.testing.assert_allclose(got["darkfield"].numpy(), mus.mean(0), atol=1e-5)
    np.testing.assert_allclose(got["epistemic"].numpy(), mus.std(0), atol=1e-5)
    np.testing.assert_allclose(got["aleatoric"].numpy(), np.sqrt(variances.mean(0)), atol=1e-5)
    np.testing.assert_allclose(
        got["total"].numpy() ** 2, np.sqrt(variances.mean(0)) ** 2 + mus.var(0), atol=1e-5
    )
    assert (got["epistemic"] > 0).float().mean() > 0.99


@pytest.mark.parametrize("placement,kind", [("head_reg", "channel"), ("head", "element")])
@pytest.mark.parametrize("chunk", [None, 3])
def test_mean_head_dropout_statistics_equal_a_plain_loop(placement, kind, chunk):
    """Dropout only at the mean head: the passes share alpha and beta (one variance, computed
    once) and the stage's eval-mode output comes with them (``on_deterministic``); both
    against the whole network run pass by pass and once in eval mode."""
    torch.manual_seed(1)
    cfg = GeneratorConfig(
        n_stages=2,
        base_width=4,
        depth=2,
        dropout=0.3,
        dropout_placement=placement,
        dropout_kind=kind,
    )
    m = ProgressiveGenerator(cfg)
    for stage in m.stages:
        torch.nn.init.normal_(stage.head_mu.weight, std=0.1)
    m.eval()
    x = torch.rand(2, 1, 36, 42)
    seen: list = []
    got = mc_predict_batch(m, x, samples=6, seed=4, chunk=chunk, on_deterministic=seen.append)
    mus, variances = _plain_loop(m, x, 6, 4)
    np.testing.assert_allclose(got["darkfield"].numpy(), mus.mean(0), atol=1e-5)
    np.testing.assert_allclose(got["epistemic"].numpy(), mus.std(0), atol=1e-5)
    np.testing.assert_allclose(got["aleatoric"].numpy(), np.sqrt(variances.mean(0)), atol=1e-5)
    assert (got["epistemic"] > 0).float().mean() > 0.9
    assert len(seen) == 1
    with torch.no_grad():
        ref = m(x)[-1]  # eval mode: no dropout
    for a, b in zip(seen[0], ref, strict=True):
        assert a.shape == b.shape == (2, 1, 36, 42)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_no_deterministic_output_where_the_decoder_drops(model):
    seen: list = []
    mc_predict_batch(model, torch.rand(1, 1, 32, 32), samples=2, on_deterministic=seen.append)
    assert seen == []  # dropout inside the decoder: the eval pass would cost a decoder pass


def test_an_image_gets_the_same_maps_alone_or_in_a_batch(model):
    x = torch.rand(4, 1, 32, 32)
    batch = mc_predict_batch(model, x, samples=5, seed=1)
    alone = mc_predict_batch(model, x[2:3], samples=5, seed=1)
    for k in MAPS:
        np.testing.assert_allclose(batch[k][2:3].numpy(), alone[k].numpy(), atol=1e-6)
    other = mc_predict_batch(model, x[2:3], samples=5, seed=2)
    assert not torch.allclose(other["darkfield"], alone["darkfield"])


def test_zero_samples_is_one_deterministic_pass(model):
    x = torch.rand(2, 1, 32, 32)
    got = mc_predict_batch(model, x, samples=0)
    with torch.no_grad():
        ref = model.eval()(x)[-1]
    np.testing.assert_allclose(got["darkfield"].numpy(), ref.mu.numpy(), atol=1e-6)
    assert torch.count_nonzero(got["epistemic"]) == 0
    assert torch.equal(got["total"], got["aleatoric"])


# ------------------------------------------------------------------------------ the folder run
def test_writes_sets_summary_and_resumes_only_what_matches(model, tmp_path):
    src, out = _folder(tmp_path / "src"), tmp_path / "out"
    rep = _run(model, src, out, batch_size=4)
    assert len(rep.written) == 6 and not rep.failed and not rep.skipped
    rows = _summary(out)
    assert [r["id"] for r in rows] == [f"img{i:02d}" for i in range(6)]
    for r in rows:
        shape = read_image(out / "darkfield" / f"{r['id']}.tif").shape
        assert (
            (int(r["height"]), int(r["width"])) == shape == read_image(src / f"{r['id']}.png").shape
        )
        assert (
            r["pixel_source"] == "assumed"
            and max(int(r["model_height"]), int(r["model_width"])) == 48
        )
    first = _bytes(out)

    again = _run(model, src, out, batch_size=4)
    assert len(again.skipped) == 6 and not again.written and not again.redone
    assert len(_summary(out)) == 6  # the summary of a resumed run is complete

    os.utime(src / "img01.png")  # touched, same bytes: still done
    changed = src / "img02.png"
    write_image(changed, np.random.default_rng(9).integers(0, 4096, (40, 40)).astype(np.uint16))
    rep = _run(model, src, out, batch_size=4)
    assert rep.redone == {str(changed): "input changed"} and len(rep.skipped) == 5

    rep = _run(model, src, out, batch_size=4, seed=1)
    assert set(rep.redone.values()) == {"seed changed"} and len(rep.written) == 6
    rep = _run(model, src, out, batch_size=4, seed=1, sha="ckpt-b", samples=4)
    assert set(rep.redone.values()) == {"checkpoint changed, MC samples changed"}

    # a fresh run with the same settings gives exactly the same bytes
    out2 = tmp_path / "out2"
    _run(model, src, out2, batch_size=4, seed=1, sha="ckpt-b", samples=4)
    assert _bytes(out2) == _bytes(out)
    assert first != _bytes(out)


def test_stale_temporaries_are_removed_and_never_inputs(model, tmp_path):
    src, out = _folder(tmp_path / "src", n=2), tmp_path / "out"
    (src / ".img00.k2j3h4g5.tmp.png").write_bytes(b"")  # a 0-byte leftover in the inputs
    (out / "darkfield").mkdir(parents=True)
    stale = out / "darkfield" / ".img00.ab12cd34.tmp.tif"
    stale.write_bytes(b"half")
    keep = out / "darkfield" / "notes.txt"
    keep.write_text("mine")
    rep = _run(model, src, out)
    assert rep.n_inputs == 2 and not rep.failed
    assert not stale.exists() and keep.exists()
    assert any("stale temporary" in n for n in rep.notes)
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_a_set_is_written_whole_or_not_at_all(model, tmp_path, monkeypatch):
    src, out = _folder(tmp_path / "src", n=3), tmp_path / "out"
    real_replace = os.replace

    def failing_replace(a, b):
        if Path(b).parent.name == "epistemic" and Path(b).stem == "img01":
            raise PermissionError(13, "Permission denied", str(b))
        return real_replace(a, b)

    monkeypatch.setattr(outputs_mod.os, "replace", failing_replace)
    rep = _run(model, src, out)
    assert list(rep.failed) == [str(src / "img01.png")]
    assert "img01.png: outputs not written" in rep.failed[str(src / "img01.png")]
    for name in MAPS:  # no dark-field map without its partners, no temporaries
        assert not (out / name / "img01.tif").exists()
        assert (out / name / "img00.tif").exists() and (out / name / "img02.tif").exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    status = {r["id"]: r["status"] for r in _summary(out)}
    assert status["img01"].startswith("failed:") and status["img00"] == "ok"
    monkeypatch.undo()
    rep = _run(model, src, out)
    assert [p.name for p in rep.written] == ["img01.png"] and len(rep.skipped) == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_subfolder_leaves_no_partial_set(model, tmp_path):
    src, out = _folder(tmp_path / "src", n=2), tmp_path / "out"
    (out / "epistemic").mkdir(parents=True)
    os.chmod(out / "epistemic", 0o555)
    try:
        rep = _run(model, src, out)
    finally:
        os.chmod(out / "epistemic", 0o755)
    assert len(rep.failed) == 2
    assert not list((out / "darkfield").glob("*.tif"))


def test_inputs_paired_root_colour_tiny_constant(model, tmp_path):
    root = tmp_path / "paired"
    _folder(root / "attenuation", n=2)
    (root / "darkfield").mkdir()
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[..., 0] = 200  # red: a colour figure beside the data, never an input
    Image.fromarray(rgb).save(root / "example_pair.png")
    att = root / "attenuation"
    Image.fromarray(rgb).save(att / "figure.png")
    grey = np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(att / "grey_rgb.png")  # grey saved as RGB
    write_image(att / "tiny.png", np.arange(144, dtype=np.uint8).reshape(12, 12))
    write_image(att / "flat.png", np.full((40, 40), 7, np.uint8))
    out = tmp_path / "out"
    rep = _run(model, root, out)
    assert any("paired data set" in n and "attenuation" in n for n in rep.notes)
    assert sorted(p.name for p in rep.written) == ["grey_rgb.png", "img00.png", "img01.png"]
    reasons = {Path(k).name: v for k, v in rep.failed.items()}
    assert set(reasons) == {"figure.png", "tiny.png", "flat.png"}
    assert "figure.png: a colour image" in reasons["figure.png"]
    assert "too small" in reasons["tiny.png"] and "constant image" in reasons["flat.png"]
    assert len(_summary(out)) == 6


def test_png16_and_preview(model, tmp_path):
    src = _folder(tmp_path / "src", n=2)
    _run(model, src, tmp_path / "tif")
    _run(model, src, tmp_path / "png", format="png16", preview=True)
    scale = (tmp_path / "png" / "png16_scale.json").read_text()
    assert "D = offset + scale * value" in scale
    for name in MAPS:
        ref = read_image(tmp_path / "tif" / name / "img00.tif")
        raw = np.asarray(Image.open(tmp_path / "png" / name / "img00.png"))
        assert raw.dtype == np.uint16
        lo, hi = decode_png16(np.array([0, 65535]), name)  # the documented range: clipped
        np.testing.assert_allclose(
            decode_png16(raw, name), np.clip(ref, lo, hi), atol=2.0**-16 + 1e-7
        )
    with Image.open(tmp_path / "png" / "preview" / "img00.png") as im:
        assert im.mode == "RGB" and im.size[0] > 400


def test_bad_settings_are_refused(model, tmp_path):
    src = _folder(tmp_path / "src", n=1)
    with pytest.raises(ValueError, match="samples=-1"):
        _run(model, src, tmp_path / "o", samples=-1)
    with pytest.raises(ValueError, match="format='jpeg'"):
        _run(model, src, tmp_path / "o", format="jpeg")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="output path is a file"):
        _run(model, src, tmp_path / "file")


def test_non_finite_maps_fail_each_image_by_name_and_write_nothing(model, tmp_path):
    import copy

    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.stages[-1].head_mu.bias.fill_(float("nan"))
    src, out = _folder(tmp_path / "src", n=2), tmp_path / "out"
    rep = _run(broken, src, out)
    assert sorted(Path(k).name for k in rep.failed) == ["img00.png", "img01.png"]
    assert all("non-finite" in v for v in rep.failed.values())
    assert not [p for p in out.rglob("*.tif")]


def _bomb_png(path: Path, side: int = 30000) -> None:
    """A PNG whose header claims side x side pixels (8-bit grey) with almost no data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (side + 1))  # one row of the claimed image
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_is_refused_by_name_and_the_run_goes_on(model, tmp_path):
    src, out = _folder(tmp_path / "src", n=2), tmp_path / "out"
    _bomb_png(src / "bomb.png")
    rep = _run(model, src, out)
    assert sorted(p.name for p in rep.written) == ["img00.png", "img01.png"]
    (msg,) = rep.failed.values()
    assert msg.startswith(str(src / "bomb.png")) and "decompression bomb" in msg
