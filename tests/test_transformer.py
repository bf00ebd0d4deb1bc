"""The transformer block and head (transformer.py), recomputed in plain torch: adaLN's shift, scale
and gate, q/k normalisation per head, attention under a mask or over a KV cache, the MLP."""
import math

import pytest
import torch
import torch.nn.functional as F

from minivar.sampling import KVCache
from minivar.transformer import AdaLNBlock, AdaLNHead, init_weights

D, H, B, L = 16, 2, 3, 6
EPS = torch.finfo(torch.float32).eps  # nn.RMSNorm's default


def randomized(module, seed=0):
    """Every parameter random, the norm gains far from 1: no path is left at its neutral value."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module


def layer_norm(x):
    return (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()


def rms_norm(x, gain):
    return x / (x.pow(2).mean(-1, keepdim=True) + EPS).sqrt() * gain


def block_by_hand(block, x, cond, mask=None, past=None):
    """One AdaLNBlock in plain torch. past: (keys, values) of earlier tokens, B×H×P×Dh, seen by all new ones."""
    W = {name: p.detach() for name, p in block.named_parameters()}
    ada = F.silu(cond) @ W["ada.1.weight"].T + W["ada.1.bias"]  # B×6D
    shift1, scale1, gate1, shift2, scale2, gate2 = (ada[:, i * D:(i + 1) * D, None].transpose(1, 2) for i in range(6))
    h = layer_norm(x) * (1 + scale1) + shift1
    qkv = (h @ W["attn.qkv.weight"].T + W["attn.qkv.bias"]).view(B, -1, 3, H, D // H)
    q = rms_norm(qkv[:, :, 0], W["attn.q_norm.weight"]).transpose(1, 2)  # B×H×l×Dh
    k = rms_norm(qkv[:, :, 1], W["attn.k_norm.weight"]).transpose(1, 2)
    v = qkv[:, :, 2].transpose(1, 2)
    if past is not None:
        k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D // H)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, -1, D)
    x = x + gate1 * (y @ W["attn.proj.weight"].T + W["attn.proj.bias"])
    h = layer_norm(x) * (1 + scale2) + shift2
    mlp = F.gelu(h @ W["mlp.0.weight"].T + W["mlp.0.bias"]) @ W["mlp.2.weight"].T + W["mlp.2.bias"]
    return x + gate2 * mlp, (k, v)


def test_a_block_under_a_mask_is_adaln_around_masked_attention_and_an_mlp():
    block = randomized(AdaLNBlock(D, H))
    x, cond = torch.randn(B, L, D), torch.randn(B, D)
    mask = torch.rand(L, L) < 0.5
    mask |= torch.eye(L, dtype=torch.bool)  # every token sees at least itself
    expected, _ = block_by_hand(block, x, cond, mask)
    torch.testing.assert_close(block(x, cond, mask), expected, atol=1e-5, rtol=1e-5)
    unmasked, _ = block_by_hand(block, x, cond)
    assert (unmasked - expected).abs().max() > 1e-2  # the mask matters here: the comparison can fail


def test_a_block_with_a_kv_cache_lets_new_tokens_see_every_cached_one():
    block = randomized(AdaLNBlock(D, H), seed=1)
    first, new, cond = torch.randn(B, 4, D), torch.randn(B, 2, D), torch.randn(B, D)
    cache = KVCache(max_len=6)
    block(first, cond, cache=cache)
    _, past = block_by_hand(block, first, cond)
    expected, _ = block_by_hand(block, new, cond, past=past)
    torch.testing.assert_close(block(new, cond, cache=cache), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_the_head_is_adaln_then_a_linear_map_in_fp32(dtype):
    head = randomized(AdaLNHead(D, 11), seed=2)
    x, cond = torch.randn(B, L, D), torch.randn(B, D)
    W = {name: p.detach() for name, p in head.named_parameters()}
    shift, scale = (F.silu(cond) @ W["ada.1.weight"].T + W["ada.1.bias"])[:, None].chunk(2, -1)
    expected = (layer_norm(x) * (1 + scale) + shift) @ W["out.weight"].T + W["out.bias"]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        logits = head(x, cond)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_each_class_gets_its_own_modulation():
    """Two rows with the same tokens and different class vectors come out different (adaLN reads the class)."""
    block = randomized(AdaLNBlock(D, H))
    x, cond = torch.randn(1, L, D).expand(2, -1, -1), torch.randn(2, D)
    with torch.no_grad():
        out = block(x, cond, torch.ones(L, L, dtype=torch.bool).tril())
    assert not torch.allclose(out[0], out[1], atol=1e-3)


def test_a_fresh_block_is_the_identity_adaln_zero():
    """init_weights zeroes the adaLN layers: every gate is 0, so each block starts by passing x through."""
    block = AdaLNBlock(D, H)
    init_weights(block)
    x, cond = torch.randn(2, L, D), torch.randn(2, D)
    with torch.no_grad():
        assert torch.equal(block(x, cond, torch.ones(L, L, dtype=torch.bool).tril()), x)
