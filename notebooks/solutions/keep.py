"""A solution of notebooks/exercises/keep.py: `python notebooks/grade.py keep --solution` grades it."""
import torch


def keep_mask(scales, region_HW):
    """Per scale, the tokens with less than half of their cell in the redrawn region; one bool row of Σ s²."""
    keep = []
    for s in scales:
        fraction_edited = torch.nn.functional.adaptive_avg_pool2d(region_HW[None, None].float(), s)[0, 0]
        keep.append((fraction_edited < 0.5).flatten())
    return torch.cat(keep)
