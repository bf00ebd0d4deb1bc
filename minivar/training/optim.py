"""How every training run in minivar optimizes: AdamW and one learning-rate schedule.

train.py and the scaling study (studies/scaling.py) both use these, so that the sizes of
the study are trained exactly as `python train.py` trains a model. The step itself is
Stage.train_step (stages.py).
"""
import math

import torch


def adamw(model, lr, weight_decay, device=None):
    """AdamW with β2 = 0.95, as GPT-style transformers (and VAR) are usually trained:
    the second-moment estimate forgets faster, which steadies the large early steps.
    On CUDA the fused kernel updates every parameter in one launch."""
    fused = device is not None and torch.device(device).type == "cuda"
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay, fused=fused)


def lr_at(step, lr, warmup_steps, max_steps):
    """Linear warm-up to `lr`, then cosine decay to 10% of it at max_steps."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
