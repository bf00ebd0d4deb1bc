"""The AR baseline: raster-order next-token prediction over one n×n token map (DESIGN §4).

This is the model VAR is measured against (paper §4, Table 1): a GPT over the 8×8 map
of a single-scale tokenizer (the same tokenizer code with scales=(8,)), read row by
row. The sequence is

    [class token] [token 1] [token 2] ... [token 63]        (64 positions)

and position i predicts token i, so the inputs are the targets shifted by one.

It is VAR (var.py) with four methods changed, nothing else: the same class token and
null class, adaLN blocks, q/k norm, head, KV cache, CFG and top-k/top-p sampler, the
same mask function, and the same training loop (train.py --stage ar). What differs:

1. prediction_blocks: one token per step, so block_causal_mask gives the ordinary
   lower-triangular mask and sampling takes n² steps instead of K;
2. teacher_forcing_inputs: the previous *tokens*, through a learned token embedding,
   instead of VAR's projection of the multi-scale reconstruction;
3. next_input: the token just drawn is the next input (VAR: update f̂ and resize it);
4. guidance_weight: constant. VAR ramps guidance over scales, coarse to fine; a ramp
   over raster positions would guide the image's top rows less than its bottom rows.
"""
import torch.nn as nn

from minivar.var import VAR, VARConfig


class AR(VAR):
    def __init__(self, cfg: VARConfig):
        if len(cfg.scales) != 1:
            raise ValueError(f"the AR baseline reads one token map, but the tokenizer has scales {tuple(cfg.scales)}: "
                             "train a single-scale one with: python train.py --stage tokenizer --scales 8")
        super().__init__(cfg)
        self.input_proj = nn.Embedding(cfg.vocab_size, cfg.dim)  # token id -> vector (VAR: features -> vector)
        nn.init.normal_(self.input_proj.weight, std=0.02)

    @staticmethod
    def prediction_blocks(scales):
        return [1] * (scales[-1] ** 2)  # blocks of one token: plain causal attention

    def teacher_forcing_inputs(self, quantizer, tokens_BL):
        return tokens_BL[:, :-1]  # shifted by one: position i sees tokens 0..i-1 (and the class token)

    def next_input(self, quantizer, state, idx_Bl, k):
        return state, idx_Bl  # the token just sampled is the next input; no reconstruction to keep

    def guidance_weight(self, k, cfg):
        return cfg
