"""The tokenizer's adversarial and perceptual terms (training/sharpness.py, TokenizerStage)."""
import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from minivar.tokenizer import TokenizerConfig
from minivar.training.sharpness import (
    FeatureClassifier,
    PatchDiscriminator,
    adaptive_weight,
    discriminator_hinge_loss,
    perceptual_distance,
)
from minivar.training.stages import TokenizerStage

TINY = dict(widths=(16, 32, 32), res_blocks=1, vocab_size=64, latent_dim=8)


def fake_split(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8), torch.randint(0, 10, (n,), generator=g)


def tokenizer_stage(adversarial_weight, perceptual_weight, disc_start=3, disc_warmup=0):
    torch.manual_seed(0)
    net = FeatureClassifier((8, 16, 16))
    run = SimpleNamespace(batch_size=8, seed=0, eval_images=16, reseed_every=100, lr=1e-3)
    cfg = TokenizerConfig(**TINY, adversarial_weight=adversarial_weight, perceptual_weight=perceptual_weight,
                          disc_start=disc_start, disc_warmup=disc_warmup)
    perceptual = {"model_config": {"widths": (8, 16, 16)}, "model": net.state_dict()}
    return TokenizerStage(run, cfg, fake_split(32), fake_split(16, 1), torch.device("cpu"), perceptual=perceptual)


def plain_loss(stage, step):
    """The tokenizer's own L2 + VQ loss on the batch of `step`."""
    x, _ = stage.batches.batch(step)
    return stage.model(x)[1]


def test_switched_off_the_loss_is_exactly_the_l2_tokenizer_s():
    stage = tokenizer_stage(0.0, 0.0)
    assert stage.discriminator is None and stage.perceptual is None
    loss, metrics = stage.loss(5)
    assert torch.equal(loss, plain_loss(stage, 5)) and "gen_loss" not in metrics and "perceptual" not in metrics


def test_the_perceptual_term_adds_its_weighted_distance():
    stage = tokenizer_stage(0.0, 0.3)
    loss, metrics = stage.loss(5)
    assert metrics["perceptual"] > 0
    assert torch.allclose(loss, plain_loss(stage, 5) + 0.3 * metrics["perceptual"], atol=1e-6)


def test_the_adversarial_term_starts_at_disc_start():
    stage = tokenizer_stage(0.5, 0.0, disc_start=3)
    for step in (0, 2):
        loss, metrics = stage.loss(step)
        assert "gen_loss" not in metrics and torch.equal(loss, plain_loss(stage, step))
        assert "disc_loss" not in stage.after_step(step, torch.optim.Adam(stage.model.parameters()))
    loss, metrics = stage.loss(3)
    expected = plain_loss(stage, 3) + 0.5 * metrics["adaptive_weight"] * metrics["gen_loss"]
    assert metrics["adaptive_weight"] > 0 and torch.allclose(loss, expected, atol=1e-6)
    before = [p.clone() for p in stage.discriminator.parameters()]
    assert "disc_loss" in stage.after_step(3, torch.optim.Adam(stage.model.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before, stage.discriminator.parameters()))  # D learned


def test_the_discriminator_learns_alone_during_its_warm_up():
    stage = tokenizer_stage(0.5, 0.0, disc_start=3, disc_warmup=2)
    optimizer = torch.optim.Adam(stage.model.parameters())
    for step in (3, 4):  # D learns, the decoder does not hear of it yet
        loss, metrics = stage.loss(step)
        assert "gen_loss" not in metrics and torch.equal(loss, plain_loss(stage, step))
        assert "disc_loss" in stage.after_step(step, optimizer)
    assert "gen_loss" in stage.loss(5)[1]


def test_on_the_cpu_the_networks_train_channels_last_and_the_loss_is_the_default_layout_s():
    """conv_layout (training/device.py) is a speed choice only: on the CPU the tokenizer, the
    classifier and the discriminator hold channels-last weights, and default-layout copies of
    the same networks give the same loss."""
    stage = tokenizer_stage(0.5, 0.3, disc_start=0)
    networks = (stage.model, stage.perceptual, stage.discriminator)
    weights = [m.weight for net in networks for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert not all(w.is_contiguous() for w in weights)  # really a different layout
    reference = copy.deepcopy(stage)
    reference.layout = torch.contiguous_format
    for net in (reference.model, reference.perceptual, reference.discriminator):
        net.to(memory_format=torch.contiguous_format)
    (loss, metrics), (ref_loss, _) = stage.loss(5), reference.loss(5)
    assert "gen_loss" in metrics and "perceptual" in metrics
    assert torch.allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)


def test_hinge_loss_is_zero_only_when_the_discriminator_is_sure_and_right():
    assert discriminator_hinge_loss(torch.full((4, 1, 8, 8), 2.0), torch.full((4, 1, 8, 8), -3.0)) == 0
    assert discriminator_hinge_loss(torch.zeros(4, 1, 8, 8), torch.zeros(4, 1, 8, 8)) == pytest.approx(1.0)
    assert PatchDiscriminator()(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 8, 8)


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer():
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(4, 3, 3, padding=1)
    y = layer(torch.randn(2, 4, 8, 8))
    rec, gen = y.pow(2).mean(), -7 * y.mean()
    g_rec = torch.autograd.grad(rec, layer.weight, retain_graph=True)[0]
    g_gen = torch.autograd.grad(gen, layer.weight, retain_graph=True)[0]
    weight = adaptive_weight(rec, gen, layer.weight)
    assert weight == pytest.approx((g_rec.norm() / (g_gen.norm() + 1e-4)).item(), rel=1e-6)
    assert adaptive_weight(10 * rec, gen, layer.weight) == pytest.approx(10 * weight.item(), rel=1e-5)


def test_perceptual_distance_is_zero_for_the_same_image_and_trains_only_the_reconstruction():
    torch.manual_seed(0)
    net = FeatureClassifier((8, 16, 16)).eval().requires_grad_(False)
    x, y = torch.rand(3, 3, 32, 32) * 2 - 1, (torch.rand(3, 3, 32, 32) * 2 - 1).requires_grad_()
    assert torch.allclose(perceptual_distance(net, x, x), torch.zeros(3), atol=1e-6)
    d = perceptual_distance(net, x, y)
    assert d.shape == (3,) and (d > 0).all()
    d.sum().backward()
    assert y.grad.abs().sum() > 0 and all(p.grad is None for p in net.parameters())
    closer = perceptual_distance(net, x, (x + 0.05 * (y - x)).detach())
    assert (closer < d.detach()).all()  # a distance: nearer images score lower


def test_the_classifier_learns_cifar_like_labels_quickly():
    torch.manual_seed(0)
    net = FeatureClassifier((8, 16, 16))
    x = torch.randn(64, 3, 32, 32)
    y = (x[:, 0].mean((1, 2)) > 0).long()  # a label the pixels decide
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(60):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (net(x).argmax(1) == y).float().mean() > 0.9
