"""Zero-shot editing: in-painting, out-painting and class editing with no extra training
(paper §4.4).

VAR generates every scale of the whole image at once, each token seeing all coarser
scales everywhere. So to edit an image: encode it into its K token maps, then generate as
usual, but at every scale put the source's tokens back wherever the token lies outside the
region to edit (`VAR.generate(keep=...)`). The next scale then sees the real image around
the hole and fills the hole to match, on both sides of it. That is why it needs no
training: the model already learned p(scale k | scales < k) for whole images.

A token of an s×s map covers a (32/s)×(32/s) cell of the image. It is regenerated when at
least half of its cell lies in the edited region, else kept: the coarse maps (1×1, 2×2)
carry the image's overall colour and layout, and are kept unless the region covers most
of the image.

Raster AR cannot do this: token t only sees tokens before it in reading order, so a hole
cannot look at what lies below or right of it. AR can only continue a prefix.
"""
from typing import NamedTuple

import torch

from minivar.quantizer import flatten_scales

MODES = ("inpaint", "outpaint", "classedit")


class Edited(NamedTuple):
    images: torch.Tensor  # B×3×32×32, the edits decoded
    tokens_BL: torch.Tensor  # the token maps they were decoded from, all scales flattened
    source_BL: torch.Tensor  # the source image's token maps, the same layout
    keep_L: torch.Tensor  # True where a token was the source's, at every scale


def edit_region(box, image_side=32):
    """A box (x0, y0, x1, y1) in pixels, x1 and y1 exclusive -> boolean side×side pixel map."""
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= image_side and 0 <= y0 < y1 <= image_side):
        raise ValueError(f"box {x0},{y0},{x1},{y1}: need 0 <= x0 < x1 <= {image_side} and 0 <= y0 < y1 <= {image_side}")
    region = torch.zeros(image_side, image_side, dtype=torch.bool)
    region[y0:y1, x0:x1] = True
    return region


def edited_region(box, mode, image_side=32):
    """The pixels a mode redraws: the box (inpaint, classedit) or all but the box (outpaint)."""
    region = edit_region(box, image_side)
    return ~region if mode == "outpaint" else region


def keep_mask(scales, region_HW):
    """Per scale, which tokens keep the source's value: those with less than half of their
    cell in the edited region. Returns a bool row of L = Σ s² entries (all scales flattened)."""
    keep = []
    for s in scales:
        fraction_edited = torch.nn.functional.adaptive_avg_pool2d(region_HW[None, None].float(), s)[0, 0]
        keep.append((fraction_edited < 0.5).flatten())
    return torch.cat(keep)


@torch.no_grad()
def edit(model, tokenizer, image_B3HW, labels_B, box, mode, **sampling):
    """Edit images (in [-1, 1]) with the VAR model. inpaint and classedit regenerate the
    box (classedit with labels_B set to the new class); outpaint keeps the box and
    regenerates the rest. Returns an Edited: the images, the tokens drawn, the source's tokens
    and the keep row (wherever it is True, tokens_BL equals source_BL)."""
    if mode not in MODES:
        raise ValueError(f"edit mode {mode!r}: choose one of {', '.join(MODES)}")
    if max(model.block_sizes) == 1:  # the AR baseline (ar.py): one token per step, in reading order
        raise ValueError("zero-shot editing needs a VAR model; raster AR can only continue a prefix")
    region = edited_region(box, mode, image_B3HW.shape[-1]).to(image_B3HW.device)
    source_BL = flatten_scales(tokenizer.encode(image_B3HW))
    keep_L = keep_mask(model.cfg.scales, region)
    keep_BL = keep_L[None].expand_as(source_BL)
    idx_list = model.generate(tokenizer.quantizer, labels_B, keep=(source_BL, keep_BL), **sampling)
    return Edited(tokenizer.decode(idx_list), flatten_scales(idx_list), source_BL, keep_L)
