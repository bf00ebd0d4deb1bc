"""How every training run in minivar optimizes: AdamW, one learning-rate schedule, one step.

train.py and the scaling study (scaling.py) both use these, so that the sizes of the
study are trained exactly as `python train.py` trains a model.
"""
import math

import torch


def adamw(model, lr, weight_decay):
    """AdamW with β2 = 0.95, as GPT-style transformers (and VAR) are usually trained:
    the second-moment estimate forgets faster, which steadies the large early steps."""
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)


def lr_at(step, lr, warmup_steps, max_steps):
    """Linear warm-up to `lr`, then cosine decay to 10% of it at max_steps."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train_step(stage, optimizer, step, lr, grad_clip):
    """One optimizer step of a training stage (stages.py) at learning rate lr, gradients
    clipped to norm grad_clip. Returns the stage's (loss, metrics) for this step."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss, metrics = stage.loss(step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(stage.model.parameters(), grad_clip)
    optimizer.step()
    return loss, metrics
