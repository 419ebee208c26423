"""What the stage-training notebooks (03-05) report after a stage: shared, so they agree.

- ``stage_digest``: a SHA-256 over a module's state dict (names and bytes, sorted by name), the
  fingerprint that shows a frozen stage did not move;
- ``check_frozen``: the previous stage in a freshly trained model against its checkpoint;
- ``validation_case``: one validation image through stages 1..k with MC dropout, as a panel;
- ``stage_figures``: the figures of merit of the stage's last epoch.

This sits above ``checkpoint``, ``data``, ``uncertainty`` and ``panels`` (a notebook helper).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from darkfield_nb import checkpoint
from darkfield_nb.data import PairedDataset
from darkfield_nb.hardware import pick_device
from darkfield_nb.panels import case_panel
from darkfield_nb.uncertainty import ggd_std, mc_dropout_predict

FIGURES = ("val_mse", "val_psnr", "val_ssim", "val_nll")


def stage_digest(module: torch.nn.Module) -> str:
    """First 16 hex digits of SHA-256 over ``(name, bytes)`` of every state-dict entry, sorted
    by name: equal digests mean equal weights and buffers (BatchNorm statistics included)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def check_frozen(model, train_dir: str | os.PathLike, stage: int) -> tuple[str, str]:
    """Digests of stage ``stage - 1`` as saved in ``train_dir/stage{stage-1}.pt`` and as it is in
    ``model`` (0-based ``stage``, the one just trained); raises RuntimeError when they differ."""
    if stage < 1:
        raise ValueError(f"check_frozen: stage {stage} has no earlier stage")
    path = Path(train_dir) / f"stage{stage - 1}.pt"
    before = stage_digest(checkpoint.load(path).stages[stage - 1])
    after = stage_digest(model.stages[stage - 1])
    if before != after:
        raise RuntimeError(f"{path}: the frozen stage {stage} moved ({before} -> {after})")
    return before, after


def validation_case(
    model,
    data_dir: str | os.PathLike,
    stage: int,
    *,
    samples: int = 20,
    device: str | torch.device = "auto",
    index: int = 0,
):
    """Run validation image ``index`` of ``data_dir`` through stages 1..``stage + 1`` and show
    each stage's mean, the last stage's aleatoric sigma (GGD std) and the MC-dropout epistemic
    sigma (``samples`` passes, seed 0). Returns ``(figure, stage outputs, item)``."""
    device = pick_device(device)
    item = PairedDataset(data_dir, split="val", pad_multiple=1, check=False)[index]
    x = item["input"][None].to(device)
    with torch.no_grad():
        outs = model.to(device).eval()(x, n_stages=stage + 1)
    mc = mc_dropout_predict(model, x, samples=samples, seed=0, stage=stage)
    fig = case_panel(
        item["input"],
        [o.mu for o in outs],
        ggd_std(outs[-1].alpha, outs[-1].beta),
        mc.epistemic,
        target=item["target"],
        title=f"validation case {item['id']}",
    )
    return fig, outs, item


def stage_figures(history: list[dict], stage: int) -> dict:
    """The validation figures of the last epoch (those of ``FIGURES`` it has), the 1-based
    ``stage`` and the number of epochs trained for the 0-based ``stage``."""
    last = history[-1]
    figures = {k: last[k] for k in FIGURES if k in last}
    figures.update(stage=stage + 1, epochs=sum(h["stage"] == stage for h in history))
    return figures
