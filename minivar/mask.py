"""The block-causal attention mask: the one structural change VAR makes to a GPT.

The sequence is cut into blocks (VAR: one block per scale, sizes 1, 4, 9, ..., 64).
Token i may attend to token j iff block(j) <= block(i): everything in coarser scales
and everything in its own scale, nothing finer (paper §3.1, Fig. 4). With blocks of
size 1 the same rule gives the ordinary lower-triangular mask of raster-order AR.
"""
import torch


def block_causal_mask(block_sizes) -> torch.Tensor:
    """L×L boolean mask, True where attention is allowed (the convention of
    torch.nn.functional.scaled_dot_product_attention's boolean attn_mask)."""
    block_of_token = torch.repeat_interleave(torch.arange(len(block_sizes)), torch.tensor(block_sizes))
    return block_of_token[None, :] <= block_of_token[:, None]  # [i, j]: block(j) <= block(i)


def scale_block_sizes(scales):
    """VAR's blocks: an s×s token map per scale."""
    return [s * s for s in scales]
