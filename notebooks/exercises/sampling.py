"""Build it: VAR's sampling loop with a KV cache (notebook 04; paper §3.1, Algorithm 2).

Write the body of the loop in `generate` below (a method of VAR: `self` is the model), then
grade it:

    python notebooks/grade.py sampling

The grader copies the project into a temporary folder, puts your method in place of
VAR.generate in minivar/var.py, and runs the tests that guard it (tests/test_var.py: the logits
your loop computes must equal one full pass under the block-causal mask, the same tokens as
sampling without the cache, guidance on a ramp; tests/test_editing.py: the `keep` argument):
PASS or FAIL, with the tests that failed. Your checkout is never changed.

Use only the names imported below (minivar/var.py has them all) and the model's parts:
self.blocks (each called as block(h, cond, cache=cache)), self.head(h, cond) (logits, in fp32),
self.pos_emb (1×L×D), self.level_emb (one row per scale), self.input_proj (C -> D),
self.guidance_weight(k, cfg_scale), self.cfg.scales, self.seq_len.
"""
import torch

from minivar.sampling import KVCache, guided_logits, sample_tokens


@torch.no_grad()
def generate(self, quantizer, labels_B, cfg_scale=1.5, temperature=1.0, top_k=0, top_p=1.0, generator=None,
             keep=None):
    """Sample one image's K token maps per label, coarse to fine; returns the maps, each B×s×s.

    The batch is doubled for classifier-free guidance: rows [class; null class], so every
    tensor the transformer sees has 2B rows. At step k (scale side s, positions start..end of
    the sequence, end = start + s²):
      1. h = the step's input tokens x_2BlD + the position embeddings of positions start..end
         + the level embedding of scale k (self.level_emb.weight[k]);
      2. every block in turn, each with its own cache: the cache keeps the keys and values of
         all earlier scales, so the s² new tokens see them with no mask;
      3. the head's logits (2B rows), mixed by guided_logits with weight
         self.guidance_weight(k, cfg_scale): B rows;
      4. sample_tokens(logits, temperature, top_k, top_p, generator): all s² tokens at once, B×s²;
      5. editing: if keep is not None, keep = (source_BL, keep_BL), both B×L over all scales:
         wherever keep_BL[:, start:end] is True, the token is the source's instead of the drawn one;
      6. append the map (B×s×s) to `maps`; quantizer.add_scale(f_hat, that map, k) returns the
         new f_hat and the next scale's input, C features per position, B×C×s'×s' (None after
         the last scale). Read it row by row (B×s'²×C), project it with self.input_proj, and
         stack it twice, for both halves of the CFG batch: that is the next x_2BlD.
    """
    B, side = len(labels_B), self.cfg.scales[-1]
    cond_2BD = self.class_emb(torch.cat([labels_B, torch.full_like(labels_B, self.cfg.num_classes)]))  # [class; null]
    caches = [KVCache(self.seq_len) for _ in self.blocks]  # one per block
    f_hat = cond_2BD.new_zeros(B, self.cfg.latent_dim, side, side)  # the image so far: nothing yet
    x_2BlD = cond_2BD[:, None]  # the first scale's only input: the class token
    maps, start = [], 0
    for k, s in enumerate(self.cfg.scales):
        end = start + s * s  # this scale's positions in the sequence
        # --- your lines: steps 1 to 6 ---
        raise NotImplementedError("write one step of the sampling loop: see the docstring")
        # --- up to here ---
        start = end
    return maps
