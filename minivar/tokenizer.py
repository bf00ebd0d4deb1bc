"""The tokenizer: conv encoder -> multi-scale residual quantizer -> conv decoder.

A 32×32 image becomes an 8×8×C latent (two stride-2 downsamplings), which the
quantizer (quantizer.py) turns into K token maps of sides `scales`. The API the rest
of minivar uses:

    idx_list = tok.encode(x)                      # K index maps, B×s_k×s_k
    x_rec    = tok.decode(idx_list)               # image from index maps
    recs     = tok.cumulative_reconstructions(x)  # image after scale 1, 1..2, ..., 1..K

and the transformer's inputs come from `tok.quantizer.add_scale` (var.py).

Trained with an L2 reconstruction loss plus the VQ losses (quantizer.py); the adversarial
and perceptual terms that make reconstructions sharp live in training/sharpness.py, and
their weights in TokenizerConfig.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minivar.quantizer import MultiScaleQuantizer


@dataclass
class TokenizerConfig:
    scales: tuple = (1, 2, 3, 4, 5, 6, 8)  # side of each token map; the last is the latent side
    vocab_size: int = 512  # one codebook shared by all scales
    latent_dim: int = 32  # C, channels of the latent and of each code
    widths: tuple = (64, 128, 128)  # conv channels at 32×32, 16×16 and 8×8
    res_blocks: int = 1  # residual blocks at each of the two lower resolutions
    n_phi: int = 4  # phi convs shared across scales (paper: 4)
    rho: float = 0.5  # phi's mixing weight (paper: 0.5)
    beta: float = 0.25  # commitment weight
    cosine_lookup: bool = True  # pick codes by direction (see quantizer.nearest_code); False: Euclidean
    # Training only (training/sharpness.py): the terms that make reconstructions sharp. 0 switches one off;
    # both at 0 is the plain L2 tokenizer.
    # Off by default: at the cpu preset's budget a discriminator made reconstructions worse (rFID of 1,000
    # test images at step 800: 41 perceptual alone, 60-71 with it; results/README.md).
    adversarial_weight: float = 0.0  # patch-discriminator (hinge) loss, on top of VQGAN's adaptive weight
    disc_start: int = 500  # the step the discriminator starts learning, once reconstructions have settled
    disc_warmup: int = 300  # steps it learns alone before its loss reaches the decoder (a fresh one is noise)
    perceptual_weight: float = 0.1  # distance between a CIFAR-10 classifier's features of x and x̂


class ResBlock(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
                                  nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


def encoder(cfg: TokenizerConfig) -> nn.Sequential:
    """32×32×3 -> 8×8×C. Residual blocks only at 16×16 and 8×8, where they are cheap."""
    w0, w1, w2 = cfg.widths
    return nn.Sequential(
        nn.Conv2d(3, w0, 3, padding=1),
        nn.SiLU(), nn.Conv2d(w0, w1, 4, stride=2, padding=1),  # 32 -> 16
        *[ResBlock(w1) for _ in range(cfg.res_blocks)],
        nn.SiLU(), nn.Conv2d(w1, w2, 4, stride=2, padding=1),  # 16 -> 8
        *[ResBlock(w2) for _ in range(cfg.res_blocks)],
        nn.GroupNorm(8, w2), nn.SiLU(), nn.Conv2d(w2, cfg.latent_dim, 1),
    )


def decoder(cfg: TokenizerConfig) -> nn.Sequential:
    """8×8×C -> 32×32×3, the encoder mirrored with transposed convs."""
    w0, w1, w2 = cfg.widths
    return nn.Sequential(
        nn.Conv2d(cfg.latent_dim, w2, 3, padding=1),
        *[ResBlock(w2) for _ in range(cfg.res_blocks)],
        nn.SiLU(), nn.ConvTranspose2d(w2, w1, 4, stride=2, padding=1),  # 8 -> 16
        *[ResBlock(w1) for _ in range(cfg.res_blocks)],
        nn.SiLU(), nn.ConvTranspose2d(w1, w0, 4, stride=2, padding=1),  # 16 -> 32
        nn.GroupNorm(8, w0), nn.SiLU(), nn.Conv2d(w0, 3, 3, padding=1),
    )


class Tokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = encoder(cfg), decoder(cfg)
        self.quantizer = MultiScaleQuantizer(cfg.vocab_size, cfg.latent_dim, cfg.scales, cfg.n_phi, cfg.rho, cfg.beta,
                                             cfg.cosine_lookup)

    def forward(self, x_B3HW):
        """Training pass. Returns (reconstruction, loss, info)."""
        f = self.encoder(x_B3HW)
        f_hat, idx_list, vq_loss = self.quantizer(f)
        x_rec = self.decoder(f_hat)
        rec_loss = F.mse_loss(x_rec, x_B3HW)
        return x_rec, rec_loss + vq_loss, {"rec_loss": rec_loss, "vq_loss": vq_loss, "idx": idx_list, "f": f}

    @torch.no_grad()
    def encode(self, x_B3HW):
        """Image -> one index map per scale."""
        return self.quantizer(self.encoder(x_B3HW))[1]

    @torch.no_grad()
    def decode(self, idx_list):
        """Index maps (all K scales) -> image."""
        return self.decoder(self.quantizer.cumulative_latents(idx_list)[-1])

    @torch.no_grad()
    def cumulative_reconstructions(self, x_B3HW):
        """The image as seen after scale 1, scales 1..2, ..., all scales: K images."""
        return [self.decoder(f_hat) for f_hat in self.quantizer.cumulative_latents(self.encode(x_B3HW))]

    def num_params(self):
        return sum(p.numel() for p in self.parameters())


def psnr(x, y):
    """PSNR in dB on [0, 1] pixels for images in [-1, 1], one value per image."""
    mse = ((x.clamp(-1, 1) - y) / 2).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))
