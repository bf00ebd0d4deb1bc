"""Multi-scale residual quantization: VAR's tokenizer core (paper §3.2, Algorithms 1-2).

An image latent f (C×h×w) becomes K token maps r_1..r_K of growing side s_1..s_K.
Each scale quantizes what the coarser scales left unexplained (the residual):

    rest = f ; f_hat = 0
    for k, s in enumerate(scales):
        r_k   = nearest_code(area_resize(rest, s))       # s×s indices, one shared codebook
        h     = phi_k(bicubic_resize(codebook[r_k], h))  # back to the latent size
        f_hat += h ; rest -= h

so f_hat after scale k (the *cumulative reconstruction* F_k) sharpens scale by scale.
With scales=(h,) this is an ordinary single-scale VQ-VAE quantizer: no special case.

Left out: the encoder/decoder (tokenizer.py) and the transformer (var.py).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def area_resize(x_BCHW, side):
    """Downsample by averaging (the paper's 'interpolate' for r_k); identity at full size."""
    return x_BCHW if x_BCHW.shape[-1] == side else F.interpolate(x_BCHW, size=(side, side), mode="area")


def bicubic_resize(x_BCHW, side):
    """Upsample a coarse token map's embedding back to the latent size."""
    return x_BCHW if x_BCHW.shape[-1] == side else F.interpolate(x_BCHW, size=(side, side), mode="bicubic")


class Phi(nn.Module):
    """phi(h) = (1-ρ)·h + ρ·conv3×3(h): a light refinement of an upsampled embedding.
    Upsampling a 2×2 map to 8×8 blurs it; the conv lets each scale sharpen it (paper §3.2)."""

    def __init__(self, dim, rho=0.5):
        super().__init__()
        self.conv, self.rho = nn.Conv2d(dim, dim, 3, padding=1), rho

    def forward(self, h_BCHW):
        return (1 - self.rho) * h_BCHW + self.rho * self.conv(h_BCHW)


# A sample's K token maps travel as one row of L = Σ s_k² ids (row-major within a scale,
# coarse to fine): the order of VAR's sequence.

def flatten_scales(idx_list):
    """K maps B×s×s -> B×L."""
    return torch.cat([idx.flatten(1) for idx in idx_list], dim=1)


def split_scales(idx_BL, scales):
    """B×L -> K maps B×s×s (the inverse of flatten_scales)."""
    return [chunk.reshape(-1, s, s) for chunk, s in zip(idx_BL.split([s * s for s in scales], dim=1), scales)]


class MultiScaleQuantizer(nn.Module):
    def __init__(self, vocab_size, dim, scales, n_phi=4, rho=0.5, beta=0.25, cosine_lookup=True):
        super().__init__()
        self.scales, self.latent_side, self.beta = tuple(scales), scales[-1], beta
        self.cosine_lookup = cosine_lookup
        self.codebook = nn.Embedding(vocab_size, dim)  # ONE codebook shared by all scales
        nn.init.normal_(self.codebook.weight, std=0.1)
        self.phis = nn.ModuleList(Phi(dim, rho) for _ in range(min(n_phi, len(scales))))
        # Scale k uses the shared phi whose position in [0, 1] is nearest k/(K-1) (ties: the coarser).
        n, K = len(self.phis), len(self.scales)
        self.phi_of_scale = [min(range(n), key=lambda j: abs(j / max(n - 1, 1) - k / max(K - 1, 1))) for k in range(K)]
        # How often each code was picked at each scale since the last re-seed (codebook health).
        self.register_buffer("hits_KV", torch.zeros(len(scales), vocab_size))

    def phi(self, k):
        return self.phis[self.phi_of_scale[k]]

    def nearest_code(self, u_BCss, exclude=None):
        """Index of the nearest codebook entry for every position (never one in `exclude`).

        Cosine lookup compares directions only. Residuals shrink scale after scale, so with
        plain Euclidean distance each scale would draw on its own band of code norms and
        use a fraction of the shared codebook; by direction every scale can use all of it."""
        B, C, s, _ = u_BCss.shape
        u_NC = u_BCss.permute(0, 2, 3, 1).reshape(-1, C)
        e_VC = self.codebook.weight
        if self.cosine_lookup:
            score_NV = F.normalize(u_NC, dim=1) @ F.normalize(e_VC, dim=1).T
        else:
            score_NV = -(u_NC.pow(2).sum(1, keepdim=True) - 2 * u_NC @ e_VC.T + e_VC.pow(2).sum(1))  # −||u − e||²
        if exclude is not None:
            score_NV[:, exclude] = float("-inf")
        return score_NV.argmax(1).view(B, s, s)

    def embed(self, idx_Bss, k):
        """Token map of scale k -> its contribution h_k at the full latent size."""
        z_BCss = self.codebook(idx_Bss).permute(0, 3, 1, 2)
        return self.phi(k)(bicubic_resize(z_BCss, self.latent_side))

    def forward(self, f_BChw):
        """Quantize a latent at every scale (training and encoding).

        Returns f_hat for the decoder (straight-through), the K index maps, and the VQ loss:
        averaged over scales, β·‖sg(F_k) − f‖² + ‖F_k − sg(f)‖² on the *cumulative*
        reconstruction F_k, so every prefix of scales is pushed to describe f well.
        In fp32 whatever the autocast (as the official code): the codes a tokenizer trains on
        under bf16 are then the codes its token cache, and VAR, later see.
        """
        with torch.autocast(f_BChw.device.type, enabled=False):
            return self.quantize(f_BChw.float())

    def quantize(self, f_BChw):
        rest, f_hat = f_BChw.detach(), torch.zeros_like(f_BChw)
        idx_list, vq_loss = [], 0.0
        for k, side in enumerate(self.scales):
            with torch.no_grad():
                idx_Bss = self.nearest_code(area_resize(rest, side))
            h = self.embed(idx_Bss, k)
            f_hat = f_hat + h
            rest = rest - h.detach()
            vq_loss = vq_loss + self.beta * F.mse_loss(f_hat.detach(), f_BChw) + F.mse_loss(f_hat, f_BChw.detach())
            idx_list.append(idx_Bss)
            if self.training:
                self.hits_KV[k].index_add_(0, idx_Bss.flatten(), torch.ones(idx_Bss.numel(), device=f_BChw.device))
        # Straight-through estimator: the forward value is f_hat, the gradient flows to f unchanged.
        f_hat_st = f_BChw + (f_hat - f_BChw).detach()
        return f_hat_st, idx_list, vq_loss / len(self.scales)

    # --- from token maps back to latents: shared by decoding, teacher forcing and sampling ---

    def add_scale(self, f_hat_BChw, idx_Bss, k):
        """Add scale k's tokens to the cumulative reconstruction. Returns (F_k, next_input),
        where next_input = area_resize(F_k, s_{k+1}) is the transformer's input block for
        scale k+1 (None after the last scale). Training (teacher forcing) and sampling both
        build inputs with this one function, which is what makes them agree; in fp32, as forward."""
        with torch.autocast(f_hat_BChw.device.type, enabled=False):
            f_hat_BChw = f_hat_BChw.float() + self.embed(idx_Bss, k)
            if k + 1 == len(self.scales):
                return f_hat_BChw, None
            return f_hat_BChw, area_resize(f_hat_BChw, self.scales[k + 1])

    def cumulative_latents(self, idx_list):
        """[F_1, ..., F_K]: the latent after each scale, from index maps."""
        B = idx_list[0].shape[0]
        f_hat = self.codebook.weight.new_zeros(B, self.codebook.weight.shape[1], self.latent_side, self.latent_side)
        out = []
        for k, idx_Bss in enumerate(idx_list):
            f_hat, _ = self.add_scale(f_hat, idx_Bss, k)
            out.append(f_hat)
        return out

    # --- codebook health (training/codebook.py re-seeds the codes no scale uses) ---

    def usage_per_scale(self):
        """Fraction of the codebook picked at each scale since the last re-seed."""
        return (self.hits_KV > 0).float().mean(1)
