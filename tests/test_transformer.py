"""The transformer block (transformer.py), written out in plain torch and compared: adaLN's
shift, scale and gate from the class, layer norms without their own gain, q/k RMS
normalisation per head, attention under the mask, the GELU MLP. Nothing here calls the block
twice to compare it with itself; notebook 03 teaches the same lines."""
import math

import pytest
import torch
import torch.nn.functional as F

from minivar.mask import block_causal_mask, scale_block_sizes
from minivar.transformer import AdaLNBlock, init_weights

D, HEADS = 16, 2


def layer_norm(x):
    """(x − mean) / sqrt(var + 1e-5) over the channels: nn.LayerNorm without a gain or bias."""
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt((x - mean).pow(2).mean(-1, keepdim=True) + 1e-5)


def rms_norm(x, gain):
    """x / sqrt(mean(x²) + eps) · gain: nn.RMSNorm, whose eps defaults to the dtype's machine epsilon."""
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps) * gain


def block_by_hand(block, x, cond, mask):
    B, L, _ = x.shape
    ada = F.silu(cond) @ block.ada[1].weight.T + block.ada[1].bias  # B × 6D
    shift1, scale1, gate1, shift2, scale2, gate2 = (part[:, None] for part in ada.split(D, dim=-1))
    h = layer_norm(x) * (1 + scale1) + shift1
    qkv = h @ block.attn.qkv.weight.T + block.attn.qkv.bias  # B × L × 3D: the queries, then keys, then values
    q, k, v = (t.reshape(B, L, HEADS, D // HEADS).transpose(1, 2) for t in qkv.split(D, dim=-1))  # B × H × L × Dh
    q, k = rms_norm(q, block.attn.q_norm.weight), rms_norm(k, block.attn.k_norm.weight)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(D // HEADS)).masked_fill(~mask, float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, L, D)
    x = x + gate1 * (y @ block.attn.proj.weight.T + block.attn.proj.bias)
    h = layer_norm(x) * (1 + scale2) + shift2
    fc1, fc2 = block.mlp[0], block.mlp[2]
    return x + gate2 * (F.gelu(h @ fc1.weight.T + fc1.bias) @ fc2.weight.T + fc2.bias)


def random_block(seed=0):
    """Every weight random, the norms' gains too, so that each term of the formula matters."""
    torch.manual_seed(seed)
    block = AdaLNBlock(D, HEADS).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
    return block


@pytest.mark.parametrize("scales", [(1, 2, 3), (1, 2)])
def test_the_block_is_adaln_attention_with_qk_norm_then_an_mlp_by_hand(scales):
    block = random_block()
    mask = block_causal_mask(scale_block_sizes(scales))
    g = torch.Generator().manual_seed(1)
    x, cond = torch.randn(3, len(mask), D, generator=g), torch.randn(3, D, generator=g)
    with torch.no_grad():
        assert torch.allclose(block(x, cond, mask), block_by_hand(block, x, cond, mask), atol=1e-5)


def test_each_class_gets_its_own_modulation():
    """Two rows with the same tokens and different class vectors come out different (adaLN reads the class)."""
    block = random_block()
    mask = block_causal_mask(scale_block_sizes((1, 2)))
    x = torch.randn(1, len(mask), D).expand(2, -1, -1)
    cond = torch.randn(2, D)
    with torch.no_grad():
        out = block(x, cond, mask)
    assert not torch.allclose(out[0], out[1], atol=1e-3)


def test_a_fresh_block_is_the_identity_adaln_zero():
    """init_weights zeroes the adaLN layers: every gate is 0, so each block starts by passing x through."""
    block = AdaLNBlock(D, HEADS)
    init_weights(block)
    x, cond = torch.randn(2, 5, D), torch.randn(2, D)
    with torch.no_grad():
        assert torch.equal(block(x, cond, block_causal_mask([1, 4])), x)
