"""Transformer blocks shared by VAR and the AR baseline: a GPT-style pre-norm block whose
layer norms are modulated by the class (adaptive layer norm, as in DiT and VAR §4).

    x = x + gate1 · Attention(LN(x)·(1 + scale1) + shift1)
    x = x + gate2 · MLP(LN(x)·(1 + scale2) + shift2)

(shift, scale, gate) come from the class embedding through one linear layer, zero-
initialised so every block starts as the identity (adaLN-Zero). Queries and keys are
RMS-normalised per head (q/k normalisation), which keeps attention logits bounded and
training stable at the high learning rates small models like.

A full pass (training, scoring) attends under the dense L×L boolean mask of mask.py (the
readable reference), under SDPA's own causal mask for blocks of one token (AR: its kernels
skip the tiles above the diagonal), or under FlexAttention's block mask (VARConfig.attention
= "flex": an optional faster path, in flex_attention.py). Sampling with a KV cache needs no
mask: new tokens may see every cached one.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from minivar import flex_attention


def attend(q_BHLd, k_BHLd, v_BHLd, mask=None):
    """softmax(q·kᵀ/√d)·v over the pairs `mask` allows: None (all of them), a dense boolean
    L×L tensor, flex_attention.CAUSAL, or a FlexAttention BlockMask."""
    if mask is None or isinstance(mask, torch.Tensor):
        return F.scaled_dot_product_attention(q_BHLd, k_BHLd, v_BHLd, attn_mask=mask)
    if isinstance(mask, str):  # CAUSAL
        return F.scaled_dot_product_attention(q_BHLd, k_BHLd, v_BHLd, is_causal=True)
    return flex_attention.attend(q_BHLd, k_BHLd, v_BHLd, mask)  # a BlockMask


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm, self.k_norm = nn.RMSNorm(dim // heads), nn.RMSNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BLD, mask=None, cache=None):
        """Full pass under a mask (training: see attend), or new tokens only with a KV cache
        (sampling: the cache holds every earlier token, all of which the new ones may see)."""
        B, L, D = x_BLD.shape
        q, k, v = self.qkv(x_BLD).view(B, L, 3, self.heads, D // self.heads).unbind(2)  # each B×L×H×Dh
        # normalise while the head dim is contiguous, then view as B×H×L×Dh (no copy)
        # (in fp32: under bf16 autocast the norm's fp32 weight would otherwise miss the fused kernel)
        q, k = self.q_norm(q.float()).type_as(v), self.k_norm(k.float()).type_as(v)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            k, v = cache.append(k, v)
        y = attend(q, k, v, mask)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))


class AdaLNBlock(nn.Module):
    def __init__(self, dim, heads, mlp_ratio=4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def modulation(self, cond_BD):
        """(shift, scale, gate) ×2 from the class. The class is fixed for a whole sequence,
        so sampling computes this once, not at every step (an AR step would redo it n² times)."""
        return self.ada(cond_BD)[:, None].chunk(6, dim=-1)

    def forward(self, x_BLD, modulation, mask=None, cache=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = modulation
        # addcmul(a, b, c) = a + b·c in one pass over memory (this model is small enough
        # for elementwise work to cost as much as the matmuls on a CPU)
        h = torch.addcmul(shift1, self.norm1(x_BLD), 1 + scale1)
        x_BLD = torch.addcmul(x_BLD, gate1, self.attn(h, mask, cache))
        h = torch.addcmul(shift2, self.norm2(x_BLD), 1 + scale2)
        return torch.addcmul(x_BLD, gate2, self.mlp(h))


class AdaLNHead(nn.Module):
    """Final adaptive layer norm, then logits over the codebook."""

    def __init__(self, dim, vocab_size):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.out = nn.Linear(dim, vocab_size)

    def modulation(self, cond_BD):
        return self.ada(cond_BD)[:, None].chunk(2, dim=-1)

    def forward(self, x_BLD, modulation):
        shift, scale = modulation
        return self.out(self.norm(x_BLD) * (1 + scale) + shift)


def init_weights(model):
    """GPT-2 style small normal weights and zero biases; then the adaLN layers to zero."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, (AdaLNBlock, AdaLNHead)):
            nn.init.zeros_(m.ada[1].weight), nn.init.zeros_(m.ada[1].bias)
