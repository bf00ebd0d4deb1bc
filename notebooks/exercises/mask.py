"""Build it: the block-causal mask (notebook 02; paper §3.1, Fig. 4).

Write the body of block_causal_mask below, then grade it:

    python notebooks/grade.py mask

The grader copies the project into a temporary folder, puts your function in place of the one
in minivar/mask.py, and runs the tests that guard the mask (tests/test_var.py, tests/test_ar.py):
PASS or FAIL, with the tests that failed. Your checkout is never changed.

Use only `torch` (it is what minivar/mask.py imports); helpers go inside the function.
"""
import torch


def block_causal_mask(block_sizes) -> torch.Tensor:
    """L×L boolean mask, True where attention is allowed (the convention of
    torch.nn.functional.scaled_dot_product_attention's boolean attn_mask).

    The sequence is cut into blocks of the given sizes (VAR: one block per scale, of s² tokens:
    1, 4, 9, ...; L = their sum). Query token i may attend to key token j iff the block of j
    comes no later than the block of i: every token of its own block and of all earlier
    (coarser) blocks, nothing of a later (finer) one. Row i, column j is [i, j].

    Worked example, block_sizes = [1, 2] (L = 3):
        [[True, False, False],
         [True, True,  True ],
         [True, True,  True ]]
    With blocks of size 1 the rule gives GPT's lower-triangular mask.

    Hint: first give each position the index of its block (torch.repeat_interleave), then
    compare every pair of positions at once by broadcasting a row against a column.
    """
    raise NotImplementedError("write the block-causal mask: see the docstring")
