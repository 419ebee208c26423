"""``PairedDataset``: attenuation -> dark-field pairs from a folder that follows the contract."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from darkfield_nb.contract import (
    ATTENUATION_DIR,
    DARKFIELD_DIR,
    MASKS_DIR,
    MIN_IMAGE_SIDE,
    check_radiograph,
    read_manifest,
    read_sidecar,
)
from darkfield_nb.data.augment import Augment
from darkfield_nb.data.transforms import darkfield_to_D, normalize_input, pad_to_multiple
from darkfield_nb.data.validate import inspect_dataset, scan_folder
from darkfield_nb.io import read_image
from darkfield_nb.labels import SPLITS


class PairedDataset(Dataset):
    """Paired attenuation / dark-field images of one data folder (DESIGN section 3).

    Each item is a dict:

    - ``id``, ``patient``, ``split``: strings from the manifest;
    - ``input``: (1, H, W) float32, the attenuation image after (optional) augmentation and
      ``normalize_input`` (robust percentiles, the one documented normalization);
    - ``target``: (1, H, W) float32, dark-field ``D`` in physical units (``darkfield_to_D``
      converts visibility data according to ``dataset.json``);
    - ``mask``: (1, H, W) int32 label bit flags (``darkfield_nb.labels``), zeros when the id
      has no mask or ``load_masks`` is False;
    - ``pad``: int64 tensor ``(top, bottom, left, right)``: the reflect padding added to reach a
      multiple of ``pad_multiple``; ``darkfield_nb.data.unpad(output, item["pad"])`` removes it.

    Images of one data set may differ in size. The default collate function batches only
    equal sizes: set ``crop_size`` (a random aligned crop when augmenting, the centre crop
    otherwise), or use ``batch_size=1``.

    Args:
        root: the data folder.
        split: None for every row, a split name, or a list of names (``labels.SPLITS``).
        augment: an ``Augment`` for training, or None.
        pad_multiple: the network's total stride (1 disables padding).
        load_masks: read ``masks/<id>.*`` when present.
        cache: keep decoded images in memory (per DataLoader worker); augmentation is still
            drawn fresh each time.
        crop_size: an int or (h, w); every image must be at least this large, and the crop at
            least ``min_side``.
        check: run ``validate_dataset`` first and raise ``ValueError`` listing every problem
            (empty splits are not checked here: see ``data.require_splits``). With False,
            problems surface when an item is read, still naming the file.
        normalize: the (low, high) percentiles of ``normalize_input``.
        min_side: the smallest accepted image side (``contract.MIN_IMAGE_SIDE``; a model of
            stride ``s`` needs ``s + 1``); a smaller or constant input image is refused by name.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | Sequence[str] | None = None,
        augment: Augment | None = None,
        pad_multiple: int = 16,
        load_masks: bool = True,
        cache: bool = False,
        crop_size: int | tuple[int, int] | None = None,
        check: bool = True,
        normalize: tuple[float, float] = (1.0, 99.0),
        min_side: int = MIN_IMAGE_SIDE,
    ) -> None:
        self.root = Path(root)
        self.min_side = int(min_side)
        if isinstance(crop_size, int):
            crop_size = (crop_size, crop_size)
        if crop_size is not None and min(crop_size) < self.min_side:
            raise ValueError(
                f"PairedDataset: crop_size {tuple(crop_size)} is smaller than the smallest "
                f"image side the model takes ({self.min_side} px)"
            )
        if check:
            report = inspect_dataset(self.root, min_side=self.min_side, required_splits=())
            for message in report.warnings:
                warnings.warn(message, UserWarning, stacklevel=2)
            problems = report.errors
            if problems:
                listing = "\n".join(f"  - {p}" for p in problems)
                raise ValueError(
                    f"{self.root}: {len(problems)} problem(s) in the data set "
                    f"(`darkfield-nb validate {self.root}` lists them too):\n{listing}"
                )
        splits = [split] if isinstance(split, str) else (list(split) if split else None)
        for s in splits or []:
            if s not in SPLITS:
                raise ValueError(f"PairedDataset: unknown split {s!r}; allowed: {SPLITS}")
        rows = read_manifest(self.root)
        self.rows = [r for r in rows if splits is None or r["split"] in splits]
        if not self.rows:
            warnings.warn(f"{self.root}: no rows for split {split!r}", UserWarning, stacklevel=2)
        self.units = read_sidecar(self.root)["darkfield_units"]
        self.augment = augment
        self.pad_multiple = int(pad_multiple)
        self.load_masks = load_masks
        self.cache = cache
        self.crop_size = crop_size
        self.normalize = normalize
        self.epoch = 0
        self._att, _ = scan_folder(self.root / ATTENUATION_DIR)
        self._dfd, _ = scan_folder(self.root / DARKFIELD_DIR)
        mask_dir = self.root / MASKS_DIR
        self._masks = scan_folder(mask_dir)[0] if load_masks and mask_dir.is_dir() else {}
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self.rows]

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call it at the start of each epoch)."""
        self.epoch = int(epoch)

    def paths(self, index: int) -> dict[str, Path | None]:
        """The attenuation, darkfield and mask files of item ``index``."""
        i = self.rows[index]["id"]
        for folder, files in ((ATTENUATION_DIR, self._att), (DARKFIELD_DIR, self._dfd)):
            if i not in files:
                raise FileNotFoundError(f"{self.root / folder / i}.*: no file for id {i!r}")
        return {"attenuation": self._att[i], "darkfield": self._dfd[i], "mask": self._masks.get(i)}

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(attenuation raw values, target D, mask int32) of item ``index``, not augmented."""
        if index in self._cache:
            return self._cache[index]
        p = self.paths(index)
        att = check_radiograph(
            p["attenuation"], read_image(p["attenuation"]), min_side=self.min_side
        )
        target = darkfield_to_D(read_image(p["darkfield"]), self.units)
        if att.shape != target.shape:
            raise ValueError(
                f"{p['attenuation']}: shape {att.shape} does not match its partner "
                f"{p['darkfield']} {target.shape}"
            )
        if p["mask"] is not None:
            mask = read_image(p["mask"])
            if mask.shape != att.shape:
                raise ValueError(
                    f"{p['mask']}: mask shape {mask.shape} does not match "
                    f"{p['attenuation']} {att.shape}"
                )
            mask = np.rint(mask).astype(np.int32)
        else:
            mask = np.zeros(att.shape, dtype=np.int32)
        if self.cache:
            self._cache[index] = (att, target, mask)
        return att, target, mask

    def _crop(self, arrays, rng: np.random.Generator | None, index: int):
        ch, cw = self.crop_size
        h, w = arrays[0].shape
        if h < ch or w < cw:
            raise ValueError(
                f"{self.paths(index)['attenuation']}: image {(h, w)} is smaller than "
                f"crop_size {(ch, cw)}"
            )
        if rng is None:
            y, x = (h - ch) // 2, (w - cw) // 2
        else:
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        return [a[y : y + ch, x : x + cw] for a in arrays]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"PairedDataset: index {index} out of range for {len(self)} items")
        row = self.rows[index]
        arrays = list(self.load_raw(index))
        rng = self.augment.rng(index, self.epoch) if self.augment is not None else None
        if self.crop_size is not None:
            arrays = self._crop(arrays, rng, index)
        if self.augment is not None:
            arrays = self.augment.geometric(arrays, rng)
            arrays[0] = self.augment.display_processing(arrays[0], rng)
        att, target, mask = arrays
        tensors = [
            torch.from_numpy(np.ascontiguousarray(a)).unsqueeze(0)
            for a in (normalize_input(att, *self.normalize), target, mask)
        ]
        pad = (0, 0, 0, 0)
        if self.pad_multiple > 1:
            padded = []
            for t in tensors:
                t, pad = pad_to_multiple(t, self.pad_multiple)
                padded.append(t)
            tensors = padded
        return {
            "id": row["id"],
            "patient": row["patient"],
            "split": row["split"],
            "input": tensors[0].float(),
            "target": tensors[1].float(),
            "mask": tensors[2].to(torch.int32),
            "pad": torch.tensor(pad, dtype=torch.int64),
        }
