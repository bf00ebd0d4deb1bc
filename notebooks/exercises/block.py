"""Build it: the transformer block with adaptive layer norm (notebook 03).

Write the body of `forward` below (a method of AdaLNBlock: `self` is the block), then grade it:

    python notebooks/grade.py block

The grader copies the project into a temporary folder, puts your method in place of
AdaLNBlock.forward in minivar/transformer.py, and runs the tests that guard it
(tests/test_transformer.py writes the block out in plain torch; tests/test_var.py runs whole
VARs on it, with and without the KV cache): PASS or FAIL, with the tests that failed. Your
checkout is never changed.

Use only the names imported below (minivar/transformer.py has them) and the block's parts:
self.ada (SiLU then a Linear from D to 6·D: the class's modulation), self.norm1 and self.norm2
(layer norms without a gain), self.attn (attention with q/k normalisation: call it as
self.attn(h, mask_LL, cache)), self.mlp.
"""
import torch

from minivar.transformer import modulate


def forward(self, x_BLD, cond_BD, mask_LL=None, cache=None):
    """One pre-norm block whose two layer norms the class modulates (adaLN, as DiT and VAR):

        shift1, scale1, gate1, shift2, scale2, gate2 = the 6 equal chunks of self.ada(cond)
        x = x + gate1 · attn(modulate(norm1(x), shift1, scale1))
        x = x + gate2 · mlp(modulate(norm2(x), shift2, scale2))

    with modulate(h, shift, scale) = h·(1 + scale) + shift. x_BLD is B×L×D, cond_BD B×D (one
    class vector per row): each chunk must be B×1×D, so that it broadcasts over the L tokens.
    mask_LL and cache go to the attention unchanged. Returns the new x, B×L×D.
    """
    raise NotImplementedError("write the block: see the docstring")
