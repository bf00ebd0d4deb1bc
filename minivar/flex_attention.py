"""FlexAttention: an optional attention kernel for long block-causal sequences (skip on a first read).

SDPA under a dense L×L boolean mask computes all L² (query, key) pairs and throws away the
masked ones. PyTorch's FlexAttention takes a BlockMask built from a `mask_mod` (mask.py's
rule, one pair at a time) and knows, per 128×128 tile, whether the mask rules the whole
tile out; its kernel skips those tiles. That pays only for long sequences: at CIFAR-10's
155 tokens (two tiles a side) every tile holds an allowed pair and nothing is skipped, so
here it can only add compile time; for a 64×64 token map (11,411 tokens) it computes 62%
of the pairs (studies/training_cost.py).

`use_flex(model)` swaps each attention layer's full-pass call for FlexAttention; the mask
the model passes is not needed, the block mask is built once per device from the model's
block sizes. VARConfig.attention = "flex" asks the training stage for it; train.py
--attention auto times both paths on the device at hand and keeps the faster.

FlexAttention needs torch.compile. Where compiling fails, or where FlexAttention has no
backward (CPU and MPS in torch 2.13: there it serves forward passes only), the call runs
SDPA under the model's dense mask instead, after one warning.
"""
import functools
import time
import warnings

import torch
import torch.nn.functional as F

from minivar.mask import block_causal_mask

try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError:
    BlockMask = flex_attention = None

ATTENTION = ("sdpa", "flex")  # the values of VARConfig.attention
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
    if need_grad and torch.device(device).type in ("cpu", "mps"):
        return f"FlexAttention has no backward on {torch.device(device).type} in torch {torch.__version__}"
    return None


@functools.lru_cache(maxsize=8)
def flex_block_mask(block_sizes: tuple, device):
    """mask.block_causal_mask as a FlexAttention BlockMask, built once per (sequence, device)."""
    block_L = torch.repeat_interleave(torch.arange(len(block_sizes)), torch.tensor(block_sizes)).to(device)

    def same_or_coarser_block(b, h, q_idx, kv_idx):  # the mask_mod: mask.py's rule, one pair at a time
        return block_L[kv_idx] <= block_L[q_idx]
    return create_block_mask(same_or_coarser_block, None, None, len(block_L), len(block_L), device=device)


class FlexAttend:
    """An attention layer's full-pass call (transformer.Attention.attend): FlexAttention over the
    tiles the block-causal mask of `block_sizes` keeps, where it can run; else SDPA under attn_mask."""

    def __init__(self, block_sizes):
        self.block_sizes = tuple(block_sizes)

    def __call__(self, q_BHLd, k_BHLd, v_BHLd, attn_mask=None):
        L = q_BHLd.shape[2]
        why = flex_unavailable(q_BHLd.device, need_grad=torch.is_grad_enabled())
        if why is None and L == sum(self.block_sizes):  # (a prefix, as a sampler without cache runs: dense)
            try:
                return _flex["fn"](q_BHLd, k_BHLd, v_BHLd, block_mask=flex_block_mask(self.block_sizes, q_BHLd.device))
            except torch._dynamo.exc.TorchDynamoException as e:  # compiling failed (no C++ compiler, no Triton...)
                _flex["error"] = why = f"compiling FlexAttention failed ({type(e).__name__})"
        if why:
            _warn_once(f"attention='flex': {why}; the dense mask is used instead")
        return F.scaled_dot_product_attention(q_BHLd, k_BHLd, v_BHLd, attn_mask=attn_mask)


def use_flex(model):
    """Full passes of `model` (VAR or AR) attend with FlexAttention from now on; its config says so."""
    for block in model.blocks:
        block.attn.attend = FlexAttend(model.block_sizes)
    model.cfg.attention = "flex"
    return model


def dense_attention(block_sizes, mask_LL):
    """What a full pass runs without FlexAttention: SDPA's causal kernel for blocks of one token
    (the AR baseline, ar.py), else SDPA under the dense mask."""
    if max(block_sizes) == 1:
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask_LL)


def fastest_attention(block_sizes, heads, head_dim, batch, device, repeats=3):
    """train.py --attention auto: time one forward+backward of attention alone, with this
    model's shapes (in autocast's dtype if called under it), the dense way (dense_attention)
    and with FlexAttention; the rest of a training step is the same for both. Returns (the
    faster, {path: seconds}, why FlexAttention was not timed or None)."""
    why = flex_unavailable(device, need_grad=True)
    if why:
        return "sdpa", {}, why
    mask_LL = block_causal_mask(block_sizes).to(device)
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else torch.float32
    q, k, v = (torch.randn(batch, heads, len(mask_LL), head_dim, device=device, dtype=dtype, requires_grad=True)
               for _ in range(3))
    paths = {"sdpa": dense_attention(block_sizes, mask_LL),
             "flex": lambda q, k, v: FlexAttend(block_sizes)(q, k, v, attn_mask=mask_LL)}
    seconds = {}
    for attention, attend in paths.items():
        times = []
        for i in range(repeats + 1):  # the first run compiles FlexAttention, and is not counted
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            attend(q, k, v).sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
        seconds[attention] = sorted(times[1:])[repeats // 2]
    if _flex["error"]:  # compiling failed during the first run: what was timed was the dense path
        return "sdpa", {"sdpa": seconds["sdpa"]}, _flex["error"]
    return min(seconds, key=seconds.get), seconds, None
