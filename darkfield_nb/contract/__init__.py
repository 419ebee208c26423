"""The paired-folder contract (DESIGN section 3) in one place.

```
<root>/attenuation/<id>.<ext>   input radiograph
<root>/darkfield/<id>.<ext>     target dark-field image (units in dataset.json)
<root>/masks/<id>.png           optional uint16 sums of darkfield_nb.labels bits
<root>/manifest.csv             id, patient, split[, case, ood, ...]
<root>/dataset.json             optional sidecar, {"darkfield_units": "D" | "visibility", ...}
<root>/checksums.sha256         optional, ``sha256sum`` format over the data files
```

Modules, every name re-exported here: :mod:`.layout` (the names, the dark-field units, the
contract's errors, what an input image must be: :func:`radiograph_problems`, not constant,
not too small), :mod:`.manifest` (manifest and sidecar readers and writers), :mod:`.digests`
(checksums) and :mod:`.splits` (the one patient-level split rule). It sits at the floor of
the import flow: it imports only ``darkfield_nb.io`` (atomic writes, the CSV writer) and
``darkfield_nb.labels``.
"""

from darkfield_nb.contract.digests import (
    checksums,
    read_checksums,
    sha256_file,
    verify_checksums,
    write_checksum_file,
    write_checksums,
)
from darkfield_nb.contract.layout import (
    ATTENUATION_DIR,
    CHECKSUM_NAME,
    DARKFIELD_DIR,
    DARKFIELD_UNITS,
    DATA_DIRS,
    MANIFEST_NAME,
    MASKS_DIR,
    MIN_IMAGE_SIDE,
    REQUIRED_COLUMNS,
    SIDECAR_NAME,
    ImageContentError,
    ManifestError,
    check_radiograph,
    constant_problem,
    radiograph_problems,
    size_problem,
)
from darkfield_nb.contract.manifest import (
    check_manifest,
    read_manifest,
    read_sidecar,
    write_manifest,
    write_sidecar,
)
from darkfield_nb.contract.splits import assign_splits, cut_splits, split_counts

__all__ = [
    "ATTENUATION_DIR",
    "CHECKSUM_NAME",
    "DARKFIELD_DIR",
    "DARKFIELD_UNITS",
    "DATA_DIRS",
    "MANIFEST_NAME",
    "MASKS_DIR",
    "MIN_IMAGE_SIDE",
    "REQUIRED_COLUMNS",
    "SIDECAR_NAME",
    "ImageContentError",
    "ManifestError",
    "assign_splits",
    "check_manifest",
    "check_radiograph",
    "checksums",
    "constant_problem",
    "cut_splits",
    "radiograph_problems",
    "read_checksums",
    "read_manifest",
    "read_sidecar",
    "sha256_file",
    "size_problem",
    "split_counts",
    "verify_checksums",
    "write_checksum_file",
    "write_checksums",
    "write_manifest",
    "write_sidecar",
]
