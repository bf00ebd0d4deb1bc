import pytest
import torch
import torch.nn.functional as F

from minivar.quantizer import MultiScaleQuantizer, flatten_scales
from minivar.tokenizer import Tokenizer, TokenizerConfig, psnr
from minivar.training.codebook import reseed_dead_codes
from minivar.var import VAR, VARConfig

TINY = dict(widths=(16, 32, 32), res_blocks=1, vocab_size=64, latent_dim=8)


def smooth_images(n, seed=0):
    """Blocky random colour images: learnable by a tiny tokenizer in a few hundred steps."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)


def train_tiny(cfg, steps=150, seed=0):
    torch.manual_seed(seed)
    tok = Tokenizer(cfg)
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    x = smooth_images(64, seed)
    for step in range(steps):
        _, loss, info = tok(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0:
            reseed_dead_codes(tok.quantizer, info["f"].detach())
    return tok.eval(), x


@pytest.fixture(scope="module")
def trained():
    return train_tiny(TokenizerConfig(**TINY))


@pytest.mark.slow
def test_decode_of_encode_equals_training_reconstruction(trained):
    tok, x = trained
    x_rec, _, info = tok(x)
    assert torch.allclose(tok.decode(tok.encode(x)), x_rec, atol=1e-5)
    assert [idx.shape[-1] for idx in info["idx"]] == list(tok.cfg.scales)


@pytest.mark.slow
def test_reconstruction_improves_at_every_scale(trained):
    tok, x = trained
    errors = [F.mse_loss(rec, x).item() for rec in tok.cumulative_reconstructions(x)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert psnr(tok.cumulative_reconstructions(x)[-1], x).mean() > 15  # ~8 dB untrained


def phi_by_hand(tok, h, k):
    q = tok.quantizer
    conv = q.phi(k).conv
    return (1 - q.phis[0].rho) * h + q.phis[0].rho * F.conv2d(h, conv.weight, conv.bias, padding=1)


@pytest.mark.slow
def test_teacher_forcing_inputs_are_area_resized_cumulative_reconstructions(trained):
    tok, x = trained
    idx_list, scales, q = tok.encode(x[:4]), tok.cfg.scales, tok.quantizer
    var = VAR(VARConfig(scales=scales, vocab_size=tok.cfg.vocab_size, latent_dim=tok.cfg.latent_dim, dim=16, heads=2))
    inputs_BLC = var.teacher_forcing_inputs(q, flatten_scales(idx_list))
    assert inputs_BLC.shape == (4, sum(s * s for s in scales[1:]), tok.cfg.latent_dim)
    f_hat, start = 0, 0
    for k in range(len(scales) - 1):  # F_k by hand: codebook rows, bicubic up, phi, summed
        z = q.codebook.weight[idx_list[k]].permute(0, 3, 1, 2)
        f_hat = f_hat + phi_by_hand(tok, F.interpolate(z, size=(8, 8), mode="bicubic"), k)
        expected = F.adaptive_avg_pool2d(f_hat, scales[k + 1])  # area resize, independently
        n = scales[k + 1] ** 2
        got = inputs_BLC[:, start:start + n].transpose(1, 2).reshape(expected.shape)
        assert torch.allclose(got, expected, atol=1e-5), k
        start += n


def test_phi_choice_spreads_over_scales():
    q = Tokenizer(TokenizerConfig(**TINY)).quantizer
    chosen = [list(q.phis).index(q.phi(k)) for k in range(7)]  # positions k/6 against ticks 0, 1/3, 2/3, 1
    assert chosen[0] == 0 and chosen[-1] == 3 and chosen == sorted(chosen) and set(chosen) == {0, 1, 2, 3}


def test_gradients_reach_the_encoder_through_straight_through():
    tok = Tokenizer(TokenizerConfig(**TINY))
    x = smooth_images(8)
    x_rec, _, info = tok(x)
    F.mse_loss(x_rec, x).backward()  # reconstruction loss only: no commitment term
    grad = tok.encoder[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert tok.quantizer.codebook.weight.grad is None  # the codebook learns only from the VQ loss


def test_single_scale_is_a_plain_vqvae():
    tok = Tokenizer(TokenizerConfig(**{**TINY, "scales": (8,)}))
    x = smooth_images(4)
    idx = tok.encode(x)
    assert len(idx) == 1 and idx[0].shape == (4, 8, 8)
    f = tok.encoder(x)
    assert torch.equal(idx[0], tok.quantizer.nearest_code(f))  # plain nearest-code lookup


def test_dead_codes_move_onto_residuals_that_the_live_codes_leave():
    """Codes 8-15 were picked by no scale (0-7 each by one): each dead code moves onto a residual vector
    of this batch at some scale, the residual the live codes alone leave (a dead code must not explain
    part of f while it is replaced). Worked here: block means of what is left, its nearest live code by
    direction, that code's contribution subtracted. The live codes stay and the count restarts."""
    torch.manual_seed(0)
    q = MultiScaleQuantizer(vocab_size=16, dim=4, scales=(1, 2, 4))
    f = torch.randn(3, 4, 4, 4)
    live = torch.arange(8)
    with torch.no_grad():
        q.codebook.weight[8:11] = f.mean((2, 3))  # dead codes that match the 1×1 residuals exactly
        q.hits_KV[live % 3, live] = 1.0
        before = q.codebook.weight.clone()
        pool, rest = [], f
        for k, side in enumerate(q.scales):
            u_NC = F.avg_pool2d(rest, 4 // side).permute(0, 2, 3, 1).reshape(-1, 4)
            pool.append(u_NC)
            nearest = (F.normalize(u_NC, dim=1) @ F.normalize(before[live], dim=1).T).argmax(1)
            rest = rest - q.embed(live[nearest].view(3, side, side), k)
    dead = reseed_dead_codes(q, f, noise=0.0)
    assert dead.tolist() == list(range(8, 16))
    assert torch.equal(q.codebook.weight[:8], before[:8]) and q.hits_KV.sum() == 0
    gap = (q.codebook.weight[8:, None].detach() - torch.cat(pool)[None]).abs().amax(-1).min(1).values  # to the nearest
    assert gap.max() < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("cosine", [True, False])
@pytest.mark.parametrize("scales", [(8,), (1, 2, 3, 4, 5, 6, 8)])
def test_dead_codes_are_reseeded_and_training_stays_stable(scales, cosine):
    torch.manual_seed(0)
    tok = Tokenizer(TokenizerConfig(**{**TINY, "scales": scales, "cosine_lookup": cosine}))
    codebook = tok.quantizer.codebook.weight
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    x = smooth_images(64)
    losses = []
    for step in range(120):
        _, loss, info = tok(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step == 80:  # strand half the codebook far from every residual, unpicked by any scale
            with torch.no_grad():
                codebook[32:] = 100.0
            tok.quantizer.hits_KV[:, 32:] = 0
            dead = reseed_dead_codes(tok.quantizer, info["f"].detach())
            assert set(range(32, 64)) <= set(dead.tolist())
            assert codebook[32:].abs().max() < 10  # moved onto real residuals
            assert len(torch.unique(codebook[32:].detach(), dim=0)) == 32  # and apart
    after = losses[81:]
    assert all(torch.isfinite(torch.tensor(after)))
    assert max(after) < 3 * losses[80], (losses[80], max(after))  # bounded after the re-seed
    assert tok.quantizer.hits_KV[:, 32:].sum() > 0  # and the new codes are being used
