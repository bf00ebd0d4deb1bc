"""Pieces of sampling shared by VAR and the AR baseline: the KV cache, classifier-free
guidance, and top-k / top-p / temperature sampling.

Left out: the loop itself, which is each model's `generate` (var.py, ar.py).
"""
import torch
import torch.nn.functional as F

NOT_FINITE = ("the sampling probabilities are not finite numbers: the logits overflowed (a very large --cfg-scale?); "
              "use a smaller guidance weight")


class KVCache:
    """Keys and values of the tokens seen so far, for one attention layer.

    Allocated at the first step for the whole sequence, in the keys' own dtype (bf16 under
    autocast: half the memory, and no cast of the whole prefix at every step), so adding a
    step is a copy into a slice (no torch.cat, whose cost grows with the sequence)."""

    def __init__(self, max_len):
        self.max_len, self.len, self.k, self.v = max_len, 0, None, None

    def append(self, k_BHlD, v_BHlD):
        """Store the new tokens' keys/values; return keys/values of every token so far."""
        if self.k is None:
            B, H, _, D = k_BHlD.shape
            self.k, self.v = k_BHlD.new_empty(B, H, self.max_len, D), v_BHlD.new_empty(B, H, self.max_len, D)
        n = k_BHlD.shape[2]
        self.k[:, :, self.len:self.len + n] = k_BHlD
        self.v[:, :, self.len:self.len + n] = v_BHlD
        self.len += n
        return self.k[:, :, :self.len], self.v[:, :, :self.len]


def guided_logits(logits_2BlV, weight):
    """Classifier-free guidance (Ho & Salimans, 2022) on a batch stacked as [cond; uncond]:
    (1 + w)·cond − w·uncond. w = 0 gives the conditional logits unchanged. In fp32, as the
    head's logits are: in bf16 the mix would magnify their rounding by 1 + 2w."""
    cond, uncond = logits_2BlV.float().chunk(2)
    return (1 + weight) * cond - weight * uncond


def sampling_probs(logits_BlV, temperature=1.0, top_k=0, top_p=1.0):
    """The distribution each position's token is drawn from, in three steps: divide the
    logits by the temperature (below 1 sharpens, above 1 flattens); keep the top_k most
    likely tokens (0: all); of those, keep the smallest set whose probability reaches top_p
    (1: all). What is kept is renormalised. Returns probabilities, B×l×V."""
    logits = logits_BlV.float() / max(temperature, 1e-6)
    V = logits.shape[-1]
    if 0 < top_k < V:  # keep the k most likely tokens
        kth_best = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p < 1.0:  # keep the smallest set of tokens whose probability reaches top_p
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # mass before this token already enough
        drop_sorted[..., 0] = False  # the most likely token always stays, however small top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return F.softmax(logits, dim=-1)


def sample_tokens(logits_BlV, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    """Draw one token per position from sampling_probs. top_k=0 and top_p=1 switch those filters off.
    Overflowed logits (generate checks them once, after its loop, not at every step: that would
    wait for a GPU at every step) give NaN probabilities, drawn as uniform rather than crash the draw."""
    probs = sampling_probs(logits_BlV, temperature, top_k, top_p).nan_to_num(1.0)
    return torch.multinomial(probs.flatten(0, -2), 1, generator=generator).view(probs.shape[:-1])
