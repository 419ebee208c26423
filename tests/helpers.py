"""Helpers several test modules share (import them as ``from helpers import ...``: pytest puts
this folder on ``sys.path``, and spawned worker processes inherit it).

* :func:`free_port`, :func:`ddp_env`: the launcher side of a two-process DDP test over Gloo on
  the loopback interface (``torch.multiprocessing.spawn`` workers call :func:`ddp_env` first).
* :func:`dicom_dataset`: a hand-made one-frame grey DICOM for reader tests.
* :data:`REAL`, :data:`needs_real`: the folder of real radiographs in the project's shared/
  folder (``DARKFIELD_NB_REAL_CXR`` points elsewhere) and the mark that skips without it.
* :func:`write_toy_chest_set`, :func:`toy_generator`, :func:`toy_recalibration`: a 32 px paired
  set with a lung block (and a bright pacemaker in its ``ood`` images), the tiny seeded
  two-stage generator, and a stored-recalibration entry around a sigma-scaling dict, for the
  tests of what a checkpoint carries (recalibration, OOD detector) at inference.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

REAL = Path(
    os.environ.get(
        "DARKFIELD_NB_REAL_CXR", Path(__file__).parents[1].parent / "shared" / "real_cxr"
    )
)
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real images not found at {REAL}")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it), for ``MASTER_PORT``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_env(rank: int, world: int, port: int) -> None:
    """What ``torchrun`` would give worker ``rank`` of ``world`` on this machine (RANK,
    LOCAL_RANK, WORLD_SIZE, MASTER_ADDR 127.0.0.1, MASTER_PORT ``port``), and one intra-op
    thread so two workers share two cores without oversubscribing them."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)


def dicom_dataset(rows: int, cols: int, *, photometric: str = "MONOCHROME2", bits_stored=16):
    """A pydicom Dataset of one grey frame, ``rows`` x ``cols``, 16 bits allocated and
    ``bits_stored`` stored (unsigned), explicit VR little endian, with file meta but no
    PixelData: the test sets that and its own tags, then ``ds.save_as(path,
    enforce_file_format=True)``. Skips the test when pydicom is not installed."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored = 16, bits_stored
    ds.HighBit, ds.PixelRepresentation = bits_stored - 1, 0
    return ds


def write_toy_chest_set(
    root: Path, splits: list[str], *, seed: int, background: float = 0.3, noise: float = 0.05
) -> Path:
    """A paired folder of 32 x 32 images, one per entry of ``splits``: uniform attenuation
    (20000-40000) with a dark 3-pixel border, the lung bit on rows 6-25 / columns 4-27 and
    D = background + 0.2 (lung) + noise N(0, 1); the ``ood`` images carry a saturated pacemaker
    (rows / columns 12-17, case "pacemaker"). Seeded: ``np.random.default_rng(seed)``."""
    from darkfield_nb.contract import write_manifest
    from darkfield_nb.io import write_image
    from darkfield_nb.labels import LUNG, PACEMAKER

    rng = np.random.default_rng(seed)
    rows = []
    for i, split in enumerate(splits):
        mask = np.zeros((32, 32), np.uint16)
        mask[6:26, 4:28] = LUNG
        att = rng.uniform(20000, 40000, (32, 32))
        att[:3], att[-3:], att[:, :3], att[:, -3:] = 200, 200, 200, 200
        if split == "ood":
            mask[12:18, 12:18] |= PACEMAKER
            att[12:18, 12:18] = 65000
        lung = (mask & LUNG) > 0
        d = (background + 0.2 * lung + noise * rng.standard_normal((32, 32))).astype("f4")
        write_image(root / "attenuation" / f"im{i:02d}.png", att.astype(np.uint16))
        write_image(root / "darkfield" / f"im{i:02d}.tif", d)
        write_image(root / "masks" / f"im{i:02d}.png", mask)
        row = {"id": f"im{i:02d}", "patient": f"p{i}", "split": split}
        row["case"] = "pacemaker" if split == "ood" else ""
        rows.append(row)
    write_manifest(root / "manifest.csv", rows)
    return root


def toy_generator():
    """The two-stage, base-width-4 generator with dropout 0.2 (torch seed 0), mean heads drawn
    N(0, 0.1) (a residual stage starts with a zero head, which would predict a constant)."""
    from darkfield_nb.models import GeneratorConfig, ProgressiveGenerator

    torch.manual_seed(0)
    model = ProgressiveGenerator(GeneratorConfig(n_stages=2, base_width=4, depth=2, dropout=0.2))
    for stage in model.stages:
        torch.nn.init.normal_(stage.head_mu.weight, std=0.1)
    return model


def toy_recalibration(scaling: dict, n_images: int, version: int = 1) -> dict:
    """A stored-recalibration entry with the sigma-scaling dict ``scaling``, a flat isotonic
    table and an RCPS lambda of 1.5, "fitted" on ``n_images`` validation images."""
    rcps = {"kind": "rcps", "lambda_hat": 1.5, "alpha": 0.1, "delta": 0.1, "n": 30}
    return {
        "version": version,
        "method_default": "sigma_scaling",
        "sigma_scaling": scaling,
        "isotonic": {"kind": "isotonic", "table": [0.0, 0.5, 1.0]},
        "rcps": {**rcps, "halfwidth_level": 0.9},
        "fitted_on": {"split": "val", "n_images": n_images},
    }


def write_toy_pairs(root: Path, n: int, *, size: int = 32, n_val: int = 2) -> Path:
    """Toy paired folder of ``n`` images: D a smooth function of a random blocky attenuation
    field (8-pixel blocks), D = 0.5 (1 - field)^2; the last ``n_val`` images are the validation
    split, the rest training. Seeded: ``np.random.default_rng(0)``."""
    from darkfield_nb.contract import write_manifest
    from darkfield_nb.io import write_image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        field = rng.random((size // 8, size // 8)).repeat(8, 0).repeat(8, 1)
        write_image(root / "attenuation" / f"im{i}.png", (field * 60000 + 1000).astype(np.uint16))
        write_image(root / "darkfield" / f"im{i}.tif", (0.5 * (1 - field) ** 2).astype(np.float32))
        rows.append(
            {"id": f"im{i}", "patient": f"p{i}", "split": "val" if i >= n - n_val else "train"}
        )
    write_manifest(root / "manifest.csv", rows)
    return root


def constant_level_net(b: float, cfg=None):
    """A ``level.LevelNet`` (config ``cfg``, default (8, 16, 16) wide, no dropout) whose output is
    ``b`` for every input: zero ``out`` weight, bias b; eval mode."""
    from darkfield_nb.level import LevelConfig, LevelNet

    cfg = cfg or LevelConfig(channels=(8, 16, 16), hidden=8, dropout=0.0)
    torch.manual_seed(0)
    net = LevelNet(1, cfg)
    with torch.no_grad():
        net.out.weight.zero_()
        net.out.bias.fill_(b)
    return net.eval()
