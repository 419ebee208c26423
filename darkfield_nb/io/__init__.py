"""Reading and writing images and small files, atomically.

Images: :func:`read_image` (PNG/TIFF/NPY/JPEG/DICOM to a 2-D float32 array, every problem an
:class:`ImageReadError` naming the file) and :func:`write_image`; :func:`list_images` lists a
folder's inputs (never hidden or temporary files). Every writer writes to a temporary name and
renames (``darkfield_nb.atomic``, whose names are re-exported here: ``atomic_path``,
``atomic_write_text``, ``write_json``, ``WriteError``, ``check_writable_dir``,
``clean_stale_temporaries`` ...); :func:`write_csv` is the one CSV writer.

Modules: :mod:`.images` (read, write, list: the checks every format shares), the codecs per
format family :mod:`.raster` (PNG, JPEG via Pillow; TIFF; NPY) and :mod:`.dicom` (pydicom),
:mod:`._codec` (the reading error, the pixel limit, colour to grey) and :mod:`.tables` (CSV).
"""

from darkfield_nb.atomic import (
    STALE_AFTER_S,
    TEMPORARY_NAME,
    WriteError,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    check_output_file,
    check_writable_dir,
    clean_stale_temporaries,
    is_temporary,
    stale_temporaries,
    write_json,
)
from darkfield_nb.io._codec import LUMA_WEIGHTS, MAX_IMAGE_PIXELS, ImageReadError
from darkfield_nb.io.images import (
    IMAGE_SUFFIXES,
    WRITABLE_SUFFIXES,
    list_images,
    read_image,
    write_image,
)
from darkfield_nb.io.raster import PNG_COMPRESS_LEVEL
from darkfield_nb.io.tables import write_csv

__all__ = [
    "IMAGE_SUFFIXES",
    "LUMA_WEIGHTS",
    "MAX_IMAGE_PIXELS",
    "PNG_COMPRESS_LEVEL",
    "STALE_AFTER_S",
    "TEMPORARY_NAME",
    "WRITABLE_SUFFIXES",
    "ImageReadError",
    "WriteError",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_file",
    "check_writable_dir",
    "clean_stale_temporaries",
    "is_temporary",
    "list_images",
    "read_image",
    "stale_temporaries",
    "write_csv",
    "write_image",
    "write_json",
]
