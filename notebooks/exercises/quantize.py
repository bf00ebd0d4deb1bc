"""Build it: multi-scale residual quantization, the loop (notebook 01; paper §3.2, Algorithm 1).

Write the missing lines of `quantize` below (a method of MultiScaleQuantizer: `self` is the
quantizer), then grade it:

    python notebooks/grade.py quantize

The grader copies the project into a temporary folder, puts your method in place of
MultiScaleQuantizer.quantize in minivar/quantizer.py, and runs the tests that guard it
(tests/test_quantizer.py recomputes every scale's tokens, the VQ loss and its gradient in plain
torch; tests/test_tokenizer.py checks the gradient reaches the encoder): PASS or FAIL, with the
tests that failed. Your checkout is never changed.

Use only the names imported below (minivar/quantizer.py has them all) and the quantizer's own
methods: self.nearest_code(u_BCss) (the index of the nearest code at every position),
self.embed(idx_Bss, k) (a token map of scale k -> its contribution at the latent's size),
self.scales, self.beta.
"""
import torch
import torch.nn.functional as F

from minivar.quantizer import area_resize


def quantize(self, f_BChw):
    """Quantize a latent f (B×C×h×w) at every scale of self.scales, coarse to fine.

    For each scale k of side s, with `rest` (what is left to explain, starts as f) and
    `f_hat` (the cumulative reconstruction, starts at 0):
      1. r_k = the nearest code of rest averaged down to s×s (area_resize), under torch.no_grad();
      2. h = the contribution of r_k at the latent's size (self.embed);
      3. f_hat += h (with its gradient: the codebook and the φ convs learn through it), and
         rest -= h (detached: the choice of the next scales is not differentiated);
      4. the VQ loss of this scale, on the cumulative f_hat after scale k:
         β·MSE(sg(f_hat), f) + MSE(f_hat, sg(f)), sg = .detach() (F.mse_loss).
    After the loop, the straight-through estimator: f_hat_st = f + sg(f_hat − f), whose value
    is f_hat and whose gradient with respect to f is the identity.

    Returns (f_hat_st, the K index maps B×s×s, the VQ loss averaged over the scales).
    """
    rest, f_hat = f_BChw.detach(), torch.zeros_like(f_BChw)
    idx_list, vq_loss = [], 0.0
    for k, side in enumerate(self.scales):
        # --- your lines: steps 1 to 4, giving idx_Bss (the token map r_k) and adding to vq_loss ---
        raise NotImplementedError("write steps 1 to 4 of the loop: see the docstring")
        # --- up to here ---
        idx_list.append(idx_Bss)
        if self.training:  # codebook usage per scale (training/codebook.py re-seeds the codes no scale uses)
            self.hits_KV[k].index_add_(0, idx_Bss.flatten(), torch.ones(idx_Bss.numel(), device=f_BChw.device))
    f_hat_st = None  # your line: the straight-through estimator
    return f_hat_st, idx_list, vq_loss / len(self.scales)
