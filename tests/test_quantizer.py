"""Multi-scale residual quantization (quantizer.py), checked against a re-computation in a few
lines of plain torch on a tiny latent and codebook: every scale's tokens, the cumulative
reconstruction after every scale, the resampling kernels, the VQ loss and its gradients, and
the straight-through estimator. Nothing here calls the quantizer twice to compare it with itself."""
import pytest
import torch
import torch.nn.functional as F

from minivar.quantizer import MultiScaleQuantizer, area_resize, bicubic_resize

SCALES = (1, 2, 4)  # on a 4×4 latent: every coarser side divides it, so area resizing is a plain block mean
C, V = 4, 16


def tiny_quantizer(cosine, seed=0):
    """One phi per scale (n_phi = K), so scale k uses phis[k]; random convs so that phi matters."""
    torch.manual_seed(seed)
    q = MultiScaleQuantizer(V, C, SCALES, n_phi=len(SCALES), rho=0.5, beta=0.25, cosine_lookup=cosine)
    return q.eval()


def block_mean(x_BChw, s):
    """Area downsampling by hand: the mean of each (h/s)×(h/s) block."""
    B, C_, h, _ = x_BChw.shape
    return x_BChw.reshape(B, C_, s, h // s, s, h // s).mean(dim=(3, 5))


def nearest_by_hand(u_BCss, codebook_VC, cosine):
    """The code each position picks: largest cosine similarity, or smallest Euclidean distance."""
    u_NC = u_BCss.permute(0, 2, 3, 1).reshape(-1, u_BCss.shape[1])
    if cosine:
        score_NV = F.cosine_similarity(u_NC[:, None, :], codebook_VC[None, :, :], dim=-1)
        best = score_NV.argmax(1)
    else:
        best = torch.cdist(u_NC, codebook_VC).argmin(1)
    B, _, s, _ = u_BCss.shape
    return best.view(B, s, s)


def phi_by_hand(q, k, h_BChw):
    conv = q.phis[k].conv
    return 0.5 * h_BChw + 0.5 * F.conv2d(h_BChw, conv.weight, conv.bias, padding=1)


@pytest.mark.parametrize("cosine", [True, False])
def test_each_scale_picks_the_nearest_code_of_the_residual_left_by_the_coarser_ones(cosine):
    """Algorithm 1 of the paper, re-run by hand: r_k = nearest(area(rest, s_k)); h = phi_k(bicubic(e[r_k]));
    f̂ += h; rest −= h. The tokens of every scale and f̂ after every scale must match."""
    q = tiny_quantizer(cosine)
    f = torch.randn(2, C, 4, 4, generator=torch.Generator().manual_seed(1))
    f_hat_st, idx_list, _ = q(f)
    cumulative = q.cumulative_latents(idx_list)
    e_VC = q.codebook.weight.detach()
    rest, f_hat = f.clone(), torch.zeros_like(f)
    for k, s in enumerate(SCALES):
        u = block_mean(rest, s) if s < 4 else rest
        expected = nearest_by_hand(u, e_VC, cosine)
        assert torch.equal(idx_list[k], expected), f"scale {s}×{s}: not the nearest code of the residual"
        z = e_VC[expected].permute(0, 3, 1, 2)  # B×C×s×s
        up = F.interpolate(z, size=(4, 4), mode="bicubic", align_corners=False) if s < 4 else z
        h = phi_by_hand(q, k, up)
        f_hat, rest = f_hat + h, rest - h
        assert torch.allclose(cumulative[k], f_hat, atol=1e-5), f"F_{k + 1} is not the sum of the codes so far"
    assert torch.allclose(f_hat_st, f_hat, atol=1e-5)  # what the decoder gets is F_K


def test_without_subtracting_the_residual_the_scales_would_pick_other_codes():
    """The test above has teeth: on this latent, quantizing f itself at every scale (no residual)
    picks other tokens at some scale than the residual does."""
    q = tiny_quantizer(cosine=True)
    f = torch.randn(2, C, 4, 4, generator=torch.Generator().manual_seed(1))
    _, idx_list, _ = q(f)
    e_VC = q.codebook.weight.detach()
    no_residual = [nearest_by_hand(block_mean(f, s) if s < 4 else f, e_VC, True) for s in SCALES]
    assert any(not torch.equal(a, b) for a, b in zip(idx_list, no_residual))


def test_the_resampling_kernels_are_area_down_and_bicubic_up():
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(area_resize(x, 4), block_mean(x, 4), atol=1e-6)  # a 2×2 block mean
    assert torch.allclose(area_resize(x, 2), block_mean(x, 2), atol=1e-6)
    assert torch.allclose(area_resize(x, 3), F.adaptive_avg_pool2d(x, 3), atol=1e-6)  # uneven cells: their means
    assert area_resize(x, 8) is x and bicubic_resize(x, 8) is x  # no resampling at the latent's own side
    # bicubic: Keys' cubic kernel (a = −0.75, as torch and PIL use), at half-pixel centres, by hand on one row
    row = torch.tensor([[[[0.0, 1.0, 4.0, 9.0]]]]).expand(1, 1, 4, 4)  # constant along the height
    up = bicubic_resize(row, 8)[0, 0, 0]

    def cubic(t, a=-0.75):
        t = abs(t)
        return (a + 2) * t**3 - (a + 3) * t**2 + 1 if t <= 1 else a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0

    values = [0.0, 1.0, 4.0, 9.0]
    for i in range(8):
        centre = (i + 0.5) / 2 - 0.5  # output pixel i in input coordinates
        base = int(torch.floor(torch.tensor(centre)))
        expected = sum(cubic(centre - j) * values[min(max(j, 0), 3)] for j in range(base - 1, base + 3))
        assert up[i].item() == pytest.approx(expected, abs=1e-5), i


def test_vq_loss_is_the_commitment_and_codebook_terms_on_each_cumulative_reconstruction():
    """Value: mean over scales of β·‖sg(F_k) − f‖² + ‖F_k − sg(f)‖² (as mean squared errors).
    Gradient into f: only the commitment term, β·2(f − F_k)/N per scale, averaged."""
    q = tiny_quantizer(cosine=True)
    f = torch.randn(2, C, 4, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    _, idx_list, vq_loss = q(f)
    cumulative = [F_k.detach() for F_k in q.cumulative_latents(idx_list)]
    K, N = len(SCALES), f.numel()
    expected = sum((1 + 0.25) * (F_k - f.detach()).pow(2).mean() for F_k in cumulative) / K
    assert vq_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    (grad_f,) = torch.autograd.grad(vq_loss, f)
    expected_grad = sum(0.25 * 2 * (f.detach() - F_k) / N for F_k in cumulative) / K
    assert torch.allclose(grad_f, expected_grad, atol=1e-7)


def test_straight_through_passes_the_decoder_gradient_to_the_encoder_unchanged():
    """f̂_st = f + sg(f̂ − f): its value is f̂, its gradient with respect to f is the identity."""
    q = tiny_quantizer(cosine=True)
    f = torch.randn(2, C, 4, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    f_hat_st, idx_list, _ = q(f)
    assert torch.allclose(f_hat_st, q.cumulative_latents(idx_list)[-1], atol=1e-5)
    weights = torch.randn(f.shape, generator=torch.Generator().manual_seed(2))
    (grad_f,) = torch.autograd.grad((weights * f_hat_st).sum(), f)
    assert torch.equal(grad_f, weights)
