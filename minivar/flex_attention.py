"""FlexAttention: an optional faster path for VAR's block-causal attention (skip on a first read).

The dense L×L boolean mask of mask.py is the readable reference, but SDPA computes all L²
(query, key) pairs and throws away the masked ones (about 40% of VAR's). PyTorch's
FlexAttention takes a BlockMask built from a `mask_mod` (mask.py's rule, one pair at a
time) and knows, per 128×128 tile, whether the mask rules the tile out entirely; its
kernel skips those tiles. VARConfig.attention = "flex" asks for it; train.py --attention
auto times both paths on the device at hand and keeps the faster.

FlexAttention needs torch.compile. Where compiling fails, or where FlexAttention has no
backward (CPU and MPS in torch 2.13: there it serves forward passes only), the dense
mask runs instead, after one warning.
"""
import functools
import time
import warnings

import torch
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


def is_block_mask(mask):
    return BlockMask is not None and isinstance(mask, BlockMask)


def attend(q_BHLd, k_BHLd, v_BHLd, block_mask):
    """FlexAttention over the tiles block_mask keeps; if compiling fails, the same mask dense."""
    try:
        if flex_unavailable(q_BHLd.device, need_grad=False) is None:
            return _flex["fn"](q_BHLd, k_BHLd, v_BHLd, block_mask=block_mask)
    except torch._dynamo.exc.TorchDynamoException as e:  # compiling failed (no C++ compiler, no Triton...)
        _flex["error"] = f"compiling FlexAttention failed ({type(e).__name__})"
        _warn_once(f"attention='flex': {_flex['error']}; the dense mask is used instead")
    mask_LL = create_mask(block_mask.mask_mod, None, None, q_BHLd.shape[2], k_BHLd.shape[2], q_BHLd.device)
    return F.scaled_dot_product_attention(q_BHLd, k_BHLd, v_BHLd, attn_mask=mask_LL)


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
            (attend(q, k, v, mask) if is_block_mask(mask) else
             F.scaled_dot_product_attention(q, k, v, attn_mask=mask)).sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
        seconds[attention] = sorted(times[1:])[repeats // 2]
    if _flex["error"]:  # compiling failed during the first run: what was timed was the dense path
        return "sdpa", {"sdpa": seconds["sdpa"]}, _flex["error"]
    return min(seconds, key=seconds.get), seconds, None
