"""Tests of darkfield_nb.data: normalization, units, padding, splits, augmentation, validation,
and PairedDataset.

References: numpy.percentile (normalization), the closed form -ln(V) (units), numpy.pad
(torch reflect padding), the input arrays themselves (pad/unpad inverse), hand-placed marker
pixels (alignment), and data sets broken on purpose (validation messages).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REAL, needs_real
from torch.utils.data import DataLoader

from darkfield_nb.contract import write_manifest, write_sidecar
from darkfield_nb.data import (
    Augment,
    PairedDataset,
    assign_splits,
    darkfield_to_D,
    inspect_dataset,
    normalize_input,
    pad_to_multiple,
    unpad,
    validate_dataset,
)
from darkfield_nb.io import write_image

# ------------------------------------------------------------------ transforms


def test_normalize_matches_numpy_percentile():
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, 100.0, size=(31, 23))
    lo, hi = np.percentile(x, [1.0, 99.0])
    np.testing.assert_allclose(normalize_input(x), (x - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    assert normalize_input(x).dtype == np.float32
    lo, hi = np.percentile(x, [5.0, 95.0])
    np.testing.assert_allclose(normalize_input(x, 5, 95), (x - lo) / (hi - lo), rtol=1e-5)


def test_normalize_stack_is_per_image_and_tensor():
    rng = np.random.default_rng(1)
    stack = rng.random((3, 1, 10, 12)) * np.array([1.0, 50.0, 1000.0])[:, None, None, None]
    out = normalize_input(torch.from_numpy(stack))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    for k in range(3):
        np.testing.assert_allclose(out[k, 0].numpy(), normalize_input(stack[k, 0]), rtol=1e-6)


def test_normalize_constant_image_is_zero():
    out = normalize_input(np.full((8, 8), 7.5))
    assert np.all(np.isfinite(out)) and np.all(out == 0)


def test_darkfield_to_D():
    v = np.array([[1.0, 0.5], [0.0, 1.2]], np.float32)
    d = darkfield_to_D(v, "visibility")
    np.testing.assert_allclose(d, [[0.0, np.log(2.0)], [-np.log(1e-6), -np.log(1.2)]], rtol=1e-6)
    np.testing.assert_array_equal(darkfield_to_D(v, "D"), v)
    torch.testing.assert_close(
        darkfield_to_D(torch.from_numpy(v), "visibility"), torch.from_numpy(d)
    )
    with pytest.raises(ValueError, match="unknown units 'V'"):
        darkfield_to_D(v, "V")


@pytest.mark.parametrize("shape", [(1, 1, 37, 45), (2, 3, 17, 16), (5, 7), (1, 1, 3, 5)])
@pytest.mark.parametrize("multiple", [1, 8, 16, 32])
def test_pad_unpad_exact_inverse(shape, multiple):
    t = torch.randn(shape)
    padded, pad = pad_to_multiple(t, multiple)
    assert padded.shape[-2] % multiple == 0 and padded.shape[-1] % multiple == 0
    assert padded.shape[:-2] == t.shape[:-2]
    assert torch.equal(unpad(padded, pad), t)
    a = t.numpy()
    padded_np, pad_np = pad_to_multiple(a, multiple)
    assert pad_np == pad
    np.testing.assert_array_equal(unpad(padded_np, pad_np), a)


def test_torch_reflect_padding_matches_numpy():
    """Reference: numpy.pad(mode="reflect"), also when the pad exceeds the image size."""
    a = np.arange(3 * 5, dtype=np.float32).reshape(3, 5)
    padded, pad = pad_to_multiple(torch.from_numpy(a), 16)
    expected = np.pad(a, ((pad[0], pad[1]), (pad[2], pad[3])), mode="reflect")
    np.testing.assert_array_equal(padded.numpy(), expected)
    assert pad == (6, 7, 5, 6)


def test_pad_integer_tensor_keeps_dtype():
    m = torch.arange(35, dtype=torch.int32).reshape(1, 5, 7)
    padded, pad = pad_to_multiple(m, 8)
    assert padded.dtype == torch.int32
    assert torch.equal(unpad(padded, torch.tensor([pad, pad])), m)


def test_unpad_rejects_mixed_batch_pads():
    with pytest.raises(ValueError, match="different pads"):
        unpad(torch.zeros(2, 1, 16, 16), torch.tensor([[0, 1, 0, 1], [0, 0, 0, 0]]))


# ------------------------------------------------------------------ splits


def test_splits_deterministic_and_order_free():
    patients = [f"P{i:03d}" for i in range(40)]
    a = assign_splits(patients, seed=3)
    b = assign_splits(list(reversed(patients)) + patients[:5], seed=3)  # reordered, repeated
    assert a == b
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 28, "val": 6, "test": 6}  # 0.7 / 0.15 / 0.15 of 40
    assert assign_splits(patients, seed=4) != a


def test_splits_small_sets_fill_every_split():
    out = assign_splits(["a", "b", "c"])
    assert sorted(out.values()) == ["test", "train", "val"]


def test_splits_bad_fractions():
    with pytest.raises(ValueError, match="sum to 1"):
        assign_splits(["a"], fractions=(0.5, 0.2, 0.2))


# ------------------------------------------------------------------ data set fixture helpers


def make_dataset(root: Path, n: int = 4, shape=(21, 27), masks: bool = True) -> Path:
    """A small valid data set: 16-bit PNG inputs, float32 TIFF targets, masks, two patients."""
    rng = np.random.default_rng(7)
    rows = []
    for k in range(n):
        i = f"img{k}"
        write_image(root / "attenuation" / f"{i}.png", rng.integers(0, 65535, shape, np.uint16))
        write_image(root / "darkfield" / f"{i}.tif", rng.random(shape).astype(np.float32) * 0.5)
        if masks:
            write_image(root / "masks" / f"{i}.png", rng.integers(0, 4, shape).astype(np.uint16))
        rows.append({"id": i, "patient": f"pat{k // 2}", "split": ("train", "val")[k // 2 % 2]})
    write_manifest(root, rows)
    return root


@pytest.fixture
def dataset_root(tmp_path) -> Path:
    return make_dataset(tmp_path / "ds")


def _problems(root: Path) -> str:
    return "\n".join(validate_dataset(root))


# ------------------------------------------------------------------ validation


def test_valid_dataset_has_no_problems(dataset_root):
    assert validate_dataset(dataset_root) == []
    report = inspect_dataset(dataset_root)
    assert report.ok and report.n_pairs == 4 and report.split_counts == {"train": 2, "val": 2}


def test_minimal_dataset_is_valid(tmp_path):
    """Only attenuation/, darkfield/ and a manifest with id,patient,split."""
    root = make_dataset(tmp_path / "min", n=2, masks=False)
    assert validate_dataset(root) == []


def test_missing_folder(tmp_path):
    root = make_dataset(tmp_path / "ds")
    shutil.rmtree(root / "darkfield")
    text = _problems(root)
    assert f"{root / 'darkfield'}: missing folder" in text


def test_missing_partner(dataset_root):
    (dataset_root / "darkfield" / "img1.tif").unlink()
    text = _problems(dataset_root)
    assert f"{dataset_root / 'attenuation' / 'img1.png'}: missing partner" in text
    assert str(dataset_root / "darkfield" / "img1") in text


def test_same_id_two_extensions(dataset_root):
    write_image(dataset_root / "darkfield" / "img0.npy", np.zeros((21, 27), np.float32))
    text = _problems(dataset_root)
    assert "id 'img0' has two files" in text and "img0.npy" in text and "img0.tif" in text


def test_shape_mismatch_names_both_files_and_shapes(dataset_root):
    write_image(dataset_root / "darkfield" / "img2.tif", np.zeros((20, 27), np.float32))
    text = _problems(dataset_root)
    assert (
        f"{dataset_root / 'attenuation' / 'img2.png'}: shape (21, 27) does not match its partner "
        f"{dataset_root / 'darkfield' / 'img2.tif'} (20, 27)" in text
    )


def test_nan_values(dataset_root):
    import tifffile

    bad = np.zeros((21, 27), np.float32)
    bad[3, 4] = np.nan
    tifffile.imwrite(dataset_root / "darkfield" / "img3.tif", bad)
    text = _problems(dataset_root)
    assert f"{dataset_root / 'darkfield' / 'img3.tif'}: contains non-finite values (1 NaN" in text


def test_empty_and_corrupt_files(dataset_root):
    (dataset_root / "attenuation" / "img0.png").write_bytes(b"")
    (dataset_root / "darkfield" / "img1.tif").write_bytes(b"garbage" * 30)
    text = _problems(dataset_root)
    assert f"{dataset_root / 'attenuation' / 'img0.png'}: empty file" in text
    assert f"{dataset_root / 'darkfield' / 'img1.tif'}: corrupt or unreadable" in text


def test_wrong_dimensionality(dataset_root):
    (dataset_root / "darkfield" / "img1.tif").unlink()
    np.save(dataset_root / "darkfield" / "img1.npy", np.zeros((2, 21, 27), np.float32))
    text = _problems(dataset_root)
    assert f"{dataset_root / 'darkfield' / 'img1.npy'}: wrong dimensionality" in text


def test_rgb_is_a_warning_not_an_error(dataset_root):
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 255, (21, 27, 3)).astype(np.uint8)
    Image.fromarray(rgb, mode="RGB").save(dataset_root / "attenuation" / "img0.png")
    with pytest.warns(UserWarning, match="img0.png: colour"):
        assert validate_dataset(dataset_root) == []


def test_unknown_extension_and_directory(dataset_root):
    (dataset_root / "attenuation" / "notes.txt").write_text("hello")
    (dataset_root / "darkfield" / "img9.tif").mkdir()
    text = _problems(dataset_root)
    assert f"{dataset_root / 'attenuation' / 'notes.txt'}: unknown image extension '.txt'" in text
    assert f"{dataset_root / 'darkfield' / 'img9.tif'}: is a directory" in text


def test_manifest_row_names_missing_file(dataset_root):
    with (dataset_root / "manifest.csv").open("a") as fh:
        fh.write("ghost,pat9,test\n")
    text = _problems(dataset_root)
    assert "id 'ghost' names missing files" in text
    assert str(dataset_root / "attenuation" / "ghost") in text


def test_unknown_split_duplicate_id_and_patient_in_two_splits(dataset_root):
    with (dataset_root / "manifest.csv").open("a") as fh:
        fh.write("img0,pat7,valid\nimg1,pat0,train\nimg9,pat1,test\n")
    text = _problems(dataset_root)
    assert "manifest.csv: line 6: unknown split 'valid'" in text
    assert "duplicate id 'img1'" in text
    assert "patient 'pat1' appears in more than one split" in text


def test_mask_shape_mismatch_and_non_integer(dataset_root):
    write_image(dataset_root / "masks" / "img0.png", np.zeros((5, 5), np.uint16))
    write_image(dataset_root / "masks" / "img1.tif", np.full((21, 27), 0.5, np.float32))
    (dataset_root / "masks" / "img1.png").unlink()
    text = _problems(dataset_root)
    assert f"{dataset_root / 'masks' / 'img0.png'}: mask shape (5, 5) does not match" in text
    assert f"{dataset_root / 'masks' / 'img1.tif'}: mask values must be non-negative" in text


def test_every_problem_at_once(dataset_root):
    (dataset_root / "darkfield" / "img1.tif").unlink()
    (dataset_root / "attenuation" / "img2.png").write_bytes(b"")
    write_image(dataset_root / "darkfield" / "img3.tif", np.zeros((3, 3), np.float32))
    problems = validate_dataset(dataset_root)
    assert len(problems) == 3, problems


def test_dataset_refuses_invalid_folder_listing_problems(dataset_root):
    (dataset_root / "darkfield" / "img1.tif").unlink()
    with pytest.raises(ValueError) as info:
        PairedDataset(dataset_root)
    assert "img1.png: missing partner" in str(info.value)


def test_missing_root(tmp_path):
    assert validate_dataset(tmp_path / "nowhere") == [
        f"{tmp_path / 'nowhere'}: data folder not found"
    ]


# ------------------------------------------------------------------ PairedDataset


def test_item_shapes_dtypes_and_values(dataset_root):
    ds = PairedDataset(dataset_root, pad_multiple=16)
    assert len(ds) == 4
    item = ds[0]
    assert item["id"] == "img0" and item["patient"] == "pat0" and item["split"] == "train"
    for key, dtype in (("input", torch.float32), ("target", torch.float32), ("mask", torch.int32)):
        assert item[key].shape == (1, 32, 32) and item[key].dtype == dtype
    from darkfield_nb.io import read_image

    att = read_image(dataset_root / "attenuation" / "img0.png")
    target = read_image(dataset_root / "darkfield" / "img0.tif")
    mask = read_image(dataset_root / "masks" / "img0.png")
    np.testing.assert_allclose(unpad(item["input"], item["pad"])[0].numpy(), normalize_input(att))
    np.testing.assert_array_equal(unpad(item["target"], item["pad"])[0].numpy(), target)
    np.testing.assert_array_equal(unpad(item["mask"], item["pad"])[0].numpy(), mask)


def test_split_selection(dataset_root):
    assert PairedDataset(dataset_root, split="train").ids == ["img0", "img1"]
    assert len(PairedDataset(dataset_root, split=["train", "val"])) == 4
    with pytest.raises(ValueError, match="unknown split 'training'"):
        PairedDataset(dataset_root, split="training")


def test_visibility_units_converted(tmp_path):
    root = make_dataset(tmp_path / "vis", n=2, masks=False)
    v = np.full((21, 27), 0.8, np.float32)
    write_image(root / "darkfield" / "img0.tif", v)
    write_sidecar(root, {"darkfield_units": "visibility"})
    item = PairedDataset(root, pad_multiple=1)[0]
    np.testing.assert_allclose(item["target"][0].numpy(), -np.log(0.8), rtol=1e-6)


def test_missing_mask_gives_zeros(dataset_root):
    (dataset_root / "masks" / "img1.png").unlink()
    item = PairedDataset(dataset_root)[1]
    assert item["mask"].dtype == torch.int32 and int(item["mask"].abs().sum()) == 0


def test_batches_with_crop_and_dataloader(tmp_path):
    root = make_dataset(tmp_path / "ds", n=4, shape=(40, 36))
    ramp = np.arange(44 * 50, dtype=np.uint16).reshape(44, 50)  # not constant: inputs need contrast
    write_image(root / "attenuation" / "img3.png", ramp)
    write_image(root / "darkfield" / "img3.tif", np.zeros((44, 50), np.float32))
    write_image(root / "masks" / "img3.png", np.zeros((44, 50), np.uint16))
    ds = PairedDataset(root, crop_size=32, augment=Augment(seed=1))
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["input"].shape == (4, 1, 32, 32) and batch["pad"].shape == (4, 4)
    assert unpad(batch["input"], batch["pad"]).shape == (4, 1, 32, 32)
    with pytest.raises(ValueError, match=r"img3.png: image \(44, 50\) is smaller than crop_size"):
        PairedDataset(root, crop_size=48)[3]


def test_augmentation_deterministic_and_epoch_dependent(dataset_root):
    ds = PairedDataset(dataset_root, augment=Augment(seed=5, hflip=0.5, max_shift=4))
    a, b = ds[2], ds[2]
    assert torch.equal(a["input"], b["input"]) and torch.equal(a["target"], b["target"])
    ds.set_epoch(1)
    assert not torch.equal(ds[2]["input"], a["input"])


def test_augmentation_keeps_pairs_aligned(tmp_path):
    """A marker pixel placed at the same spot in input, target and mask moves together."""
    root = tmp_path / "marker"
    shape = (24, 30)
    att = np.full(shape, 1000, np.uint16)
    target = np.zeros(shape, np.float32)
    mask = np.zeros(shape, np.uint16)
    att[9, 11], target[9, 11], mask[9, 11] = 60000, 1.0, 1
    write_image(root / "attenuation" / "m.png", att)
    write_image(root / "darkfield" / "m.tif", target)
    write_image(root / "masks" / "m.png", mask)
    write_manifest(root, [{"id": "m", "patient": "p", "split": "train"}])
    aug = Augment(seed=0, hflip=0.5, max_shift=5, noise=(0.0, 0.0), unsharp=0.0, window=0.0)
    ds = PairedDataset(root, augment=aug, crop_size=(20, 26), pad_multiple=1)
    seen = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        item = ds[0]
        t = np.argwhere(item["target"][0].numpy() == item["target"].max().item())
        m = np.argwhere(item["mask"][0].numpy() == 1)
        x = np.argwhere(item["input"][0].numpy() == item["input"].max().item())
        assert len(t) == len(m) == len(x) == 1, (t, m, x)
        assert (t == m).all() and (t == x).all()
        seen.add(tuple(t[0]))
    assert len(seen) > 3  # it did move


def test_display_processing_changes_input_only(dataset_root):
    """Input differs from the plain normalized image; target and mask are untouched."""
    plain = PairedDataset(dataset_root)
    aug = Augment(seed=2, display=1.0, max_shift=0, hflip=0.0)
    augmented = PairedDataset(dataset_root, augment=aug)
    a, b = plain[1], augmented[1]
    assert torch.equal(a["target"], b["target"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.allclose(a["input"], b["input"], atol=1e-3)


def test_display_processing_stays_in_unit_range():
    rng = np.random.default_rng(0)
    x = rng.random((32, 32)).astype(np.float32) * 4000
    aug = Augment(display=1.0, quantize=1.0)
    y = aug.display_processing(x, aug.rng(0))
    assert y.dtype == np.float32 and 0 <= y.min() and y.max() <= 1
    np.testing.assert_allclose(y * 255, np.round(y * 255), atol=1e-3)  # 8-bit levels


def test_cache_gives_same_items(dataset_root):
    ds = PairedDataset(dataset_root, cache=True)
    first = ds[0]["input"].clone()
    (dataset_root / "attenuation" / "img0.png").unlink()  # served from the cache now
    assert torch.equal(ds[0]["input"], first)


@needs_real
def test_real_png_as_input(tmp_path):
    """A real 8-bit radiograph as input with a synthetic target passes validation and loads."""
    root = tmp_path / "real"
    (root / "attenuation").mkdir(parents=True)
    (root / "attenuation" / "r.png").symlink_to(REAL / "00000001_000.png")
    write_image(root / "darkfield" / "r.tif", np.zeros((512, 512), np.float32))
    write_manifest(root, [{"id": "r", "patient": "p", "split": "test"}])
    item = PairedDataset(root)[0]
    assert item["input"].shape == (1, 512, 512)
    assert 0.0 < float(item["input"].median()) < 1.0
