"""Names shared by the simulator, the data layer and the analysis: mask bits and splits.

Masks are stored as 16-bit PNGs in which every pixel holds a sum of bit flags, so one pixel can
be both lung and emphysema, or lung and behind a pacemaker lead. Test a label with
``(mask & LUNG) > 0``.
"""

from __future__ import annotations

LUNG = 1 << 0
EMPHYSEMA = 1 << 1
CONSOLIDATION = 1 << 2  # pneumonia / COVID-19-like
PNEUMOTHORAX = 1 << 3
EFFUSION = 1 << 4
NODULE = 1 << 5
PACEMAKER = 1 << 6
CABLE = 1 << 7  # ECG cables and electrodes
CLIP = 1 << 8  # surgical clips
BONE = 1 << 9  # ribs, clavicles, scapulae, spine
HEART = 1 << 10

MASK_BITS: dict[str, int] = {
    "lung": LUNG,
    "emphysema": EMPHYSEMA,
    "consolidation": CONSOLIDATION,
    "pneumothorax": PNEUMOTHORAX,
    "effusion": EFFUSION,
    "nodule": NODULE,
    "pacemaker": PACEMAKER,
    "cable": CABLE,
    "clip": CLIP,
    "bone": BONE,
    "heart": HEART,
}
DEVICE_BITS = PACEMAKER | CABLE | CLIP

SPLITS = ("train", "val", "test", "ood")


def has_label(mask, bit: int):
    """Boolean array: where ``mask`` carries ``bit`` (works for NumPy arrays and tensors)."""
    return (mask & bit) > 0
