"""Build it: which tokens an edit keeps (notebook 07; paper §4.4).

Write the body of keep_mask below, then grade it:

    python notebooks/grade.py keep

The grader copies the project into a temporary folder, puts your function in place of the one
in minivar/applications/editing.py, and runs tests/test_editing.py there (it works out by hand
which tokens each edit must keep): PASS or FAIL, with the tests that failed. Your checkout is
never changed.

Use only `torch` (what editing.py imports, besides flatten_scales); helpers go inside the function.
"""
import torch


def keep_mask(scales, region_HW):
    """Per scale, which tokens keep the source image's token when editing.

    scales: the sides of the token maps, e.g. (1, 2, 3, 4, 5, 6, 8).
    region_HW: a boolean H×W pixel map (32×32), True where the image is redrawn.

    A token of an s×s map covers one cell of the image: the image cut into an s×s grid (for
    sides that do not divide 32, the cells adaptive average pooling uses). The token is KEPT
    when less than half of its cell is redrawn (the fraction of True pixels in its cell is
    below 0.5), else it is redrawn. Returns one bool row of L = Σ s² entries: the maps in the
    order of `scales`, each read row by row (as flatten_scales lays out the tokens).

    Worked example: the right half of the image redrawn, scales (1, 2):
        1×1: half of its cell is redrawn, not less than half -> redrawn: [False]
        2×2: the left column kept, the right one redrawn:  [True, False, True, False]
    so the result is tensor([False, True, False, True, False]).

    Hint: torch.nn.functional.adaptive_avg_pool2d of the region as floats, at side s, gives
    the fraction of each cell that is redrawn (it wants a batch and a channel dimension).
    """
    raise NotImplementedError("write keep_mask: see the docstring")
