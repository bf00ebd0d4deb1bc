"""Transformer blocks shared by VAR and the AR baseline: a GPT-style pre-norm block whose
layer norms are modulated by the class (adaptive layer norm, as in DiT and VAR §4).

    x = x + gate1 · Attention(LN(x)·(1 + scale1) + shift1)
    x = x + gate2 · MLP(LN(x)·(1 + scale2) + shift2)

(shift, scale, gate) come from the class embedding through one linear layer, zero-
initialised so every block starts as the identity (adaLN-Zero). Queries and keys are
RMS-normalised per head (q/k normalisation), which keeps attention logits bounded and
training stable at the high learning rates small models like.

A full pass (training, scoring) attends under one of three masks. The dense L×L boolean
tensor of mask.py is the readable reference: SDPA computes all L² (query, key) pairs and
throws away the masked ones (about 40% of VAR's). AR's mask is plain causal, and SDPA's
own is_causal lets its kernels skip the tiles above the diagonal. With VARConfig.attention
= "flex", PyTorch's FlexAttention gets a BlockMask, which knows per 128×128 tile whether
the mask rules it out entirely, so its kernel skips those tiles. FlexAttention needs
torch.compile; where that fails, or where FlexAttention has no backward (CPU and MPS in
torch 2.13: there it serves forward passes only), the dense path runs after one warning.
Sampling with a KV cache needs no mask: new tokens may see every cached one.
"""
import functools
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from minivar.mask import block_causal_mask

try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, create_mask, flex_attention
except ImportError:
    BlockMask = flex_attention = None

ATTENTION = ("sdpa", "flex")  # the values of VARConfig.attention
CAUSAL = "causal"  # a mask: SDPA's built-in lower-triangular one (is_causal=True)
_flex = {"fn": None, "error": None}  # flex_attention compiled once per process; or why it cannot be
_warned = set()


def _warn_once(message):
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


def flex_unavailable(device, need_grad):
    """Why FlexAttention cannot run here, in a few words; None if it can."""
    if flex_attention is None:
        return f"torch {torch.__version__} has no FlexAttention"
    if _flex["fn"] is None and _flex["error"] is None:
        try:  # lazy: the real compilation happens at the first call of each shape
            _flex["fn"] = torch.compile(flex_attention, dynamic=False)
        except Exception as e:  # e.g. a Python that torch.compile does not support yet
            _flex["error"] = f"torch.compile is unavailable ({type(e).__name__}: {e})"
    if _flex["error"]:
        return _flex["error"]
    if need_grad and device.type in ("cpu", "mps"):
        return f"FlexAttention has no backward on {device.type} in torch {torch.__version__}"
    return None


@functools.lru_cache(maxsize=8)
def flex_block_mask(block_sizes: tuple, device):
    """mask.block_causal_mask as a FlexAttention BlockMask, built once per (sequence, device)."""
    block_L = torch.repeat_interleave(torch.arange(len(block_sizes)), torch.tensor(block_sizes)).to(device)

    def same_or_coarser_block(b, h, q_idx, kv_idx):  # the mask_mod: mask.py's rule, one pair at a time
        return block_L[kv_idx] <= block_L[q_idx]
    return create_block_mask(same_or_coarser_block, None, None, len(block_L), len(block_L), device=device)


def attention_mask(attention, block_sizes, mask_LL):
    """The mask a full pass attends under: FlexAttention's block mask if asked for and able to
    run here; else SDPA's causal mask for blocks of one token (AR), else the dense mask."""
    if attention not in ATTENTION:
        raise ValueError(f"attention={attention!r}: expected one of {ATTENTION}")
    if attention == "flex":
        why = flex_unavailable(mask_LL.device, need_grad=torch.is_grad_enabled())
        if why is None:
            return flex_block_mask(tuple(block_sizes), mask_LL.device)
        _warn_once(f"attention='flex': {why}; the dense mask is used instead")
    return CAUSAL if len(block_sizes) == len(mask_LL) else mask_LL


def attend(q_BHLd, k_BHLd, v_BHLd, mask=None):
    """softmax(q·kᵀ/√d)·v over the pairs `mask` allows: None (all), CAUSAL, a dense boolean
    L×L tensor or a FlexAttention BlockMask (see the top of this file)."""
    if isinstance(mask, str):
        return F.scaled_dot_product_attention(q_BHLd, k_BHLd, v_BHLd, is_causal=True)
    if BlockMask is not None and isinstance(mask, BlockMask):
        try:
            if flex_unavailable(q_BHLd.device, need_grad=False) is None:
                return _flex["fn"](q_BHLd, k_BHLd, v_BHLd, block_mask=mask)
        except torch._dynamo.exc.TorchDynamoException as e:  # compiling failed (no C++ compiler, no Triton...)
            _flex["error"] = f"compiling FlexAttention failed ({type(e).__name__})"
            _warn_once(f"attention='flex': {_flex['error']}; the dense mask is used instead")
        mask = create_mask(mask.mask_mod, None, None, q_BHLd.shape[2], k_BHLd.shape[2], q_BHLd.device)
    return F.scaled_dot_product_attention(q_BHLd, k_BHLd, v_BHLd, attn_mask=mask)


def fastest_attention(block_sizes, heads, head_dim, batch, device, repeats=3):
    """train.py --attention auto: time one forward+backward of attention alone, with this
    model's shapes (in autocast's dtype if called under it), under the dense mask and under
    FlexAttention; the rest of a training step is the same for both. Returns (the faster,
    {path: seconds}, why FlexAttention was not timed or None)."""
    why = flex_unavailable(device, need_grad=True)
    if why:
        return "sdpa", {}, why
    mask_LL = block_causal_mask(block_sizes).to(device)
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else torch.float32
    q, k, v = (torch.randn(batch, heads, len(mask_LL), head_dim, device=device, dtype=dtype, requires_grad=True)
               for _ in range(3))
    seconds = {}
    for attention in ATTENTION:
        mask = attention_mask(attention, block_sizes, mask_LL)
        times = []
        for i in range(repeats + 1):  # the first run compiles FlexAttention, and is not counted
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            attend(q, k, v, mask).sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
        seconds[attention] = sorted(times[1:])[repeats // 2]
    if _flex["error"]:  # compiling failed during the first run: what was timed was the dense path
        return "sdpa", {"sdpa": seconds["sdpa"]}, _flex["error"]
    return min(seconds, key=seconds.get), seconds, None


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
