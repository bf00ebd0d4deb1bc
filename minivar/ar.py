"""The AR baseline: raster-order next-token prediction over a tokenizer's token maps.

This is the model VAR is measured against (paper §4, Table 1): a GPT that reads the
token maps one token at a time, row by row within a map, coarse map before finer map.
Over a single-scale tokenizer's 8×8 map (`--scales 8`) it is the classic raster AR. Over
the multi-scale maps VAR uses it sees the same tokens and the same decoder as VAR, so the
two differ in one thing only: one token per step instead of one scale per step. The
sequence is

    [class token] [token 1] [token 2] ... [token L−1]        (L = Σ s_k² positions)

and position i predicts token i, so the inputs are the targets shifted by one.

It is VAR's network (var.py): the same class token and null class, position and level
embeddings, adaLN blocks with q/k norm, head, training pass, KV cache, CFG and sampler.
What differs, and is all this file holds:

1. blocks of one token: the mask is the ordinary lower-triangular one, which SDPA's own
   causal kernel computes (skipping the tiles above the diagonal), and sampling takes L
   steps instead of K;
2. the inputs: the previous *tokens*, through a learned token embedding, instead of VAR's
   projection of the multi-scale reconstruction; the token just drawn is the next input;
3. guidance follows the *scale* of the token being drawn, as VAR's does, so on one 8×8
   map it is constant (a ramp over raster positions would guide the image's top rows less
   than its bottom rows).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from minivar.mask import block_causal_mask
from minivar.quantizer import split_scales
from minivar.sampling import NOT_FINITE, KVCache, guided_logits, sample_tokens
from minivar.var import VAR, VARConfig


def causal_attention(q, k, v, attn_mask=None):
    """SDPA under its own lower-triangular mask: what attn_mask holds for AR, computed faster."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class AR(VAR):
    def __init__(self, cfg: VARConfig):
        super().__init__(cfg)
        self.block_sizes = [1] * self.seq_len  # one token per step
        self.mask_LL = block_causal_mask(self.block_sizes)  # blocks of one: lower-triangular
        self.scale_of_token = self.level_L.tolist()  # (a list: reading it needs no wait for a GPU)
        for block in self.blocks:
            block.attn.attend = causal_attention
        self.input_proj = nn.Embedding(cfg.vocab_size, cfg.dim)  # token id -> vector (VAR: features -> vector)
        nn.init.normal_(self.input_proj.weight, std=0.02)

    def teacher_forcing_inputs(self, quantizer, tokens_BL):
        return tokens_BL[:, :-1]  # shifted by one: position i sees tokens 0..i-1 (and the class token)

    def guidance_weight(self, i, cfg_scale):
        """VAR's ramp over the scale of token i; constant over a single map."""
        if len(self.cfg.scales) == 1:
            return cfg_scale
        return super().guidance_weight(self.scale_of_token[i], cfg_scale)

    @torch.no_grad()
    def generate(self, quantizer, labels_B, cfg_scale=1.5, temperature=1.0, top_k=0, top_p=1.0, generator=None):
        """VAR.generate with one token per step: L steps, each running one token through the
        transformer (the KV cache holds the earlier ones). Returns the index maps, one per scale."""
        cond_2BD = self.class_emb(torch.cat([labels_B, torch.full_like(labels_B, self.cfg.num_classes)]))  # [class; null]
        caches = [KVCache(self.seq_len) for _ in self.blocks]
        x_2B1D = cond_2BD[:, None]  # the first token's only input: the class token
        tokens, finite = [], cond_2BD.new_ones((), dtype=torch.bool)
        for i in range(self.seq_len):
            h = x_2B1D + self.pos_emb[:, i:i + 1] + self.level_emb(self.level_L[i:i + 1])
            for block, cache in zip(self.blocks, caches):
                h = block(h, cond_2BD, cache=cache)
            logits_B1V = guided_logits(self.head(h, cond_2BD), self.guidance_weight(i, cfg_scale))
            finite &= logits_B1V.isfinite().all()
            tokens.append(sample_tokens(logits_B1V, temperature, top_k, top_p, generator))
            x_2B1D = self.input_proj(torch.cat([tokens[-1], tokens[-1]]))  # the token just drawn is the next input
        if not finite:
            raise ValueError(NOT_FINITE)
        return split_scales(torch.cat(tokens, dim=1), self.cfg.scales)
