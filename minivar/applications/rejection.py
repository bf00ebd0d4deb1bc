"""Best-of-N rejection sampling by the model's own implicit classifier.

A class-conditional model that also learned the unconditional p(x | ∅) (the null class
of CFG) holds a classifier for free. By Bayes,

    log p(c | x) = log p(x | c) − log p(x) + log p(c),

and with p(x | ∅) standing in for p(x) and balanced classes, the score

    s(x, c) = log p(x | c) − log p(x | ∅)

ranks samples by how clearly they show class c. Draw N candidates per requested image,
score each with two teacher-forced passes (with the class, with the null class), keep
the best. The cost: N times the sampling plus two forward passes per candidate.
"""
import torch
import torch.nn.functional as F

from minivar.quantizer import flatten_scales


@torch.no_grad()
def implicit_classifier_score(model, quantizer, idx_list, labels_B):
    """s(x, c) = log p(x | c) − log p(x | ∅), summed over all tokens of each sample (nats)."""
    tokens_BL = flatten_scales(idx_list)
    x_BLC = model.teacher_forcing_inputs(quantizer, tokens_BL)
    null_B = torch.full_like(labels_B, model.cfg.num_classes)

    def log_likelihood(labels):
        logits_BLV, _ = model(x_BLC, labels)
        return -F.cross_entropy(logits_BLV.float().transpose(1, 2), tokens_BL, reduction="none").sum(1)

    return log_likelihood(labels_B) - log_likelihood(null_B)


@torch.no_grad()
def generate_best_of(model, quantizer, labels_B, n_candidates, generator=None, **sampling):
    """Draw n_candidates samples per label in one batch, keep the one with the highest
    implicit-classifier score. n_candidates = 1 is plain sampling, draw for draw.
    Returns (index maps of the kept samples, scores B × n_candidates)."""
    if n_candidates < 1:
        raise ValueError(f"need at least 1 candidate per image, got {n_candidates}")
    labels_BN = labels_B.repeat_interleave(n_candidates)  # candidates of one image side by side
    idx_list = model.generate(quantizer, labels_BN, generator=generator, **sampling)
    scores_BN = implicit_classifier_score(model, quantizer, idx_list, labels_BN).view(-1, n_candidates)
    best_B = scores_BN.argmax(1) + torch.arange(len(labels_B), device=labels_B.device) * n_candidates
    return [idx[best_B] for idx in idx_list], scores_BN
