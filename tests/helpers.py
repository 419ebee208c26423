"""Helpers several test modules share (import them as ``from helpers import ...``: pytest puts
this folder on ``sys.path``, and spawned worker processes inherit it).

* :func:`free_port`, :func:`ddp_env`: the launcher side of a two-process DDP test over Gloo on
  the loopback interface (``torch.multiprocessing.spawn`` workers call :func:`ddp_env` first).
* :func:`dicom_dataset`: a hand-made one-frame grey DICOM for reader tests.
* :data:`REAL`, :data:`needs_real`: the folder of real radiographs in the project's shared/
  folder (``DARKFIELD_NB_REAL_CXR`` points elsewhere) and the mark that skips without it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

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
