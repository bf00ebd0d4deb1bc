"""How a generator is scored while it trains: cross-entropy on test images, per scale, beside
the floor a model reaches by knowing nothing but each scale's token frequencies.

The numbers train.py logs at every evaluation (and bench.py, the scaling study and notebook
04 print): mean cross-entropy in nats per token, the overall figure weighting each scale by
its s² tokens.
"""
import torch
import torch.nn.functional as F

from minivar.quantizer import split_scales
from minivar.training.device import autocast


def unigram_entropy_per_scale(tokens_NL, scales, vocab_size):
    """Entropy (nats) of each scale's token frequencies: the loss of a model that ignores
    everything but which scale it is at. A transformer has to beat this to have learned anything."""
    out = []
    for idx in split_scales(tokens_NL.long(), scales):
        p = torch.bincount(idx.flatten(), minlength=vocab_size).float()
        p = p[p > 0] / p.sum()
        out.append(-(p * p.log()).sum().item())
    return out


def loss_per_scale(model, logits_BLV, targets_BL):
    """Mean cross-entropy of each scale's tokens (nats), a tensor of K numbers."""
    ce_BL = F.cross_entropy(logits_BLV.transpose(1, 2).float(), targets_BL, reduction="none")
    zeros_K = torch.zeros(len(model.cfg.scales), device=ce_BL.device)
    sums_K = zeros_K.index_add(0, model.level_L, ce_BL.sum(0))  # (index_add, not bincount: no wait for a GPU)
    return sums_K / (len(ce_BL) * zeros_K.index_add(0, model.level_L, torch.ones_like(ce_BL[0])))


@torch.no_grad()
def test_cross_entropy(model, tokenizer, tokens_NL, labels_N, device, batch_size=250, dtype="fp32"):
    """Mean cross-entropy per token, and per scale, of `model` on token rows; beside it the
    unigram entropy of the same rows. Means per token weight each scale by its s² tokens."""
    sums = torch.zeros(len(model.cfg.scales))
    for i in range(0, len(tokens_NL), batch_size):
        tokens, labels = tokens_NL[i:i + batch_size].long(), labels_N[i:i + batch_size]
        with autocast(device, dtype):
            logits, _ = model(model.teacher_forcing_inputs(tokenizer.quantizer, tokens), labels)
        sums += loss_per_scale(model, logits, tokens).cpu() * len(tokens)
    ce = (sums / len(tokens_NL)).tolist()
    unigram = unigram_entropy_per_scale(tokens_NL, model.cfg.scales, model.cfg.vocab_size)
    weights = [s * s / sum(s * s for s in model.cfg.scales) for s in model.cfg.scales]
    return {"ce": sum(w * c for w, c in zip(weights, ce)), "ce_per_scale": ce,
            "unigram": sum(w * u for w, u in zip(weights, unigram)), "unigram_per_scale": unigram}
