"""Hostile input (issue 14): every kind of bad input gets one line naming the file and the problem.

One row of ``CASES`` per kind: how the bad input is built, the entry point it is fed to, whether
the user sees an error or a warning, and the fragments the message must contain. Every message
must start with the file (or folder) it is about and fit on one line. Add a row per new kind.

The references are the inputs themselves: files built on purpose (a PNG header declaring
30000 x 30000 pixels, a TIFF whose size tags were overwritten, a float64 array holding 1e300,
a constant image, a manifest without a ``val`` split) and faults injected with ``monkeypatch``
(a disk that is full, a folder that refuses files: the tests run as root, where ``chmod`` does
not stop a write).

Kinds tried (issue 14 item; "before" = already handled by the code before issue 14):

=====================================  =================  ========================================
kind                                   entry point        message (fragments)
=====================================  =================  ========================================
missing file (before)                  read_image         file not found
zero-byte file (before)                read_image         empty file (0 bytes)
truncated PNG (before)                 read_image         corrupt or unreadable image
text file named .png (before)          read_image         corrupt or unreadable image
unknown extension (before)             read_image         unknown image extension '.bmp'
pickled object array (before)          read_image         corrupt or unreadable .npy file
3-D stack (before)                     read_image         wrong dimensionality
NaN in an array (before)               read_image         contains non-finite values (1 NaN
missing partner (before)               validate           missing partner
shape mismatch (before)                validate           does not match its partner
PNG bomb 30000 x 30000 (7)             read_image         900,000,000 pixels ... decompression bomb
PNG bomb 10000 x 10000 (7)             read_image         100,000,000 pixels ... decompression bomb
TIFF bomb 30000 x 30000 (7)            read_image         30000 x 30000 = 900,000,000 pixels
DICOM bomb 30000 x 30000 (7)           read_image         30000 x 30000 = 900,000,000 pixels
PNG bomb in a data set (7)             validate           decompression bomb
float64 beyond float32, npy (8)        read_image         values beyond float32 range (max |x| =
float64 beyond float32, tif (8)        read_image         values beyond float32 range (max |x| =
constant radiograph (3)                check_radiograph   constant image (every pixel is 1000)
constant radiograph in a data set (3)  validate           constant image
constant radiograph, unchecked (3)     PairedDataset[i]   constant image
constant dark-field target (3)         validate warning   constant dark-field target
16 x 16 image (6)                      validate           16 x 16 px, too small ... at least 17 px
12 x 40 image (6)                      check_radiograph   12 x 40 px, too small
16 x 16 image, unchecked (6)           PairedDataset[i]   16 x 16 px, too small
crop smaller than the model takes (6)  PairedDataset      crop_size (16, 16) is smaller
empty val split (5)                    validate warning   split 'val' has no images
empty train split (5)                  validate warning   split 'train' has no images
empty val split, training (5)          require_splits     split 'val' has no images
NaN in results JSON (4)                write_json         refusing to write 1 non-finite ... NaN
Inf in a numpy array in JSON (4)       write_json         2 non-finite value(s)
JSON path is a directory (10)          write_json         is a directory
--json path is a directory (10)        check_output_file  is a directory, expected a file name
output folder is a file (10)           check_writable_dir is a file, expected a folder
output folder under a file (10)        check_writable_dir is a file, not a folder
output folder not writable (10)        check_writable_dir permission denied
disk full during a write (10)          write_image        no space left on the device
=====================================  =================  ========================================

The commands (Part B): these rows run ``darkfield_nb.cli.main`` and read its stderr; each error
is one line ``darkfield-nb <command>: error: <message>``, exit status 2, no traceback. The
hostile pickles also check that no code ran.

================================================  ================  ================================
kind                                              entry point       message (fragments)
================================================  ================  ================================
checkpoint weights do not match its config (9)    evaluate          weights do not match its gene...
checkpoint without one stage's weights (9)        evaluate          missing (first: stages.1.
unknown generator_config key (9)                  evaluate          invalid generator_config
stages_trained out of range (9)                   evaluate          stages_trained=7 is out of ra...
stage out of range (9)                            checkpoint.load   stage=-1 is out of range
empty checkpoint file (9)                         evaluate          not a PyTorch checkpoint file...
text file as checkpoint (9)                       evaluate          not a PyTorch checkpoint file...
truncated checkpoint (9)                          evaluate          not a readable PyTorch checkp...
untrained checkpoint (stages_trained 0) (9)       evaluate          no stage of this generator is...
checkpoint is a directory (before)                evaluate          is a directory, expected a ch...
missing checkpoint (before)                       evaluate          checkpoint not found
plain state dict as checkpoint (before)           evaluate          not a darkfield-nb checkpoint
hostile pickle: reduce-in-history (before)        evaluate          refusing to load: the file ho...
hostile pickle: reduce-top-level (before)         evaluate          refusing to load
hostile pickle: legacy-format (before)            evaluate          refusing to load
hostile pickle: bare-pickle (before)              evaluate          refusing to load
NaN weights (4)                                   evaluate          generator weights hold
evaluate --json is a directory (10)               evaluate          is a directory, expected a fi...
evaluate --json under a file (10)                 evaluate          is a file, expected a folder
evaluate an empty split (5)                       evaluate          split 'test' has no images, b...
train --resume, no last.pt (2)                    train             nothing to resume: no last.pt...
train --resume after a killed first save (2)      train             nothing to resume
train --resume, run folder missing (2)            train             nothing to resume: the folder...
train --resume with other settings (11)           train             seed: given 5, stored 0
train with an empty val split (5)                 train             split 'val' has no images, bu...
train on a 16 x 16 image (6)                      train             image is 16 x 16 px, too small
train run folder is a file (10)                   train             is a file, expected a folder
train run folder not writable (10)                train             permission denied
train disk full at the first checkpoint (10)      train             cannot write: no space left o...
torch.save fails on a full disk (10)              checkpoint.save   cannot write the checkpoint: ...
make-data --out is a file (10)                    make-data         is a file, expected a folder
make-data --out not empty (before)                make-data         output folder is not empty (1...
make-data --out not writable (10)                 make-data         permission denied
make-data read-only subfolder (10)                make-data         permission denied
make-data disk full (10)                          make-data         cannot write: no space left o...
validate prints an empty split as a warning (5)   validate warning  split 'val' has no images
================================================  ================  ================================

Leftovers (item 12) are behaviour, not messages: tests below check that ``list_images``,
``validate`` and the checksums never take a temporary file for data, and that
``clean_stale_temporaries`` removes only our own stale temporaries.
"""

from __future__ import annotations

import errno
import os
import struct
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from helpers import dicom_dataset

from darkfield_nb.io import read_image, write_image

# Names new in issue 14 are imported inside the entry points, so that each row runs (and fails
# on its own) against the code before the fix.


# ------------------------------------------------------------------ builders


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` 8-bit grey pixels but holds a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _png_bomb(tmp: Path, side: int) -> Path:
    path = tmp / f"bomb{side}.png"
    path.write_bytes(_png_header(side, side))
    return path


def _tiff_bomb(tmp: Path) -> Path:
    """A 2 x 2 TIFF whose size tags are overwritten to say 30000 x 30000."""
    path = tmp / "bomb.tif"
    tifffile.imwrite(path, np.zeros((2, 2), np.uint8), photometric="minisblack", metadata=None)
    with tifffile.TiffFile(path, mode="r+") as tif:
        for tag in ("ImageWidth", "ImageLength", "RowsPerStrip"):
            tif.pages[0].tags[tag].overwrite(30000)
    return path


def _dicom_bomb(tmp: Path) -> Path:
    """A DICOM whose Rows and Columns say 30000 x 30000 over 8 bytes of pixel data."""
    ds = dicom_dataset(30000, 30000)
    ds.PixelData = bytes(8)
    path = tmp / "bomb.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _ramp(shape=(24, 24)) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.uint16).reshape(shape) * 7


def _dataset(tmp: Path, splits=("train", "train", "val", "test"), shape=(24, 24)) -> Path:
    """A valid paired data set: one image per patient, ``splits`` gives each one's split."""
    from darkfield_nb.contract import write_manifest

    root = tmp / "ds"
    rng = np.random.default_rng(3)
    rows = []
    for k, split in enumerate(splits):
        write_image(root / "attenuation" / f"img{k}.png", _ramp(shape) + k)
        write_image(root / "darkfield" / f"img{k}.tif", rng.random(shape).astype(np.float32))
        rows.append({"id": f"img{k}", "patient": f"p{k}", "split": split})
    write_manifest(root, rows)
    return root


def _file(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _npy(tmp: Path, name: str, array: np.ndarray, **kw) -> Path:
    path = tmp / name
    np.save(path, array, **kw)
    return path


def _with_attenuation(tmp: Path, array: np.ndarray) -> tuple[Path, Path]:
    """A data set whose img1 input is ``array`` (target resized to match)."""
    root = _dataset(tmp)
    write_image(root / "attenuation" / "img1.png", array)
    write_image(
        root / "darkfield" / "img1.tif", np.full(array.shape, 0.2, np.float32) + _tiny(array)
    )
    return root, root / "attenuation" / "img1.png"


def _tiny(array: np.ndarray) -> np.ndarray:
    return np.linspace(0, 1e-3, array.size, dtype=np.float32).reshape(array.shape)


def _deny_mkstemp(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)


def _disk_full(monkeypatch) -> None:
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", full)


# ------------------------------------------------------------------ entry points


def _raised(call: Callable[[], Any]) -> dict[str, list[str]]:
    """Run ``call``; the message of the ValueError/OSError it raises, and its warnings."""
    errors: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            call()
        except (ValueError, OSError) as exc:
            errors.append(str(exc))
    return {"error": errors, "warning": [str(w.message) for w in caught]}


def _validate(root: Path) -> dict[str, list[str]]:
    from darkfield_nb.data import validate_dataset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        errors = validate_dataset(root)
    return {"error": errors, "warning": [str(w.message) for w in caught]}


def _item(arg: tuple[Path, int]) -> dict[str, list[str]]:
    from darkfield_nb.data import PairedDataset

    root, index = arg
    return _raised(lambda: PairedDataset(root, check=False, pad_multiple=1)[index])


def _check_radiograph(path: Path) -> dict[str, list[str]]:
    from darkfield_nb.contract import check_radiograph

    return _raised(lambda: check_radiograph(path, read_image(path)))


def _require_splits(root: Path) -> dict[str, list[str]]:
    from darkfield_nb.data import require_splits

    return _raised(lambda: require_splits(root))


def _write_json(arg: tuple[Path, Any]) -> dict[str, list[str]]:
    from darkfield_nb.io import write_json

    return _raised(lambda: write_json(*arg))


def _writable(folder: Path) -> dict[str, list[str]]:
    from darkfield_nb.io import check_writable_dir

    return _raised(lambda: check_writable_dir(folder))


def _output_file(path: Path) -> dict[str, list[str]]:
    from darkfield_nb.io import check_output_file

    return _raised(lambda: check_output_file(path))


def _crop(root: Path) -> dict[str, list[str]]:
    from darkfield_nb.data import PairedDataset

    return _raised(lambda: PairedDataset(root, crop_size=16))


ENTRY: dict[str, Callable[[Any], dict[str, list[str]]]] = {
    "read_image": lambda path: _raised(lambda: read_image(path)),
    "validate": _validate,
    "PairedDataset[i]": _item,
    "PairedDataset": _crop,
    "check_radiograph": _check_radiograph,
    "require_splits": _require_splits,
    "write_json": _write_json,
    "check_output_file": _output_file,
    "check_writable_dir": _writable,
    "write_image": lambda arg: _raised(lambda: write_image(*arg)),
}


# ------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Case:
    """One kind of bad input.

    ``make(tmp_path, monkeypatch)`` builds it and returns ``(argument of the entry point, the
    path, or for an argument problem the name, the message must start with)``; ``expect`` are
    fragments of that one message; ``level`` is "error" (raised or returned) or "warning".
    """

    kind: str
    entry: str
    make: Callable[[Path, pytest.MonkeyPatch], tuple[Any, Path | str]]
    expect: tuple[str, ...]
    level: str = "error"
    after: Callable[[Path], None] | None = None  # a check of what the run left, if any


def _same(path: Path) -> tuple[Path, Path]:
    return path, path


def _nan_array(t: Path, m) -> tuple[Path, Path]:
    a = np.ones((24, 24))
    a[3, 4] = np.nan
    return _same(_npy(t, "n.npy", a))


def _missing_partner(t: Path, m) -> tuple[Path, Path]:
    root = _dataset(t)
    (root / "darkfield" / "img2.tif").unlink()
    return root, root / "attenuation" / "img2.png"


def _shape_mismatch(t: Path, m) -> tuple[Path, Path]:
    root = _dataset(t)
    write_image(root / "darkfield" / "img0.tif", _tiny(np.zeros((24, 30))))
    return root, root / "attenuation" / "img0.png"


def _bomb_in_dataset(t: Path, m) -> tuple[Path, Path]:
    root = _dataset(t)
    (root / "attenuation" / "img3.png").write_bytes(_png_header(30000, 30000))
    return root, root / "attenuation" / "img3.png"


def _float64_tif(t: Path, m) -> tuple[Path, Path]:
    tifffile.imwrite(t / "big.tif", np.full((20, 20), 3.5e38))  # float64
    return _same(t / "big.tif")


def _png(t: Path, name: str, array: np.ndarray) -> tuple[Path, Path]:
    write_image(t / name, array)
    return _same(t / name)


def _item_case(t: Path, array: np.ndarray) -> tuple[tuple[Path, int], Path]:
    root, path = _with_attenuation(t, array)
    return (root, 1), path  # img1 is item 1 of the manifest


def _constant_target(t: Path, m) -> tuple[Path, Path]:
    root = _dataset(t)
    write_image(root / "darkfield" / "img0.tif", np.zeros((24, 24), np.float32))
    return root, root / "darkfield" / "img0.tif"


def _manifest_of(splits) -> Callable[[Path, Any], tuple[Path, Path]]:
    def make(t: Path, m) -> tuple[Path, Path]:
        root = _dataset(t, splits)
        return root, root / "manifest.csv"

    return make


def _blocked_folder(t: Path, m) -> tuple[Path, Path]:
    _file(t, "out", b"x")
    return _same(t / "out" / "run")


def _unwritable_folder(t: Path, m) -> tuple[Path, Path]:
    _deny_mkstemp(m)
    return _same(t / "out")


def _full_disk(t: Path, m) -> tuple[tuple[Path, np.ndarray], Path]:
    _disk_full(m)
    return (t / "d.tif", np.ones((4, 4), np.float32)), t / "d.tif"


def _json(name: str, obj) -> Callable[[Path, Any], tuple[tuple[Path, Any], Path]]:
    return lambda t, m: ((t / name, obj), t / name)


CASES = [
    # -- handled before issue 14 (regression rows)
    Case("missing file", "read_image", lambda t, m: _same(t / "nope.png"), ("file not found",)),
    Case(
        "zero-byte file",
        "read_image",
        lambda t, m: _same(_file(t, "z.png", b"")),
        ("empty file (0 bytes)",),
    ),
    Case(
        "truncated PNG",
        "read_image",
        lambda t, m: _same(_file(t, "t.png", _png_header(64, 64)[:40])),
        ("corrupt or unreadable image",),
    ),
    Case(
        "text file named .png",
        "read_image",
        lambda t, m: _same(_file(t, "notes.png", b"this is not an image\n")),
        ("corrupt or unreadable image",),
    ),
    Case(
        "unknown extension",
        "read_image",
        lambda t, m: _same(_file(t, "x.bmp", b"BM....")),
        ("unknown image extension '.bmp'",),
    ),
    Case(
        "pickled object array",
        "read_image",
        lambda t, m: _same(_npy(t, "p.npy", np.array([{"a": 1}], object), allow_pickle=True)),
        ("corrupt or unreadable .npy file",),
    ),
    Case(
        "3-D stack",
        "read_image",
        lambda t, m: _same(_npy(t, "s.npy", np.zeros((5, 24, 24), np.float32))),
        ("wrong dimensionality",),
    ),
    Case("NaN in an array", "read_image", _nan_array, ("contains non-finite values (1 NaN",)),
    Case("missing partner", "validate", _missing_partner, ("missing partner",)),
    Case("shape mismatch", "validate", _shape_mismatch, ("does not match its partner",)),
    # -- item 7: decompression bombs
    Case(
        "PNG bomb 30000 x 30000",
        "read_image",
        lambda t, m: _same(_png_bomb(t, 30000)),
        ("900,000,000 pixels", "decompression bomb"),
    ),
    Case(
        "PNG bomb 10000 x 10000",
        "read_image",
        lambda t, m: _same(_png_bomb(t, 10000)),
        ("100,000,000 pixels", "decompression bomb"),
    ),
    Case(
        "TIFF bomb 30000 x 30000",
        "read_image",
        lambda t, m: _same(_tiff_bomb(t)),
        ("30000 x 30000 = 900,000,000 pixels", "decompression bomb"),
    ),
    Case(
        "DICOM bomb 30000 x 30000",
        "read_image",
        lambda t, m: _same(_dicom_bomb(t)),
        ("30000 x 30000 = 900,000,000 pixels", "decompression bomb"),
    ),
    Case(
        "PNG bomb in a data set",
        "validate",
        _bomb_in_dataset,
        ("900,000,000 pixels", "decompression bomb"),
    ),
    # -- item 8: float64 beyond float32
    Case(
        "float64 beyond float32, npy",
        "read_image",
        lambda t, m: _same(_npy(t, "big.npy", np.where(np.eye(24) > 0, -1e300, 1.0))),
        ("values beyond float32 range (max |x| = 1e+300", "24 of 576 pixels"),
    ),
    Case(
        "float64 beyond float32, tif",
        "read_image",
        _float64_tif,
        ("values beyond float32 range (max |x| = 3.5e+38", "400 of 400 pixels"),
    ),
    # -- item 3: constant images
    Case(
        "constant radiograph",
        "check_radiograph",
        lambda t, m: _png(t, "flat.png", np.full((32, 32), 1000, np.uint16)),
        ("constant image (every pixel is 1000)",),
    ),
    Case(
        "constant radiograph in a data set",
        "validate",
        lambda t, m: _with_attenuation(t, np.full((24, 24), 7, np.uint16)),
        ("constant image (every pixel is 7)",),
    ),
    Case(
        "constant radiograph, unchecked",
        "PairedDataset[i]",
        lambda t, m: _item_case(t, np.zeros((24, 24), np.uint16)),
        ("constant image (every pixel is 0)",),
    ),
    Case(
        "constant dark-field target",
        "validate",
        _constant_target,
        ("constant dark-field target (every pixel is 0)",),
        level="warning",
    ),
    # -- item 6: images too small for the model
    Case(
        "16 x 16 image",
        "validate",
        lambda t, m: _with_attenuation(t, _ramp((16, 16))),
        ("image is 16 x 16 px, too small", "each side must be at least 17 px"),
    ),
    Case(
        "12 x 40 image",
        "check_radiograph",
        lambda t, m: _png(t, "s.png", _ramp((12, 40))),
        ("image is 12 x 40 px, too small", "at least 17 px"),
    ),
    Case(
        "16 x 16 image, unchecked",
        "PairedDataset[i]",
        lambda t, m: _item_case(t, _ramp((16, 16))),
        ("image is 16 x 16 px, too small",),
    ),
    Case(
        "crop smaller than the model takes",
        "PairedDataset",
        lambda t, m: (_dataset(t), "PairedDataset"),
        ("crop_size (16, 16) is smaller", "17 px"),
    ),
    # -- item 5: empty splits
    Case(
        "empty val split",
        "validate",
        _manifest_of(("train", "train", "test")),
        ("split 'val' has no images", "training needs it", "train 2, test 1"),
        level="warning",
    ),
    Case(
        "empty train split",
        "validate",
        _manifest_of(("val", "test")),
        ("split 'train' has no images", "training needs it"),
        level="warning",
    ),
    Case(
        "empty val split, training",
        "require_splits",
        _manifest_of(("train", "train", "test")),
        ("split 'val' has no images, but training needs it",),
    ),
    # -- item 4 (io side): strict JSON
    Case(
        "NaN in results JSON",
        "write_json",
        _json("r.json", {"stages": [{"mse": float("nan")}]}),
        ("refusing to write 1 non-finite value(s)", "stages[0].mse = nan", "NaN"),
    ),
    Case(
        "Inf in a numpy array in JSON",
        "write_json",
        _json("r.json", {"sigma": np.array([1.0, np.inf, -np.inf], np.float32)}),
        ("2 non-finite value(s)", "sigma[1] = inf", "sigma[2] = -inf"),
    ),
    Case(
        "JSON path is a directory",
        "write_json",
        lambda t, m: ((t, {"mse": 0.1}), t),
        ("is a directory",),
    ),
    # -- item 10 (io side): outputs that cannot be written
    Case(
        "--json path is a directory",
        "check_output_file",
        lambda t, m: _same(t),
        ("is a directory, expected a file name",),
    ),
    Case(
        "output folder is a file",
        "check_writable_dir",
        lambda t, m: _same(_file(t, "out", b"x")),
        ("is a file, expected a folder",),
    ),
    Case(
        "output folder under a file",
        "check_writable_dir",
        _blocked_folder,
        ("out is a file, not a folder",),
    ),
    Case(
        "output folder not writable",
        "check_writable_dir",
        _unwritable_folder,
        ("permission denied", "is not writable"),
    ),
    Case(
        "disk full during a write",
        "write_image",
        _full_disk,
        ("cannot write: no space left on the device",),
    ),
]


# ------------------------------------------------------------------ part B: the commands
#
# Rows below run the command line, ``darkfield_nb.cli.main([...])``, and read what the user
# sees on stderr: every expected error must be one line ``darkfield-nb <command>: error: ...``
# (a data set problem lists one file per ``  - `` line), exit status 2, no traceback.


def _cli(argv: list) -> dict[str, list[str]]:
    """Run the command line; the error and warning lines it printed (prefix removed)."""
    import contextlib
    import io as _io

    from darkfield_nb.cli import main

    argv = [str(a) for a in argv]
    err, out = _io.StringIO(), _io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(argv)
    text = err.getvalue()
    assert "Traceback" not in text, text
    prefix = f"darkfield-nb {argv[0]}: "
    errors, warned = [], []
    for line in text.splitlines():
        if line.startswith(prefix + "error: "):
            errors.append(line.removeprefix(prefix + "error: "))
        elif line.startswith(prefix + "warning: "):
            warned.append(line.removeprefix(prefix + "warning: "))
        elif line.startswith("  - "):
            errors.append(line.removeprefix("  - "))
    assert code == (2 if errors else 0), (code, text)
    return {"error": errors, "warning": warned}


ENTRY.update({"train": _cli, "evaluate": _cli, "make-data": _cli, "validate (CLI)": _cli})

#: Tiny training from the command line: one stage, one step, default depth 4 (stride 16).
TRAIN_FLAGS = (
    "--stages", "1", "--epochs", "1", "--batch-size", "2", "--crop-size", "24",
    "--base-width", "4", "--max-steps-per-epoch", "1", "--device", "cpu", "--quiet",
)  # fmt: skip


def _tiny_checkpoint(t: Path, name: str = "c.pt", edit=None) -> Path:
    """A 2-stage depth-2 generator saved by ``checkpoint.save``, then ``edit(raw dict)``."""
    import torch

    from darkfield_nb import checkpoint
    from darkfield_nb.models import GeneratorConfig, ProgressiveGenerator

    torch.manual_seed(0)
    model = ProgressiveGenerator(GeneratorConfig(n_stages=2, base_width=4, depth=2, dropout=0.2))
    path = checkpoint.save(t / name, model, stage=1, epoch=1)
    if edit is not None:
        raw = torch.load(path, weights_only=True)
        edit(raw)
        torch.save(raw, path)
    return path


def _evaluate(
    edit=None,
    ckpt=None,
    extra=(),
    splits=("train", "train", "val", "test"),
    named=None,
    patch=None,
) -> Callable[[Path, Any], tuple[list, Path]]:
    """An ``evaluate`` row: a data set with ``splits``; the checkpoint is ``ckpt(t, m)`` or the
    tiny one after ``edit(raw dict)``; ``extra`` arguments (callables get the folder);
    ``patch(m)`` injects a fault."""

    def make(t: Path, m) -> tuple[list, Path]:
        root = _dataset(t, splits)
        path = ckpt(t, m) if ckpt is not None else _tiny_checkpoint(t, edit=edit)
        if patch is not None:
            patch(m)
        argv = ["evaluate", "--checkpoint", path, "--data", root, "--samples", "2"]
        argv += ["--device", "cpu", "--quiet", *(e(t) if callable(e) else e for e in extra)]
        return argv, named(t) if named is not None else path

    return make


def _nan_weights(raw: dict) -> None:
    key = next(k for k, v in raw["generator"].items() if v.is_floating_point())
    raw["generator"][key] = raw["generator"][key].clone().fill_(float("nan"))


def _drop_stage(raw: dict) -> None:
    raw["generator"] = {k: v for k, v in raw["generator"].items() if not k.startswith("stages.1.")}


def _hostile(kind: str) -> Callable[[Path, Any], Path]:
    """A checkpoint file that would run code if unpickled unsafely: the code creates ``pwned``."""

    def make(t: Path, m) -> Path:
        import pickle

        import torch

        marker = t / "pwned"

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        path = t / f"{kind}.pt"
        if kind == "reduce-in-history":
            _tiny_checkpoint(t, path.name, edit=lambda raw: raw.update(history=[Evil()]))
        elif kind == "reduce-top-level":
            torch.save(Evil(), path)
        elif kind == "legacy-format":
            torch.save({"format": "darkfield-nb-checkpoint", "x": Evil()}, path,
                       _use_new_zipfile_serialization=False)  # fmt: skip
        else:  # a bare pickle named .pt
            path.write_bytes(pickle.dumps(Evil()))
        return path

    return make


def _no_code_ran(t: Path) -> None:
    assert not (t / "pwned").exists(), "a hostile checkpoint ran code"


def _train(make_root, *extra, out=lambda t: t / "run", named=None, patch=None):
    """A ``train`` row: data from ``make_root(t)``, run folder ``out(t)``; ``patch(m)`` injects
    a fault after the data set is written."""

    def make(t: Path, m) -> tuple[list, Path]:
        root = make_root(t)
        if isinstance(root, tuple):
            root, _ = root
        run = out(t)
        if patch is not None:
            patch(m)
        argv = ["train", "--data", root, "--out", run, *TRAIN_FLAGS, *extra]
        return argv, named(t, m) if named else run

    return make


def _resume_after_kill(t: Path, m) -> Path:
    """A run folder whose first ``last.pt`` write was killed: only the temporary is left."""
    (t / "run").mkdir()
    left = _kill_during_write(t / "run" / "last.pt")
    assert left.name.startswith(".last.")
    return t / "run"


def _trained_run(t: Path, m) -> Path:
    root = _dataset(t)
    assert _cli(["train", "--data", root, "--out", t / "run", *TRAIN_FLAGS])["error"] == []
    return t / "run" / "last.pt"


def _torch_save_full(m, exc: BaseException) -> None:
    import torch

    def full(*args, **kwargs):
        raise exc

    m.setattr(torch, "save", full)


def _make_data(t: Path, out: Path, *extra) -> list:
    return ["make-data", "--out", out, "--patients", "1", "--size", "64", "--quiet", *extra]


def _must_not_run(m, command: str) -> None:
    """Make the long work of ``command`` fail loudly (not an expected error): a check that
    belongs before it must refuse first."""
    import darkfield_nb.evaluation
    import darkfield_nb.physics.dataset
    import darkfield_nb.train.stage

    def refuse(*args, **kwargs):
        raise AssertionError(f"{command} started its work before refusing the bad output")

    module, name = {
        "train": (darkfield_nb.train.stage, "_run_epoch"),
        "evaluate": (darkfield_nb.evaluation, "evaluate"),
        "make-data": (darkfield_nb.physics.dataset, "_render_and_write"),
    }[command]
    m.setattr(module, name, refuse)


def _deny_mkstemp_in(m, part: str) -> None:
    real = tempfile.mkstemp

    def refuse(*args, **kwargs):
        if part in str(kwargs.get("dir", "")):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, **kwargs)

    m.setattr(tempfile, "mkstemp", refuse)


def _save_ckpt(arg: tuple[Path, Any]) -> dict[str, list[str]]:
    return _raised(lambda: _tiny_checkpoint(*arg))


def _load_ckpt(path: Path) -> dict[str, list[str]]:
    from darkfield_nb import checkpoint

    return _raised(lambda: checkpoint.load(path))


ENTRY.update({"checkpoint.save": _save_ckpt, "checkpoint.load": _load_ckpt})


def _full_disk_torch(t: Path, m) -> tuple[tuple[Path, str], Path]:
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    _torch_save_full(
        m, RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    )
    m.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 2**20, 2**20))
    return (t, "c.pt"), t / "c.pt"


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


CASES += [
    # -- item 9: checkpoints that cannot be used, named in one line
    Case(
        "checkpoint weights do not match its config",
        "evaluate",
        _evaluate(lambda raw: raw["generator_config"].update(base_width=8)),
        ("weights do not match its generator_config", "of the wrong shape (first: stages.0"),
    ),
    Case(
        "checkpoint without one stage's weights",
        "evaluate",
        _evaluate(_drop_stage),
        ("missing (first: stages.1.", "no weights for stage(s) 1"),
    ),
    Case(
        "unknown generator_config key",
        "evaluate",
        _evaluate(lambda raw: raw["generator_config"].update(colour="blue")),
        ("invalid generator_config", "unknown field(s) ['colour']"),
    ),
    Case(
        "stages_trained out of range",
        "evaluate",
        _evaluate(lambda raw: raw.update(stages_trained=7)),
        ("stages_trained=7 is out of range (0 .. 2 for a 2-stage generator)",),
    ),
    Case(
        "stage out of range",
        "checkpoint.load",
        lambda t, m: _same(_tiny_checkpoint(t, edit=lambda raw: raw.update(stage=-1))),
        ("stage=-1 is out of range",),
    ),
    Case(
        "empty checkpoint file",
        "evaluate",
        _evaluate(ckpt=lambda t, m: _file(t, "empty.pt", b"")),
        ("not a PyTorch checkpoint file: empty file (0 bytes",),
    ),
    Case(
        "text file as checkpoint",
        "evaluate",
        _evaluate(ckpt=lambda t, m: _file(t, "notes.pt", b"hello, I am not a checkpoint\n")),
        ("not a PyTorch checkpoint file (it starts with 'hello, I am ', a text file",),
    ),
    Case(
        "truncated checkpoint",
        "evaluate",
        _evaluate(ckpt=lambda t, m: _file(t, "cut.pt", _tiny_checkpoint(t).read_bytes()[:3000])),
        ("not a readable PyTorch checkpoint file (truncated or damaged",),
    ),
    Case(
        "untrained checkpoint (stages_trained 0)",
        "evaluate",
        _evaluate(lambda raw: raw.update(stages_trained=0)),
        ("no stage of this generator is trained yet",),
    ),
    Case(
        "checkpoint is a directory (before)",
        "evaluate",
        _evaluate(ckpt=lambda t, m: t),
        ("is a directory, expected a checkpoint file",),
    ),
    Case(
        "missing checkpoint (before)",
        "evaluate",
        _evaluate(ckpt=lambda t, m: t / "none.pt"),
        ("checkpoint not found",),
    ),
    Case(
        "plain state dict as checkpoint (before)",
        "evaluate",
        _evaluate(lambda raw: raw.update(format="x")),
        ("not a darkfield-nb checkpoint",),
    ),
    *(
        Case(
            f"hostile pickle: {kind} (before)",
            "evaluate",
            _evaluate(ckpt=_hostile(kind)),
            (what,),
            after=_no_code_ran,
        )
        for kind, what in (
            ("reduce-in-history", "refusing to load: the file holds a Python object"),
            ("reduce-top-level", "refusing to load"),
            ("legacy-format", "refusing to load"),
            ("bare-pickle", "refusing to load"),
        )
    ),
    # -- item 4: NaN weights
    Case(
        "NaN weights",
        "evaluate",
        _evaluate(_nan_weights),
        ("generator weights hold", "non-finite value(s) (NaN/Inf)"),
    ),
    # -- items 5 and 10 (evaluate side)
    Case(
        "evaluate --json is a directory",
        "evaluate",
        _evaluate(
            extra=("--json", lambda t: _mkdir(t / "out")),
            named=lambda t: t / "out",
            patch=lambda m: _must_not_run(m, "evaluate"),
        ),
        ("is a directory, expected a file name",),
    ),
    Case(
        "evaluate --json under a file",
        "evaluate",
        _evaluate(
            extra=("--json", lambda t: _file(t, "f", b"x") / "r.json"), named=lambda t: t / "f"
        ),
        ("is a file, expected a folder",),
    ),
    Case(
        "evaluate an empty split",
        "evaluate",
        _evaluate(splits=("train", "train", "val"), named=lambda t: t / "ds" / "manifest.csv"),
        ("split 'test' has no images, but evaluate needs it",),
    ),
    # -- items 2 and 11: resume
    Case(
        "train --resume, no last.pt",
        "train",
        _train(_dataset, "--resume", out=lambda t: _mkdir(t / "run")),
        ("nothing to resume: no last.pt in it", "without --resume (Python: resume=False)"),
    ),
    Case(
        "train --resume after a killed first save",
        "train",
        lambda t, m: (
            ["train", "--data", _dataset(t), "--out", _resume_after_kill(t, m), "--resume"],
            t / "run",
        ),
        ("nothing to resume", ".last.", "partial last.pt left by a write that was killed"),
    ),
    Case(
        "train --resume, run folder missing",
        "train",
        _train(_dataset, "--resume"),
        ("nothing to resume: the folder does not exist",),
    ),
    Case(
        "train --resume with other settings",
        "train",
        lambda t, m: (
            [
                "train",
                "--data",
                t / "ds",
                "--out",
                _trained_run(t, m).parent,
                "--resume",
                *TRAIN_FLAGS,
                "--seed",
                "5",
            ],
            t / "run" / "last.pt",
        ),  # fmt: skip
        (
            "seed: given 5, stored 0",
            "command line: only --data, --out and --resume",
            "Python: config=None",
        ),  # fmt: skip
    ),
    # -- item 5 (train side)
    Case(
        "train with an empty val split",
        "train",
        _train(
            lambda t: _dataset(t, ("train", "train", "test")),
            named=lambda t, m: t / "ds" / "manifest.csv",
        ),
        ("split 'val' has no images, but training needs it",),
    ),
    # -- item 6 (train side)
    Case(
        "train on a 16 x 16 image",
        "train",
        _train(
            lambda t: _with_attenuation(t, _ramp((16, 16))),
            named=lambda t, m: t / "ds" / "attenuation" / "img1.png",
        ),
        ("image is 16 x 16 px, too small", "at least 17 px"),
    ),
    # -- item 10 (train side)
    Case(
        "train run folder is a file",
        "train",
        _train(_dataset, out=lambda t: _file(t, "run", b"x")),
        ("is a file, expected a folder",),
    ),
    Case(
        "train run folder not writable",
        "train",
        _train(_dataset, patch=lambda m: _deny_mkstemp_in(m, "run") or _must_not_run(m, "train")),
        ("permission denied", "is not writable"),
    ),
    Case(
        "train disk full at the first checkpoint",
        "train",
        _train(
            _dataset,
            patch=lambda m: _torch_save_full(m, OSError(errno.ENOSPC, "No space left")),
            named=lambda t, m: t / "run" / "last.pt",
        ),
        ("cannot write: no space left on the device",),
    ),
    Case(
        "torch.save fails on a full disk",
        "checkpoint.save",
        _full_disk_torch,
        ("cannot write the checkpoint: no space left on the device (1.0 MiB free)",),
    ),
    # -- item 10 (make-data)
    Case(
        "make-data --out is a file",
        "make-data",
        lambda t, m: (_make_data(t, _file(t, "out", b"x")), t / "out"),
        ("is a file, expected a folder",),
    ),
    Case(
        "make-data --out not empty (before)",
        "make-data",
        lambda t, m: (_make_data(t, _file(_mkdir(t / "out"), "keep.txt", b"x").parent), t / "out"),
        ("output folder is not empty (1 entries)",),
    ),
    Case(
        "make-data --out not writable",
        "make-data",
        lambda t, m: (
            _make_data(t, t / "out"),
            _deny_mkstemp_in(m, "out") or _must_not_run(m, "make-data") or t / "out",
        ),
        ("permission denied",),
    ),
    Case(
        "make-data read-only subfolder",
        "make-data",
        lambda t, m: (
            _make_data(t, t / "out"),
            _deny_mkstemp_in(m, "darkfield")
            or _must_not_run(m, "make-data")
            or t / "out" / "darkfield",
        ),
        ("permission denied",),
    ),
    Case(
        "make-data disk full",
        "make-data",
        lambda t, m: (_make_data(t, t / "out"), _disk_full(m) or t / "out" / "darkfield"),
        ("cannot write: no space left on the device",),
    ),
    # -- item 5 (validate side, the command line)
    Case(
        "validate prints an empty split as a warning",
        "validate (CLI)",
        lambda t, m: (
            ["validate", _dataset(t, ("train", "train", "test"))],
            t / "ds" / "manifest.csv",
        ),
        ("split 'val' has no images",),
        level="warning",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.kind for c in CASES])
def test_bad_input_is_named_in_one_line(case: Case, tmp_path: Path, monkeypatch) -> None:
    arg, named = case.make(tmp_path, monkeypatch)
    seen = ENTRY[case.entry](arg)
    messages = seen[case.level]
    hits = [m for m in messages if all(f in m for f in case.expect)]
    assert hits, f"{case.kind}: no {case.level} with {case.expect}; saw {seen}"
    for message in hits:
        assert message.startswith(str(named)), f"does not start with {named}: {message}"
        assert "\n" not in message, message
    if case.after is not None:
        case.after(tmp_path)


def test_docstring_table_lists_every_row() -> None:
    doc = __doc__ or ""
    missing = [c.kind for c in CASES if c.kind not in doc]
    assert not missing, f"add these kinds to the module docstring table: {missing}"


# ------------------------------------------------------------------ item 12: leftovers


def _kill_during_write(target: Path) -> Path:
    """Start an atomic write of ``target`` in a child process and kill it before the rename.

    ``os._exit`` skips every cleanup, as SIGKILL does; what is left is what a killed run leaves.
    """
    import subprocess
    import sys

    code = (
        "import os, sys; from darkfield_nb.io import atomic_path; "
        "cm = atomic_path(sys.argv[1]); tmp = cm.__enter__(); tmp.write_bytes(b''); os._exit(9)"
    )
    before = set(target.parent.iterdir()) if target.parent.is_dir() else set()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", code, str(target)], env=env, timeout=120)
    assert done.returncode == 9
    (left,) = set(target.parent.iterdir()) - before
    return left


def test_killed_write_leaves_a_temporary_that_is_never_an_input(tmp_path):
    from darkfield_nb.io import is_temporary, list_images

    folder = tmp_path / "radiographs"
    write_image(folder / "a.png", _ramp())
    left = _kill_during_write(folder / "b.tif")
    assert left.stat().st_size == 0 and left.name.endswith(".tmp.tif") and is_temporary(left)
    assert not (folder / "b.tif").exists()
    assert list_images(folder) == [folder / "a.png"]


def test_killed_write_in_a_data_set_is_not_data(tmp_path):
    """validate ignores the leftover and the checksums neither list nor miss it."""
    from darkfield_nb.contract import checksums, verify_checksums, write_checksums

    root = _dataset(tmp_path)
    write_checksums(root)
    left = _kill_during_write(root / "darkfield" / "img0.tif")
    assert validate_problems(root) == []
    assert verify_checksums(root) == []
    assert left.relative_to(root).as_posix() not in checksums(root)


def validate_problems(root: Path) -> list[str]:
    from darkfield_nb.data import validate_dataset

    return validate_dataset(root)


def test_clean_stale_temporaries_removes_only_our_old_ones(tmp_path):
    from darkfield_nb.io import STALE_AFTER_S, clean_stale_temporaries, stale_temporaries

    old = time.time() - STALE_AFTER_S - 60
    ours_old = [tmp_path / ".img0.ab3_x9qz.tmp.tif", tmp_path / "sub" / ".last.k2k2k2k2.tmp.pt"]
    ours_young = tmp_path / ".img1.zzzzzzzz.tmp.png"
    not_ours = [
        tmp_path / ".hidden",
        tmp_path / "notes.tmp",
        tmp_path / ".x.tmp",  # no random part
        tmp_path / ".img2.ABCDEFGH.tmp.tif",  # tempfile never uses capitals
        tmp_path / "img3.tif",
    ]
    for p in [*ours_old, ours_young, *not_ours]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    for p in [*ours_old, *not_ours]:
        os.utime(p, (old, old))
    assert stale_temporaries(tmp_path) == sorted(ours_old)
    assert stale_temporaries(tmp_path, recursive=False) == [ours_old[0]]
    assert clean_stale_temporaries(tmp_path) == sorted(ours_old)
    assert not any(p.exists() for p in ours_old)
    assert ours_young.exists() and all(p.exists() for p in not_ours)
    assert clean_stale_temporaries(tmp_path, max_age_s=0) == [ours_young]
    assert all(p.exists() for p in not_ours)
    assert clean_stale_temporaries(tmp_path / "missing") == []


def test_every_temporary_we_make_matches_our_pattern(tmp_path):
    """atomic_path's names, for each suffix we write and none, match TEMPORARY_NAME."""
    from darkfield_nb.io import atomic_path, is_temporary

    for name in ("a.png", "b.tif", "c.npy", "last.pt", "manifest.csv", "noext", "x.y.json"):
        with atomic_path(tmp_path / name) as tmp:
            assert is_temporary(tmp), tmp.name
            tmp.write_bytes(b"1")
    assert not any(is_temporary(p) for p in tmp_path.iterdir())


# ------------------------------------------------------------------ writes that fail


def test_disk_full_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    from darkfield_nb.io import WriteError

    target = tmp_path / "d.tif"
    write_image(target, np.ones((4, 4), np.float32))
    before = target.read_bytes()
    _disk_full(monkeypatch)
    with pytest.raises(WriteError) as info:
        write_image(target, np.zeros((4, 4), np.float32))
    assert isinstance(info.value, OSError) and isinstance(info.value, ValueError)
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["d.tif"]


def test_writer_errors_that_are_not_about_the_disk_pass_through(tmp_path, monkeypatch):
    from darkfield_nb.io import WriteError

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "encoder bug")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(OSError, match="encoder bug") as info:
        write_image(tmp_path / "e.tif", np.zeros((4, 4), np.float32))
    assert not isinstance(info.value, WriteError)
    assert list(tmp_path.iterdir()) == []


def test_check_writable_dir_creates_the_folder_and_leaves_nothing(tmp_path):
    from darkfield_nb.io import WriteError, check_output_file, check_writable_dir

    out = tmp_path / "a" / "b"
    assert check_writable_dir(out) == out and out.is_dir() and list(out.iterdir()) == []
    with pytest.raises(WriteError, match=r"only .* MB free, need at least"):
        check_writable_dir(out, min_free_bytes=1 << 62)
    with pytest.raises(WriteError, match="folder does not exist"):
        check_writable_dir(tmp_path / "c", create=False)
    assert check_output_file(tmp_path / "r" / "results.json") == tmp_path / "r" / "results.json"
    assert (tmp_path / "r").is_dir() and list((tmp_path / "r").iterdir()) == []


def test_write_json_is_strict_and_converts_numpy(tmp_path):
    import json

    from darkfield_nb.io import write_json

    def no_constants(token):
        raise AssertionError(f"non-strict token {token}")

    path = tmp_path / "r.json"
    write_json(path, {"mse": np.float32(0.25), "n": np.int64(3), "v": np.arange(3), "p": tmp_path})
    back = json.loads(path.read_text(), parse_constant=no_constants)
    assert back == {"mse": 0.25, "n": 3, "v": [0, 1, 2], "p": str(tmp_path)}
    assert path.read_text().endswith("}\n")
    with pytest.raises(ValueError):
        write_json(path, {"mse": float("nan")})
    assert json.loads(path.read_text()) == back  # the refused write left the old file


# ------------------------------------------------------------------ no false alarms


def test_in_range_float64_and_large_but_allowed_images_read(tmp_path):
    a = np.linspace(-1e30, 1e30, 24 * 24).reshape(24, 24)
    np.testing.assert_array_equal(read_image(_npy(tmp_path, "ok.npy", a)), a.astype(np.float32))
    b = np.ones((24, 24))
    b[0, 0] = np.inf  # an Inf that is in the file is reported as Inf, not as overflow
    with pytest.raises(ValueError, match=r"contains non-finite values \(0 NaN, 1 Inf"):
        read_image(_npy(tmp_path, "inf.npy", b))
    path = tmp_path / "wide.png"
    path.write_bytes(_png_header(9000, 9000))  # 81 M pixels: under the limit, decoded (and short)
    with pytest.raises(ValueError, match="corrupt or unreadable image"):
        read_image(path)


def test_bomb_refused_even_when_pillow_limit_is_lifted(tmp_path, monkeypatch):
    """read_image's own limit holds when a user sets PIL.Image.MAX_IMAGE_PIXELS = None."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = _png_bomb(tmp_path, 30000)
    with pytest.raises(
        ValueError, match=r"bomb30000.png: image declares 30000 x 30000 = 900,000,000"
    ):
        read_image(path)


def test_test_only_folder_is_valid_and_evaluable_but_not_trainable(tmp_path):
    from darkfield_nb.data import (
        EmptySplitError,
        PairedDataset,
        inspect_dataset,
        require_splits,
        validate_dataset,
    )

    root = _dataset(tmp_path, ("test", "test"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert validate_dataset(root) == []
    assert len(caught) == 2  # train and val are empty
    assert inspect_dataset(root).empty_splits == ["train", "val"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # evaluating the test split warns about nothing
        assert len(PairedDataset(root, split="test")) == 2
    assert require_splits(root, ("test",), "evaluate") == {"test": 2}
    with pytest.raises(EmptySplitError) as info:
        require_splits(root)
    message = str(info.value)
    assert message.count("has no images") == 2 and "\n" not in message
    assert message.startswith(str(root / "manifest.csv"))


def test_a_trainable_folder_raises_no_split_warning(tmp_path):
    from darkfield_nb.data import require_splits, validate_dataset

    root = _dataset(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert validate_dataset(root) == []
    assert require_splits(root) == {"train": 2, "val": 1, "test": 1}


def test_min_image_side_is_what_the_default_generator_takes():
    """The reference is the model: a 16 x 16 input fails in the default generator (1 x 1
    bottleneck under instance norm), 17 x 17 runs; MIN_IMAGE_SIDE sits exactly there."""
    import torch

    from darkfield_nb.contract import MIN_IMAGE_SIDE
    from darkfield_nb.models import GeneratorConfig, ProgressiveGenerator

    model = ProgressiveGenerator(GeneratorConfig()).eval()
    assert MIN_IMAGE_SIDE == model.config.stride + 1 == 17
    side = MIN_IMAGE_SIDE - 1
    with torch.no_grad(), pytest.raises(ValueError, match="more than 1 spatial element"):
        model(torch.rand(1, 1, side, side))
    with torch.no_grad():
        model(torch.rand(1, 1, MIN_IMAGE_SIDE, MIN_IMAGE_SIDE))


def test_radiograph_checks_at_the_boundary(tmp_path):
    from darkfield_nb.contract import ImageContentError, check_radiograph, radiograph_problems

    ok = _ramp((17, 17)).astype(np.float32)
    assert radiograph_problems("x.png", ok) == []
    assert check_radiograph("x.png", ok) is ok
    assert radiograph_problems("x.png", ok[:, :16]) == [
        "x.png: image is 17 x 16 px, too small: each side must be at least 17 px"
    ]
    assert radiograph_problems("x.png", ok, min_side=33)[0].endswith("at least 33 px")
    almost = np.zeros((32, 32), np.float32)
    almost[5, 5] = 1e-6  # one pixel of contrast is not constant
    assert radiograph_problems("x.png", almost) == []
    with pytest.raises(ImageContentError) as info:
        check_radiograph("t.png", np.full((8, 8), 3.0))
    assert str(info.value) == (
        "t.png: image is 8 x 8 px, too small: each side must be at least 17 px; "
        "constant image (every pixel is 3): no contrast to work from"
    )


def _predict_folder(t: Path) -> Path:
    src = t / "in"
    src.mkdir()
    ramp = np.add.outer(np.arange(48), np.arange(48)).astype(np.uint16) * 40
    write_image(src / "a.png", ramp)
    return src


def test_predict_refuses_an_untrained_checkpoint_by_name(tmp_path, capsys):
    """stages_trained = 0 (a last.pt written before any stage finished): refused in one line,
    naming the checkpoint, not run with stage -1 (it used to exit 0)."""
    from darkfield_nb.cli import main

    path = _tiny_checkpoint(tmp_path, edit=lambda raw: raw.update(stages_trained=0))
    src = _predict_folder(tmp_path)
    argv = ["predict", str(src), "--out", str(tmp_path / "out"), "--checkpoint", str(path)]
    assert main([*argv, "--samples", "2", "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}: no stage of this generator is trained yet" in err[0]
    assert not (tmp_path / "out" / "darkfield").exists()


def test_predict_names_images_of_an_unsupported_format(tmp_path, capsys):
    """A .bmp among the radiographs is named in a note (it used to be passed over in silence);
    the readable image is still synthesized."""
    from darkfield_nb.cli import main

    path = _tiny_checkpoint(tmp_path, edit=lambda raw: raw.update(stages_trained=2))
    src = _predict_folder(tmp_path)
    (src / "b.bmp").write_bytes(b"BM" + bytes(60))
    argv = ["predict", str(src), "--out", str(tmp_path / "out"), "--checkpoint", str(path)]
    assert main([*argv, "--samples", "2", "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"{src}: skipped 1 image(s) of a format read_image does not read (b.bmp)" in out
    assert (tmp_path / "out" / "darkfield" / "a.tif").exists()
