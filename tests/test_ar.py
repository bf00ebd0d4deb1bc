"""The AR baseline: VAR's machinery with blocks of one token (ar.py), on one map or on VAR's scales."""
import pytest
import torch

from minivar.ar import AR
from minivar.quantizer import MultiScaleQuantizer, flatten_scales
from minivar.studies.complexity import generate_without_cache
from minivar.var import VARConfig
from tests.test_var import conditional_logits_while_sampling

SIDE, VOCAB = 4, 32


def tiny_ar(seed=0, scales=(SIDE,)):
    torch.manual_seed(seed)
    model = AR(VARConfig(scales=scales, vocab_size=VOCAB, latent_dim=8, dim=32, depth=2, heads=2)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ada" in name:  # leave no path at zero (adaLN-Zero would hide bugs)
                p.normal_(0, 0.05)
    return model, MultiScaleQuantizer(VOCAB, 8, scales).eval()


def test_over_multi_scale_tokens_it_is_token_causal_over_the_same_sequence():
    model, q = tiny_ar(scales=(1, 2, 4))
    assert model.seq_len == 1 + 4 + 16 and model.block_sizes == [1] * 21  # VAR's tokens, one per step
    assert torch.equal(model.mask_LL, torch.ones(21, 21, dtype=torch.bool).tril())
    idx_list = model.generate(q, torch.tensor([3, 8]), cfg_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert [idx.shape[-1] for idx in idx_list] == [1, 2, 4]
    weights = [model.guidance_weight(k, 2.0) for k in range(21)]  # follows the scale of the token drawn
    assert weights == [0.0] + [1.0] * 4 + [2.0] * 16


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


@pytest.mark.parametrize("scales", [(SIDE,), (1, 2, 4)])
def test_sampling_logits_equal_one_full_causal_pass(scales):
    model, q = tiny_ar(scales=scales)
    labels = torch.tensor([1, 4, 9])
    idx_list, logits = conditional_logits_while_sampling(model, q, labels, cfg_scale=0.0,
                                                         generator=torch.Generator().manual_seed(0))
    assert len(idx_list) == len(scales) and logits.shape[1] == model.seq_len
    full, _ = model(model.teacher_forcing_inputs(q, flatten_scales(idx_list)), labels)
    assert torch.allclose(logits, full, atol=1e-5, rtol=1e-5)


def test_cache_and_no_cache_give_the_same_samples_with_cfg():
    model, q = tiny_ar()
    labels = torch.tensor([0, 5])
    a = model.generate(q, labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(3))[0]
    b = generate_without_cache(model, q, labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(3))[0]
    assert torch.equal(a, b)


def test_cfg_is_constant_over_positions_of_one_map():
    model, _ = tiny_ar()
    assert model.guidance_weight(0, 3.0) == model.guidance_weight(15, 3.0) == 3.0


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
