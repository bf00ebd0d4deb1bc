"""Keeping every code of the tokenizer's codebook in use while it trains.

A code that no scale picks gets no gradient and never moves again: a dead code, and a
smaller codebook. The quantizer counts how often each code is picked at each scale
(quantizer.hits_KV, reported as usage per scale); every few steps the training stage
moves the codes nobody used onto residual vectors of the current batch, the vectors
codes are meant to cover (VAR's own code has no such protection, and users of it report
collapse at the small scales).
"""
import torch

from minivar.quantizer import area_resize
from minivar.training import distributed


@torch.no_grad()
def reseed_dead_codes(quantizer, f_BChw, noise=0.01):
    """Move codes unused at every scale since the last call onto residual vectors from
    this batch (the vectors codes are meant to cover), then restart the count.
    Returns the re-seeded indices (the trainer clears their optimizer state)."""
    dead = (quantizer.hits_KV.sum(0) == 0).nonzero().flatten()
    if len(dead) > 0:
        residuals, rest = [], f_BChw
        for k, side in enumerate(quantizer.scales):  # the same residuals the forward pass quantizes
            u_BCss = area_resize(rest, side)
            residuals.append(u_BCss.permute(0, 2, 3, 1).reshape(-1, u_BCss.shape[1]))
            rest = rest - quantizer.embed(quantizer.nearest_code(u_BCss, exclude=dead), k)  # live codes only
        # Each dead code goes to a random scale's residuals, every scale equally likely:
        # drawing by position would send most codes to the finest scale (64 of 155 positions).
        scale_of_code = torch.randint(len(residuals), (len(dead),))
        new = torch.empty(len(dead), f_BChw.shape[1], device=f_BChw.device)
        for k, pool_NC in enumerate(residuals):
            chosen = scale_of_code == k
            new[chosen] = pool_NC[torch.randint(len(pool_NC), (int(chosen.sum()),), device=pool_NC.device)]
        quantizer.codebook.weight[dead] = new + noise * new.std() * torch.randn_like(new)
    quantizer.hits_KV.zero_()
    return dead


def reseed_in_training(quantizer, latent_BChw, optimizer):
    """The tokenizer stage's re-seed: the dead codes' Adam moments are cleared too, so that stale
    statistics do not throw them around. Under torchrun use is counted over all ranks' images,
    re-seeding draws from the whole global batch, and rank 0's draws decide for every rank (the
    ranks' random numbers agree only as long as each draws the same ones). Returns metrics."""
    distributed.sum_across_ranks(quantizer.hits_KV)
    usage = quantizer.usage_per_scale()
    dead = reseed_dead_codes(quantizer, distributed.rows_from_all_ranks(latent_BChw))
    distributed.broadcast_from_rank_zero(quantizer.codebook.weight)
    codebook_state = optimizer.state.get(quantizer.codebook.weight, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in codebook_state:
            codebook_state[key][dead] = 0
    return {"reseeded": torch.tensor(float(len(dead))), "usage": usage[-1], "usage_min": usage.min()}
