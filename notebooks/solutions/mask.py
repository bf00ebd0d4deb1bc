"""A solution of notebooks/exercises/mask.py: `python notebooks/grade.py mask --solution` grades it."""
import torch


def block_causal_mask(block_sizes) -> torch.Tensor:
    """L×L boolean mask, True where query i may attend to key j: block(j) <= block(i)."""
    block_of_token = torch.repeat_interleave(torch.arange(len(block_sizes)), torch.tensor(block_sizes))
    return block_of_token[None, :] <= block_of_token[:, None]  # [i, j]: block(j) <= block(i)
