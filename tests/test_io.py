"""Tests of darkfield_nb.io: image round trips, atomic writes, bad input, CSV, real images.

References: the arrays we wrote (exact round trips), Pillow/tifffile/pydicom written files read
back independently, and numpy.corrcoef for the MONOCHROME1 check.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import REAL, dicom_dataset, needs_real
from PIL import Image

from darkfield_nb.io import (
    IMAGE_SUFFIXES,
    ImageReadError,
    atomic_path,
    read_image,
    write_csv,
    write_image,
)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize(
    "name, dtype, high",
    [
        ("a.png", np.uint8, 255),
        ("a.PNG", np.uint16, 65535),
        ("a.tif", np.float32, None),
        ("a.tiff", np.uint16, 65535),
        ("a.tif", np.float64, None),
        ("a.npy", np.float32, None),
        ("a.npy", np.int16, 1000),
    ],
)
def test_round_trip_exact(tmp_path, rng, name, dtype, high):
    """Lossless formats give back exactly the array written (reference: the array itself)."""
    shape = (13, 17)  # odd sizes
    if high is None:
        arr = (rng.standard_normal(shape) * 3).astype(dtype)
    else:
        arr = rng.integers(0, high, shape, endpoint=True).astype(dtype)
    write_image(tmp_path / name, arr)
    back = read_image(tmp_path / name)
    assert back.dtype == np.float32 and back.shape == shape
    np.testing.assert_array_equal(back, arr.astype(np.float32))


def test_png_bit_depths_seen_by_pillow(tmp_path, rng):
    """An independent reader (Pillow) sees 8-bit as mode L and 16-bit as a 16-bit mode."""
    write_image(tmp_path / "a8.png", rng.integers(0, 255, (8, 9)).astype(np.uint8))
    write_image(tmp_path / "a16.png", rng.integers(0, 65535, (8, 9)).astype(np.uint16))
    with Image.open(tmp_path / "a8.png") as im:
        assert im.mode == "L"
    with Image.open(tmp_path / "a16.png") as im:
        assert im.mode.startswith("I;16") or im.mode == "I"
        assert np.asarray(im).max() > 255


def test_tiff_float32_zlib_readable_by_tifffile(tmp_path, rng):
    arr = rng.random((16, 12)).astype(np.float32)
    write_image(tmp_path / "d.tif", arr)
    with tifffile.TiffFile(tmp_path / "d.tif") as tif:
        page = tif.pages[0]
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert page.dtype == np.float32
        assert 306 not in page.tags  # no DateTime tag: output does not depend on the clock
        np.testing.assert_array_equal(page.asarray(), arr)


def test_bool_png_is_uint8_zero_one(tmp_path):
    arr = np.eye(6, dtype=bool)
    write_image(tmp_path / "m.png", arr)
    np.testing.assert_array_equal(read_image(tmp_path / "m.png"), arr.astype(np.float32))


def test_jpeg_round_trip_approximate(tmp_path):
    """JPEG is lossy: a smooth uint8 ramp comes back within a few grey levels."""
    yy, xx = np.mgrid[0:32, 0:48]
    arr = (2 * yy + 3 * xx).astype(np.uint8)
    write_image(tmp_path / "a.jpg", arr)
    back = read_image(tmp_path / "a.jpg")
    assert back.shape == arr.shape and back.dtype == np.float32
    assert np.abs(back - arr).mean() < 2.0


@pytest.mark.parametrize("name", ["a.png", "a.tif", "a.npy", "a.jpg"])
def test_write_is_deterministic(tmp_path, rng, name):
    arr = rng.integers(0, 255, (20, 30)).astype(np.uint8)
    write_image(tmp_path / "one" / name, arr)
    write_image(tmp_path / "two" / name, arr)
    assert _digest(tmp_path / "one" / name) == _digest(tmp_path / "two" / name)


def test_dicom_rescale_and_monochrome1(tmp_path):
    """A hand-made DICOM: value = stored * slope + intercept; MONOCHROME1 -> max + min - value."""
    stored = np.arange(12, dtype=np.uint16).reshape(3, 4) * 10

    def make(photometric: str) -> Path:
        ds = dicom_dataset(*stored.shape, photometric=photometric)
        ds.RescaleSlope, ds.RescaleIntercept = 2, -5
        ds.PixelData = stored.tobytes()
        path = tmp_path / f"{photometric}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return path

    mono2 = read_image(make("MONOCHROME2"))
    expected = stored * 2.0 - 5.0
    np.testing.assert_array_equal(mono2, expected.astype(np.float32))
    mono1 = read_image(make("MONOCHROME1"))
    np.testing.assert_array_equal(mono1, (expected.max() + expected.min() - expected))


def test_dicom_window_applied_by_the_dicom_linear_formula(tmp_path):
    """Window Center/Width present: values follow PS3.3 C.11.2.1.2.1 (LINEAR), written out by
    hand here: x <= c - 0.5 - (w-1)/2 -> y_min; x > c - 0.5 + (w-1)/2 -> y_max; else
    ((x - (c - 0.5)) / (w - 1) + 0.5) (y_max - y_min) + y_min, with [y_min, y_max] the
    range of the stored bits (12 bits: [0, 4095])."""
    stored = np.arange(12, dtype=np.uint16).reshape(3, 4) * 10
    ds = dicom_dataset(*stored.shape, bits_stored=12)
    ds.WindowCenter, ds.WindowWidth = 50, 41
    ds.PixelData = stored.tobytes()
    path = tmp_path / "window.dcm"
    ds.save_as(path, enforce_file_format=True)

    x = stored.astype(np.float64)
    c, w, y_min, y_max = 50.0, 41.0, 0.0, 4095.0
    lo, hi = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    ramp = ((x - (c - 0.5)) / (w - 1) + 0.5) * (y_max - y_min) + y_min
    expected = np.where(x <= lo, y_min, np.where(x > hi, y_max, ramp))
    assert 0 < np.count_nonzero((x > lo) & (x <= hi)) < x.size  # the case covers all three
    np.testing.assert_allclose(read_image(path), expected.astype(np.float32), rtol=1e-6)


def test_write_csv_reads_back_with_csv_module(tmp_path):
    """Reference: the standard library's csv.DictReader on the written text."""
    rows = [{"b": 1.5, "a": None}, {"a": "x,y", "c": float("nan"), "b": True}]
    columns = write_csv(tmp_path / "t.csv", rows, columns=("a",))
    assert columns == ["a", "b", "c"]
    text = (tmp_path / "t.csv").read_text()
    assert "\r" not in text
    back = list(csv.DictReader(io.StringIO(text)))
    assert back == [{"a": "", "b": "1.5", "c": ""}, {"a": "x,y", "b": "True", "c": "nan"}]


# ------------------------------------------------------------------ atomic writes


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.npy"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    """If the encoder raises, the previous file under the final name is untouched."""
    target = tmp_path / "a.tif"
    old = np.ones((4, 4), np.float32)
    write_image(target, old)
    before = _digest(target)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(OSError, match="disk full"):
        write_image(target, np.zeros((4, 4), np.float32))
    assert _digest(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.tif"]


@pytest.mark.parametrize(
    "name, array, problem",
    [
        ("f.png", np.zeros((4, 4), np.float32), "PNG stores uint8 or uint16"),
        ("f.png", np.zeros((4, 4), np.int32), "PNG stores uint8 or uint16"),
        ("f.jpg", np.zeros((4, 4), np.uint16), "JPEG stores uint8"),
        ("f.tif", np.array([[1.0, np.nan], [np.inf, 0.0]], np.float32), "2 non-finite"),
        ("f.tif", np.zeros((2, 4, 4), np.float32), "2-D"),
        ("f.dcm", np.zeros((4, 4), np.uint16), "cannot write extension"),
        ("f.bmp", np.zeros((4, 4), np.uint8), "cannot write extension"),
    ],
)
def test_write_refuses(tmp_path, name, array, problem):
    with pytest.raises(ValueError) as info:
        write_image(tmp_path / name, array)
    assert str(tmp_path / name) in str(info.value) and problem in str(info.value)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ bad input


def _assert_read_error(path: Path, problem: str) -> None:
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert problem in message, message


def test_missing_file(tmp_path):
    _assert_read_error(tmp_path / "nope.png", "not found")


def test_directory(tmp_path):
    (tmp_path / "dir.png").mkdir()
    _assert_read_error(tmp_path / "dir.png", "is a directory")


def test_unknown_extension(tmp_path):
    path = tmp_path / "x.bmp"
    path.write_bytes(b"BM")
    _assert_read_error(path, "unknown image extension '.bmp'")
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert all(s in str(info.value) for s in IMAGE_SUFFIXES)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".npy", ".jpg", ".dcm"])
def test_empty_file(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.touch()
    _assert_read_error(path, "empty file")


@pytest.mark.parametrize("suffix", [".png", ".tif", ".npy", ".jpg"])
def test_corrupt_file(tmp_path, suffix):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(b"this is not an image at all" * 10)
    _assert_read_error(path, "unreadable")


def test_truncated_png(tmp_path, rng):
    path = tmp_path / "cut.png"
    write_image(path, rng.integers(0, 65535, (64, 64)).astype(np.uint16))
    path.write_bytes(path.read_bytes()[:200])
    _assert_read_error(path, "unreadable")


def test_corrupt_dicom(tmp_path):
    pytest.importorskip("pydicom")
    path = tmp_path / "bad.dcm"
    path.write_bytes(b"no dicom here" * 20)
    _assert_read_error(path, "not a readable DICOM")


def test_dicom_without_pydicom(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "pydicom":
            raise ImportError("No module named 'pydicom'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    path = tmp_path / "x.dcm"
    path.write_bytes(b"x" * 200)
    with pytest.raises(ImportError, match=r"pip install darkfield-nb\[dicom\]"):
        read_image(path)


@pytest.mark.parametrize(
    "name, array",
    [("vol.npy", np.zeros((2, 5, 6), np.float32)), ("vol.tif", np.zeros((5, 5, 6), np.uint16))],
)
def test_wrong_dimensionality(tmp_path, name, array):
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, array)
    else:
        tifffile.imwrite(path, array, photometric="minisblack")
    _assert_read_error(path, "wrong dimensionality")


def test_one_dimensional_npy(tmp_path):
    path = tmp_path / "line.npy"
    np.save(path, np.arange(10.0))
    _assert_read_error(path, "wrong dimensionality")


def test_singleton_axis_is_dropped(tmp_path):
    path = tmp_path / "chw.npy"
    arr = np.arange(20, dtype=np.float32).reshape(1, 4, 5)
    np.save(path, arr)
    np.testing.assert_array_equal(read_image(path), arr[0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("suffix", [".npy", ".tif"])
def test_nonfinite_rejected_with_count(tmp_path, bad, suffix):
    arr = np.zeros((5, 5), np.float32)
    arr[1, 1] = arr[2, 3] = bad
    path = tmp_path / f"nf{suffix}"
    if suffix == ".npy":
        np.save(path, arr)
    else:
        tifffile.imwrite(path, arr)
    kind = "2 NaN" if np.isnan(bad) else "2 Inf"
    _assert_read_error(path, kind)
    back = read_image(path, allow_nonfinite=True)
    assert (~np.isfinite(back)).sum() == 2


def test_rgb_png_converted_with_warning(tmp_path, rng):
    """Reference: BT.601 luma computed here by hand from the channels we wrote."""
    rgb = rng.integers(0, 255, (6, 7, 3)).astype(np.uint8)
    path = tmp_path / "colour.png"
    Image.fromarray(rgb, mode="RGB").save(path)
    with pytest.warns(UserWarning, match="colour.png") as record:
        grey = read_image(path)
    assert "converted to grey" in str(record[0].message)
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(grey, expected, atol=1e-3)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_other_colour_pngs_converted_with_warning(tmp_path, rng, mode):
    grey = rng.integers(0, 255, (6, 7)).astype(np.uint8)
    image = Image.fromarray(grey, mode="L").convert(mode)  # grey content, colour mode
    path = tmp_path / f"{mode}.png"
    image.save(path)
    with pytest.warns(UserWarning, match=f"{mode}.png"):
        back = read_image(path)
    np.testing.assert_allclose(back, grey, atol=1.0)  # palette quantization aside


def test_rgb_tiff_and_npy_converted_with_warning(tmp_path, rng):
    rgb = rng.random((8, 9, 3)).astype(np.float32)
    expected = rgb @ np.array([0.299, 0.587, 0.114])
    tifffile.imwrite(tmp_path / "c.tif", rgb, photometric="rgb")
    np.save(tmp_path / "c.npy", rgb)
    for name in ("c.tif", "c.npy"):
        with pytest.warns(UserWarning, match=name):
            np.testing.assert_allclose(read_image(tmp_path / name), expected, rtol=1e-5)


def test_rgb_jpeg_converted_with_warning(tmp_path):
    rgb = np.full((16, 16, 3), (200, 100, 50), np.uint8)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "c.jpg", quality=95)
    with pytest.warns(UserWarning, match="c.jpg"):
        grey = read_image(tmp_path / "c.jpg")
    assert abs(float(grey.mean()) - (0.299 * 200 + 0.587 * 100 + 0.114 * 50)) < 3


# ------------------------------------------------------------------ real images


@needs_real
@pytest.mark.parametrize("name", ["00000001_000.png", "00027426_000.png"])
def test_real_png(name):
    image = read_image(REAL / name)
    assert image.shape == (512, 512) and image.dtype == np.float32
    assert 0 <= image.min() < image.max() <= 255


@needs_real
def test_real_dicom_and_monochrome1():
    pytest.importorskip("pydicom")
    mono2 = read_image(REAL / "siim_chest_pa.dcm")
    mono1 = read_image(REAL / "siim_chest_pa_monochrome1.dcm")
    assert mono2.shape == (1024, 1024) and mono2.dtype == np.float32
    assert mono1.shape == (1024, 1024)
    r = np.corrcoef(mono1.ravel().astype(np.float64), mono2.ravel().astype(np.float64))[0, 1]
    assert r < -0.99
    # the range is kept: max + min - x maps [min, max] onto itself
    assert mono1.min() == mono2.min() and mono1.max() == mono2.max()


def test_tiff_min_is_white_inverted(tmp_path):
    """TIFF photometric MINISWHITE is inverted like DICOM MONOCHROME1: max + min - value."""
    arr = np.array([[10, 20], [30, 50]], np.uint16)
    tifffile.imwrite(tmp_path / "w.tif", arr, photometric="miniswhite")
    np.testing.assert_array_equal(read_image(tmp_path / "w.tif"), 60 - arr.astype(np.float32))


def test_big_endian_array_written_correctly(tmp_path):
    arr = (np.arange(12) * 5000).astype(">u2").reshape(3, 4)
    write_image(tmp_path / "be.png", arr)
    np.testing.assert_array_equal(read_image(tmp_path / "be.png"), arr.astype(np.float32))


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    """mkstemp creates 0600 files; written outputs must follow the umask like open() does."""
    from darkfield_nb.io import atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    (tmp_path / "b.txt").write_text("x")  # the reference: a plain open()
    assert (
        os.stat(tmp_path / "a.txt").st_mode & 0o777 == os.stat(tmp_path / "b.txt").st_mode & 0o777
    )
