"""The AR baseline: raster-order next-token prediction over a tokenizer's token maps.

This is the model VAR is measured against (paper §4, Table 1): a GPT that reads the
token maps one token at a time, row by row within a map, coarse map before finer map.
Over a single-scale tokenizer's 8×8 map (`--scales 8`) it is the classic raster AR. Over
the multi-scale maps VAR uses it sees the same tokens and the same decoder as VAR, so the
two differ in one thing only: one token per step instead of one scale per step. The
sequence is

    [class token] [token 1] [token 2] ... [token L−1]        (L = Σ s_k² positions)

and position i predicts token i, so the inputs are the targets shifted by one.

It is VAR (var.py) with four methods changed, nothing else: the same class token and
null class, adaLN blocks, q/k norm, head, KV cache, CFG and top-k/top-p sampler, the
same mask function, and the same training loop (train.py --stage ar). What differs:

1. prediction_blocks: one token per step, so block_causal_mask gives the ordinary
   lower-triangular mask and sampling takes L steps instead of K;
2. teacher_forcing_inputs: the previous *tokens*, through a learned token embedding,
   instead of VAR's projection of the multi-scale reconstruction;
3. next_input: the token just drawn is the next input (VAR: update f̂ and resize it);
4. guidance_weight: it follows the *scale* of the token being drawn, as VAR's does, so
   on one 8×8 map it is constant (a ramp over raster positions would guide the image's
   top rows less than its bottom rows).
"""
import torch.nn as nn

from minivar.var import VAR, VARConfig


class AR(VAR):
    def __init__(self, cfg: VARConfig):
        super().__init__(cfg)
        self.scale_of_token = self.level_L.tolist()  # which scale token i belongs to (for guidance)
        self.input_proj = nn.Embedding(cfg.vocab_size, cfg.dim)  # token id -> vector (VAR: features -> vector)
        nn.init.normal_(self.input_proj.weight, std=0.02)

    @staticmethod
    def prediction_blocks(scales):
        return [1] * sum(s * s for s in scales)  # blocks of one token: plain causal attention

    def teacher_forcing_inputs(self, quantizer, tokens_BL):
        return tokens_BL[:, :-1]  # shifted by one: position i sees tokens 0..i-1 (and the class token)

    def next_input(self, quantizer, state, idx_Bl, k):
        return state, idx_Bl  # the token just sampled is the next input; no reconstruction to keep

    def guidance_weight(self, k, cfg_scale):
        if len(self.cfg.scales) == 1:
            return cfg_scale
        return super().guidance_weight(self.scale_of_token[k], cfg_scale)
