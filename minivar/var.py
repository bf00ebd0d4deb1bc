"""VAR: a class-conditional transformer that predicts the next *scale*, not the next token.

The sequence for scales (1, 2, 3, ..., 8) is

    [class token] [input block of scale 2: 4 tokens] [scale 3: 9 tokens] ... [scale 8: 64]

and output block k holds the logits of scale k's token map (paper §3.1, Eq. 6):
output 0 (the class token's position) predicts the 1×1 map; the input block of scale
k+1 is the cumulative reconstruction after scale k, area-resized to s_{k+1}×s_{k+1}
(quantizer.add_scale). Targets are therefore NOT shifted, unlike GPT. The block-causal
mask (mask.py) lets every token see all coarser scales and its own; all tokens of a
scale are predicted, and sampled, at once.

References: Tian et al. 2024 (VAR); nanoGPT for the layout of this file.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minivar.mask import block_causal_mask, scale_block_sizes
from minivar.quantizer import split_scales
from minivar.sampling import NOT_FINITE, KVCache, guided_logits, sample_tokens
from minivar.transformer import AdaLNBlock, AdaLNHead, init_weights


@dataclass
class VARConfig:  # also the AR baseline's (ar.py)
    scales: tuple = (1, 2, 3, 4, 5, 6, 8)  # must equal the tokenizer's
    vocab_size: int = 512  # the tokenizer's codebook size
    latent_dim: int = 32  # the tokenizer's code dimension C
    num_classes: int = 10  # class id num_classes is the null class of CFG
    dim: int = 256  # transformer width D
    depth: int = 6  # number of blocks
    heads: int = 4
    mlp_ratio: int = 4
    class_dropout: float = 0.1  # training: a label becomes the null class with this probability
    attention: str = "sdpa"  # training's full passes: "sdpa" (SDPA under the mask) or "flex" (flex_attention.py)


class VAR(nn.Module):
    def __init__(self, cfg: VARConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.attention not in ("sdpa", "flex"):
            raise ValueError(f"attention={cfg.attention!r}: expected 'sdpa' or 'flex'")
        if cfg.dim % cfg.heads:
            raise ValueError(f"width {cfg.dim} does not split into {cfg.heads} heads: choose a multiple of {cfg.heads}")
        self.block_sizes = scale_block_sizes(cfg.scales)  # the tokens predicted together: an s×s map per step
        self.seq_len = sum(self.block_sizes)  # 155 for the default scales
        self.class_emb = nn.Embedding(cfg.num_classes + 1, cfg.dim)  # +1: the null class
        self.input_proj = nn.Linear(cfg.latent_dim, cfg.dim)  # teacher-forcing features -> tokens
        self.pos_emb = nn.Parameter(torch.zeros(1, self.seq_len, cfg.dim))  # where in the sequence
        self.level_emb = nn.Embedding(len(cfg.scales), cfg.dim)  # which scale a token belongs to
        self.blocks = nn.ModuleList(AdaLNBlock(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.head = AdaLNHead(cfg.dim, cfg.vocab_size)
        # Constant tensors, built once (forward does tensor work only) and not saved in checkpoints.
        self.register_buffer("mask_LL", block_causal_mask(self.block_sizes), persistent=False)
        self.register_buffer("level_L", torch.repeat_interleave(torch.arange(len(cfg.scales)),
                                                                torch.tensor(self.block_sizes)), persistent=False)
        init_weights(self)
        nn.init.normal_(self.pos_emb, std=0.02)

    @torch.no_grad()
    def teacher_forcing_inputs(self, quantizer, tokens_BL):
        """Training inputs from the true tokens (all scales, flattened): for each scale k+1 the
        cumulative reconstruction after scale k, area-resized to s_{k+1}, built by the very
        function sampling uses (quantizer.add_scale), which is what makes the two agree.
        B × (L − 1) × C. (Scale 1 has no input block: its position holds the class token.)"""
        side = self.cfg.scales[-1]
        f_hat = quantizer.codebook.weight.new_zeros(len(tokens_BL), self.cfg.latent_dim, side, side)
        inputs = [f_hat.new_zeros(len(tokens_BL), 0, self.cfg.latent_dim)]  # (none at all for a single scale)
        for k, r_Bss in enumerate(split_scales(tokens_BL, self.cfg.scales)[:-1]):
            f_hat, next_BCss = quantizer.add_scale(f_hat, r_Bss, k)
            inputs.append(next_BCss.flatten(2).transpose(1, 2))
        return torch.cat(inputs, dim=1)

    def forward(self, x_BLC, labels_B, targets_BL=None):
        """Training / scoring pass over the whole sequence (or a prefix of it).

        x_BLC: teacher-forcing inputs of scales 2..K (from teacher_forcing_inputs), B×(L−1)×C.
        labels_B: class ids; the null class (id num_classes) for unconditional; see drop_labels.
        targets_BL: the token maps of all K scales, flattened and concatenated.
        Returns (logits B×L×V in fp32, mean cross-entropy or None).
        """
        cond_BD = self.class_emb(labels_B)
        h = torch.cat([cond_BD[:, None], self.input_proj(x_BLC)], dim=1)  # the class token starts the sequence
        L = h.shape[1]
        h = h + self.pos_emb[:, :L] + self.level_emb(self.level_L[:L])
        for block in self.blocks:
            h = block(h, cond_BD, self.mask_LL[:L, :L])
        logits_BLV = self.head(h, cond_BD)
        loss = None if targets_BL is None else F.cross_entropy(logits_BLV.flatten(0, 1), targets_BL.flatten())
        return logits_BLV, loss

    def drop_labels(self, labels_B, uniform_B):
        """Training: each label becomes the null class with probability class_dropout, so the
        model also learns p(tokens | no class), which CFG needs. uniform_B holds one U[0, 1)
        number per row, from the data sampler (the same numbers alone or under torchrun)."""
        return torch.where(uniform_B.to(labels_B.device) < self.cfg.class_dropout, self.cfg.num_classes, labels_B)

    def guidance_weight(self, k, cfg_scale):
        """CFG weight at scale k: a linear ramp from 0 at the 1×1 map to `cfg_scale` at the last
        scale (the paper's practice: coarse scales fix the layout with little guidance)."""
        return cfg_scale * k / max(len(self.cfg.scales) - 1, 1)

    @torch.no_grad()
    def generate(self, quantizer, labels_B, cfg_scale=1.5, temperature=1.0, top_k=0, top_p=1.0, generator=None,
                 keep=None):
        """Sample one image's token maps per label, coarse to fine (paper Alg. 2): at each scale
        the transformer runs on that scale's tokens only (the KV cache holds the coarser ones),
        the class and null-class logits are mixed (CFG), the whole map is drawn at once and
        added to f̂, whose resize is the next scale's input.

        keep = (source_BL, keep_BL), all scales flattened as in training: wherever keep_BL is
        True the drawn token is replaced by the source's before the next scale sees it
        (zero-shot editing, applications/editing.py). Returns the K index maps B×s×s.
        """
        B, side = len(labels_B), self.cfg.scales[-1]
        cond_2BD = self.class_emb(torch.cat([labels_B, torch.full_like(labels_B, self.cfg.num_classes)]))  # [class; null]
        caches = [KVCache(self.seq_len) for _ in self.blocks]
        f_hat = cond_2BD.new_zeros(B, self.cfg.latent_dim, side, side)  # the image so far: nothing yet
        x_2BlD = cond_2BD[:, None]  # the first scale's only input: the class token
        maps, start, finite = [], 0, cond_2BD.new_ones((), dtype=torch.bool)
        for k, s in enumerate(self.cfg.scales):
            end = start + s * s  # this scale's positions in the sequence
            h = x_2BlD + self.pos_emb[:, start:end] + self.level_emb.weight[k]
            for block, cache in zip(self.blocks, caches):
                h = block(h, cond_2BD, cache=cache)
            logits_BlV = guided_logits(self.head(h, cond_2BD), self.guidance_weight(k, cfg_scale))
            finite &= logits_BlV.isfinite().all()
            r_Bl = sample_tokens(logits_BlV, temperature, top_k, top_p, generator)  # all s² tokens at once
            if keep is not None:  # editing: the source's token wherever the mask keeps it
                r_Bl = torch.where(keep[1][:, start:end], keep[0][:, start:end], r_Bl)
            maps.append(r_Bl.view(B, s, s))
            f_hat, next_BCss = quantizer.add_scale(f_hat, maps[-1], k)  # f̂ += φ_k(up(e[r_k])); area(f̂) next
            if next_BCss is not None:
                x_BlD = self.input_proj(next_BCss.flatten(2).transpose(1, 2))
                x_2BlD = torch.cat([x_BlD, x_BlD])  # both halves of the CFG batch see the same image so far
            start = end
        if not finite:
            raise ValueError(NOT_FINITE)
        return maps

    def num_params(self):
        return sum(p.numel() for p in self.parameters())
