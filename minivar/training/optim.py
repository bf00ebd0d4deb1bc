"""How every training run in minivar optimizes: AdamW and one learning-rate schedule.

train.py and the scaling study (studies/scaling.py) both use these, so that the sizes of
the study are trained exactly as `python train.py` trains a model. The step itself is
Stage.train_step (stages.py).
"""
import math

import torch
import torch.nn as nn

DECAYED = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)  # the layers whose weight matrices weight decay shrinks


def weight_decay_groups(model):
    """(names of the parameters weight decay applies to, names of the rest). Decay pulls a
    parameter towards zero: right for weight matrices, which it keeps from growing without
    need; wrong for biases, norm gains (a q/k norm's gain sets the attention's temperature),
    and the class, position and level embeddings and codebook, whose size carries meaning.
    So, as in the official VAR code, only the weight matrices of linear and conv layers decay."""
    decay, rest = [], []
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            (decay if isinstance(module, DECAYED) and name == "weight" else rest).append(full)
    return decay, rest


def adamw(model, lr, weight_decay, device=None):
    """AdamW with β2 = 0.95, as GPT-style transformers (and VAR) are usually trained:
    the second-moment estimate forgets faster, which steadies the large early steps.
    Two parameter groups: weight matrices decay, the rest not (weight_decay_groups).
    On CUDA the fused kernel updates every parameter in one launch."""
    params = dict(model.named_parameters())
    decay, rest = weight_decay_groups(model)
    groups = [{"params": [params[n] for n in decay], "weight_decay": weight_decay},
              {"params": [params[n] for n in rest], "weight_decay": 0.0}]
    fused = device is not None and torch.device(device).type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=fused)


def lr_at(step, lr, warmup_steps, max_steps):
    """Linear warm-up to `lr`, then cosine decay to 10% of it at max_steps."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
