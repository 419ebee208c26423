"""A deep ensemble of the last stage (Lakshminarayanan et al. 2017).

K generators share every stage but the last; their last stages are trained from K different
initializations (seeds). For an input x, member k predicts GGD parameters
(mu_k, alpha_k, beta_k) per pixel, and, as for Monte Carlo dropout
(:mod:`darkfield_nb.uncertainty`),

    mean         = (1/K) sum_k mu_k
    aleatoric^2  = (1/K) sum_k Var_GGD(alpha_k, beta_k)
    epistemic^2  = (1/K) sum_k (mu_k - mean)^2        (population variance of the members' means)
    total^2      = aleatoric^2 + epistemic^2.

Cost: K forward passes of the whole network (:func:`ensemble_predict` runs each member in
full; stages shared by the members are recomputed).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from darkfield_nb.ggd import ggd_variance
from darkfield_nb.models import ProgressiveGenerator
from darkfield_nb.uncertainty import MCDropoutResult


@torch.no_grad()
def ensemble_predict(
    members: Sequence[nn.Module], x: torch.Tensor, stage: int = -1
) -> MCDropoutResult:
    """Ensemble mean and aleatoric / epistemic / total sigma of stage ``stage`` for x
    (B, C, H, W); members run in eval mode (their modes are restored). ``n_samples`` = K."""
    if len(members) < 1:
        raise ValueError("ensemble_predict: no members")
    mus, var, alphas, betas = [], [], [], []
    for m in members:
        was = m.training
        m.eval()
        try:
            out = m(x)[stage]
        finally:
            m.train(was)
        mus.append(out.mu.double())
        var.append(ggd_variance(out.alpha.double(), out.beta.double()))
        alphas.append(out.alpha.double())
        betas.append(out.beta.double())
    mu = torch.stack(mus)
    mean = mu.mean(0)
    epi = ((mu - mean) ** 2).mean(0)
    ale = torch.stack(var).mean(0)
    dt = x.dtype
    return MCDropoutResult(
        mean=mean.to(dt),
        aleatoric=ale.sqrt().to(dt),
        epistemic=epi.sqrt().to(dt),
        total=(ale + epi).sqrt().to(dt),
        alpha=torch.stack(alphas).mean(0).to(dt),
        beta=torch.stack(betas).mean(0).to(dt),
        n_samples=len(members),
    )


def reinit_last_stage(model: ProgressiveGenerator, seed: int) -> ProgressiveGenerator:
    """A copy of ``model`` whose last stage is freshly initialized from ``seed`` (the other
    stages are copied unchanged), ready for ``train_stage(copy, n_stages - 1, ...)``."""
    member = copy.deepcopy(model)
    torch.manual_seed(seed)
    fresh = ProgressiveGenerator(model.config).stages[-1]
    member.stages[-1].load_state_dict(fresh.state_dict())
    return member


def train_last_stage_ensemble(
    model: ProgressiveGenerator,
    seeds: Sequence[int],
    train_data,
    val_data,
    cfg,
    out_dir: str | Path,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> list[ProgressiveGenerator]:
    """Train one member per seed: :func:`reinit_last_stage`, then
    ``darkfield_nb.train.train_stage`` on the last stage with the earlier stages frozen; each
    member's run folder is ``out_dir / f"member{seed}"``. Returns the members (eval mode)."""
    from darkfield_nb.train.stage import make_discriminator, train_stage  # noqa: PLC0415

    last = model.config.n_stages - 1
    members = []
    for seed in seeds:
        member = reinit_last_stage(model, seed)
        run_cfg = copy.deepcopy(cfg)
        run_cfg.seed = int(seed)
        train_stage(
            member,
            last,
            train_data,
            val_data,
            run_cfg,
            Path(out_dir) / f"member{seed}",
            discriminator=make_discriminator(run_cfg, last),
            device=device,
            progress=progress,
        )
        members.append(member.eval())
    return members
