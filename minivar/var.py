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

from minivar.flex_attention import CAUSAL, attention_mask
from minivar.mask import block_causal_mask, scale_block_sizes
from minivar.quantizer import split_scales
from minivar.sampling import KVCache, guided_logits, sample_tokens
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
    attention: str = "sdpa"  # full passes: "sdpa" (the dense mask, the reference) or "flex" (flex_attention.py)


class VAR(nn.Module):
    def __init__(self, cfg: VARConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.attention not in ("sdpa", "flex"):
            raise ValueError(f"attention={cfg.attention!r}: expected 'sdpa' or 'flex'")
        if cfg.dim % cfg.heads:
            raise ValueError(f"width {cfg.dim} does not split into {cfg.heads} heads: choose a multiple of {cfg.heads}")
        self.block_sizes = self.prediction_blocks(cfg.scales)  # the tokens predicted together, one block per step
        self.seq_len = sum(self.block_sizes)  # 155 for the default scales
        self.class_emb = nn.Embedding(cfg.num_classes + 1, cfg.dim)  # +1: the null class
        self.input_proj = nn.Linear(cfg.latent_dim, cfg.dim)  # teacher-forcing features -> tokens
        self.pos_emb = nn.Parameter(torch.zeros(1, self.seq_len, cfg.dim))  # where in the sequence
        self.level_emb = nn.Embedding(len(cfg.scales), cfg.dim)  # which scale a token belongs to
        self.blocks = nn.ModuleList(AdaLNBlock(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.head = AdaLNHead(cfg.dim, cfg.vocab_size)
        # Constant tensors, rebuilt from the config (not saved in checkpoints).
        self.register_buffer("mask_LL", block_causal_mask(self.block_sizes), persistent=False)
        self.register_buffer("level_L", torch.repeat_interleave(torch.arange(len(cfg.scales)),
                                                                torch.tensor(scale_block_sizes(cfg.scales))),
                             persistent=False)
        init_weights(self)
        nn.init.normal_(self.pos_emb, std=0.02)

    # --- the four places where VAR and the AR baseline (ar.py) differ ---

    @staticmethod
    def prediction_blocks(scales):
        """VAR predicts a whole s×s token map per step (AR: one token per step)."""
        return scale_block_sizes(scales)

    def next_input(self, quantizer, f_hat_BChw, idx_Bl, k):
        """Add the tokens of scale k to the reconstruction f̂; its resize to the next side is
        the next input block (quantizer.add_scale). Sampling calls this after drawing each
        scale, and teacher forcing calls it with the true tokens: one function builds both,
        which is what makes training and sampling agree. Returns (f̂, next input block B×l×C, or
        None after the last scale)."""
        side = self.cfg.scales[k]
        f_hat_BChw, next_in_BCss = quantizer.add_scale(f_hat_BChw, idx_Bl.view(-1, side, side), k)
        return f_hat_BChw, None if next_in_BCss is None else next_in_BCss.flatten(2).transpose(1, 2)

    @torch.no_grad()
    def teacher_forcing_inputs(self, quantizer, tokens_BL):
        """Training inputs from the true tokens (all scales, flattened): for each scale k+1 the
        cumulative reconstruction after scale k, area-resized to s_{k+1}. B × (L − 1) × C.
        (Scale 1 has no input block: its position holds the class token.)"""
        f_hat = tokens_BL.new_zeros(len(tokens_BL), self.cfg.latent_dim, self.cfg.scales[-1], self.cfg.scales[-1],
                                    dtype=quantizer.codebook.weight.dtype)
        inputs = []
        for k, idx_Bss in enumerate(split_scales(tokens_BL, self.cfg.scales)[:-1]):
            f_hat, x_Bl = self.next_input(quantizer, f_hat, idx_Bss.flatten(1), k)
            inputs.append(x_Bl)
        return torch.cat(inputs, dim=1) if inputs else f_hat.new_zeros(len(tokens_BL), 0, self.cfg.latent_dim)

    def guidance_weight(self, k, cfg_scale):
        """CFG weight at step k: a linear ramp from 0 at the 1×1 map to `cfg_scale` at the last
        scale (the paper's practice: coarse scales fix the layout with little guidance)."""
        return cfg_scale * k / max(len(self.cfg.scales) - 1, 1)

    # --- shared by both ---

    def embed(self, x_Bl, cond_BD, start):
        """Tokens for sequence positions start..start+l: the class token at position 0,
        the projected inputs after it; plus position and level embeddings."""
        tokens = [cond_BD[:, None]] if start == 0 else []
        if x_Bl is not None and x_Bl.shape[1] > 0:
            tokens.append(self.input_proj(x_Bl))
        h = torch.cat(tokens, dim=1)
        positions = slice(start, start + h.shape[1])
        return h + self.pos_emb[:, positions] + self.level_emb(self.level_L[positions])

    def forward(self, x_BLC, labels_B, targets_BL=None):
        """Training / scoring pass over the whole sequence.

        x_BLC: teacher-forcing inputs of scales 2..K (from teacher_forcing_inputs), B×(L−1)×C.
        labels_B: class ids; the null class (id num_classes) for unconditional; see drop_labels.
        targets_BL: the token maps of all K scales, flattened and concatenated.
        Returns (logits B×L×V, mean cross-entropy or None).
        """
        cond_BD = self.class_emb(labels_B)
        h = self.embed(x_BLC, cond_BD, start=0)
        mask = self.mask_LL if max(self.block_sizes) > 1 else CAUSAL  # AR: SDPA's own causal mask skips tiles
        if self.cfg.attention == "flex":  # FlexAttention's block mask, where it can run (flex_attention.py)
            mask = attention_mask(self.cfg.attention, self.block_sizes, self.mask_LL)
        for block in self.blocks:
            h = block(h, block.modulation(cond_BD), mask)
        logits_BLV = self.head(h, self.head.modulation(cond_BD))
        loss = None
        if targets_BL is not None:
            loss = F.cross_entropy(logits_BLV.flatten(0, 1).float(), targets_BL.flatten())
        return logits_BLV, loss

    def drop_labels(self, labels_B, uniform_B):
        """Training: each label becomes the null class with probability class_dropout, so the
        model also learns p(tokens | no class), which CFG needs. uniform_B holds one U[0, 1)
        number per row, from the data sampler (the same numbers alone or under torchrun)."""
        return torch.where(uniform_B.to(labels_B.device) < self.cfg.class_dropout, self.cfg.num_classes, labels_B)

    def loss_per_scale(self, logits_BLV, targets_BL):
        """Mean cross-entropy of each scale's tokens (nats), a tensor of K numbers."""
        ce_BL = F.cross_entropy(logits_BLV.transpose(1, 2).float(), targets_BL, reduction="none")
        zeros_K = torch.zeros(len(self.cfg.scales), device=ce_BL.device)
        sums_K = zeros_K.index_add(0, self.level_L, ce_BL.sum(0))  # (index_add, not bincount: no wait for a GPU)
        return sums_K / (len(ce_BL) * zeros_K.index_add(0, self.level_L, torch.ones_like(ce_BL[0])))

    @torch.no_grad()
    def generate(self, quantizer, labels_B, cfg_scale=1.5, temperature=1.0, top_k=0, top_p=1.0, generator=None,
                 keep=None):
        """Sample one image's token maps per label, coarse to fine (paper Alg. 2; the AR
        baseline: token by token). Each step runs only its own block's tokens through the
        transformer; the KV cache holds every earlier one.

        Classifier-free guidance: the batch runs twice, with the class and with the null class,
        and the logits are mixed with guidance_weight(step). keep = (source_BL, keep_BL), all
        scales flattened as in training: wherever keep_BL is True the drawn token is replaced
        by the source's before the next step sees it (zero-shot editing, applications/editing.py).
        Returns the index maps, one per scale.
        """
        B = len(labels_B)
        null_B = torch.full_like(labels_B, self.cfg.num_classes)
        cond_2BD = self.class_emb(torch.cat([labels_B, null_B]))  # [conditional; unconditional]
        caches = [KVCache(2 * B, self.cfg.heads, self.seq_len, self.cfg.dim // self.cfg.heads, cond_2BD.device,
                          cond_2BD.dtype) for _ in self.blocks]
        block_mods = [block.modulation(cond_2BD) for block in self.blocks]  # the class is fixed: once, not per step
        head_mod = self.head.modulation(cond_2BD)
        side = self.cfg.scales[-1]
        f_hat = cond_2BD.new_zeros(B, self.cfg.latent_dim, side, side)  # VAR's running reconstruction
        x_2Bl, sampled, start = None, [], 0  # the first block's only input is the class token
        for k, size in enumerate(self.block_sizes):
            h = self.embed(x_2Bl, cond_2BD, start)
            for block, mod, cache in zip(self.blocks, block_mods, caches):
                h = block(h, mod, cache=cache)
            logits_BlV = guided_logits(self.head(h, head_mod), self.guidance_weight(k, cfg_scale))
            idx_Bl = sample_tokens(logits_BlV, temperature, top_k, top_p, generator)
            if keep is not None:  # editing: the source's token wherever it is kept
                idx_Bl = torch.where(keep[1][:, start:start + size], keep[0][:, start:start + size], idx_Bl)
            sampled.append(idx_Bl)
            if k + 1 < len(self.block_sizes):
                f_hat, x_Bl = self.next_input(quantizer, f_hat, idx_Bl, k)
                x_2Bl = torch.cat([x_Bl, x_Bl])  # both halves of the CFG batch see the same tokens
            start += size
        return split_scales(torch.cat(sampled, dim=1), self.cfg.scales)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())
