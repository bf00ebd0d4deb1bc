"""Transformer blocks shared by VAR and the AR baseline: a GPT-style pre-norm block whose
layer norms are modulated by the class (adaptive layer norm, as in DiT and VAR §4):

    x = x + gate1 · Attention(modulate(LN(x), shift1, scale1))
    x = x + gate2 · MLP(modulate(LN(x), shift2, scale2))          modulate(h, shift, scale) = h·(1 + scale) + shift

(shift, scale, gate) come from the class embedding through one linear layer, zero-
initialised so every block starts as the identity (adaLN-Zero). Queries and keys are
RMS-normalised per head (q/k normalisation), which keeps attention logits bounded and
training stable at the high learning rates small models like.

A full pass (training, scoring) attends under a boolean mask: True where attention is
allowed (VAR's block-causal mask, mask.py). Sampling with a KV cache needs no mask: the
new tokens may see every cached one. Precision: under bf16 autocast the head computes its
logits in fp32, as the official code does (bf16 logits move sampling probabilities by
percents, and classifier-free guidance amplifies the error).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def modulate(h_BLD, shift_B1D, scale_B1D):
    """adaLN: the class shifts and scales the normalised activations."""
    return h_BLD * (1 + scale_B1D) + shift_B1D


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm, self.k_norm = nn.RMSNorm(dim // heads), nn.RMSNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)
        # The full pass's attention: the AR baseline swaps in SDPA's causal kernel (ar.py),
        # flex_attention.py FlexAttention; both compute what the mask allows, faster.
        self.attend = F.scaled_dot_product_attention

    def forward(self, x_BLD, mask_LL=None, cache=None):
        B, L, D = x_BLD.shape
        q, k, v = self.qkv(x_BLD).view(B, L, 3, self.heads, D // self.heads).unbind(2)  # each B×L×H×Dh
        # normalise while the head dim is contiguous (in fp32: under bf16 autocast the norm's fp32
        # weight would otherwise miss the fused kernel), then view as B×H×L×Dh (no copy)
        q, k = self.q_norm(q.float()).type_as(v), self.k_norm(k.float()).type_as(v)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is None:
            y = self.attend(q, k, v, attn_mask=mask_LL)
        else:  # sampling: the cache holds every earlier token, all of which the new ones may see
            k, v = cache.append(k, v)
            y = F.scaled_dot_product_attention(q, k, v)
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

    def forward(self, x_BLD, cond_BD, mask_LL=None, cache=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond_BD)[:, None].chunk(6, dim=-1)  # each B×1×D
        x_BLD = x_BLD + gate1 * self.attn(modulate(self.norm1(x_BLD), shift1, scale1), mask_LL, cache)
        return x_BLD + gate2 * self.mlp(modulate(self.norm2(x_BLD), shift2, scale2))


class AdaLNHead(nn.Module):
    """Final adaptive layer norm, then logits over the codebook: in fp32 whatever the autocast."""

    def __init__(self, dim, vocab_size):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.out = nn.Linear(dim, vocab_size)

    def forward(self, x_BLD, cond_BD):
        with torch.autocast(x_BLD.device.type, enabled=False):
            shift, scale = self.ada(cond_BD.float())[:, None].chunk(2, dim=-1)
            return self.out(modulate(self.norm(x_BLD.float()), shift, scale))


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
