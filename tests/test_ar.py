"""The AR baseline: VAR's machinery with blocks of one token (ar.py)."""
import pytest
import torch

from minivar.ar import AR
from minivar.quantizer import MultiScaleQuantizer
from minivar.var import VARConfig

SIDE, VOCAB = 4, 32


def tiny_ar(seed=0):
    torch.manual_seed(seed)
    model = AR(VARConfig(scales=(SIDE,), vocab_size=VOCAB, latent_dim=8, dim=32, depth=2, heads=2)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ada" in name:  # leave no path at zero (adaLN-Zero would hide bugs)
                p.normal_(0, 0.05)
    return model, MultiScaleQuantizer(VOCAB, 8, (SIDE,)).eval()


def test_ar_refuses_a_multi_scale_config():
    with pytest.raises(ValueError, match="single-scale"):
        AR(VARConfig(scales=(1, 2, 4)))


def test_inputs_are_the_targets_shifted_by_one():
    model, q = tiny_ar()
    tokens = torch.randint(VOCAB, (2, SIDE * SIDE))
    assert torch.equal(model.teacher_forcing_inputs(q, tokens), tokens[:, :-1])
    assert model.seq_len == SIDE * SIDE and torch.equal(model.mask_LL, torch.ones(16, 16, dtype=torch.bool).tril())


@pytest.mark.parametrize("j", [0, 5, 14])
def test_changing_a_token_never_changes_earlier_logits(j):
    model, q = tiny_ar()
    tokens = torch.randint(VOCAB, (2, SIDE * SIDE), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([3, 7])
    x = model.teacher_forcing_inputs(q, tokens)
    x2 = x.clone()
    x2[:, j] = (x2[:, j] + 1) % VOCAB  # token j is the input at position j + 1
    out, out2 = model(x, labels)[0], model(x2, labels)[0]
    assert torch.allclose(out[:, :j + 1], out2[:, :j + 1], atol=1e-6)  # positions 0..j predict tokens 0..j
    assert not torch.allclose(out[:, j + 1:], out2[:, j + 1:], atol=1e-4)


@pytest.mark.parametrize("use_cache", [True, False])
def test_sampling_logits_equal_one_full_causal_pass(use_cache):
    model, q = tiny_ar()
    labels = torch.tensor([1, 4, 9])
    idx_list, logits = model.generate(q, labels, cfg=0.0, return_logits=True, use_cache=use_cache,
                                      generator=torch.Generator().manual_seed(0))
    assert len(idx_list) == 1 and idx_list[0].shape == (3, SIDE, SIDE) and len(logits) == SIDE * SIDE
    full, _ = model(model.teacher_forcing_inputs(q, idx_list[0].flatten(1)), labels)
    assert torch.allclose(torch.cat(logits, dim=1), full, atol=1e-5, rtol=1e-5)


def test_cache_and_no_cache_give_the_same_samples_with_cfg():
    model, q = tiny_ar()
    labels = torch.tensor([0, 5])
    a = model.generate(q, labels, cfg=2.0, generator=torch.Generator().manual_seed(3))[0]
    b = model.generate(q, labels, cfg=2.0, generator=torch.Generator().manual_seed(3), use_cache=False)[0]
    assert torch.equal(a, b)


def test_cfg_is_constant_over_positions_and_really_guides():
    model, q = tiny_ar()
    labels = torch.tensor([2, 6])
    idx_list, guided = model.generate(q, labels, cfg=3.0, return_logits=True)
    cond, _ = model(model.teacher_forcing_inputs(q, idx_list[0].flatten(1)), labels)
    assert model.guidance_weight(0, 3.0) == model.guidance_weight(15, 3.0) == 3.0
    assert not torch.allclose(guided[0], cond[:, :1], atol=1e-3)  # guided from the first token on


def test_loss_falls_on_a_tiny_batch():
    model, q = tiny_ar()
    model.train()
    tokens = torch.randint(VOCAB, (8, SIDE * SIDE), generator=torch.Generator().manual_seed(2))
    labels = torch.arange(8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        _, loss = model(model.teacher_forcing_inputs(q, tokens), labels, tokens)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
