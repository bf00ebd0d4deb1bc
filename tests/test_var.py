import pytest
import torch

from minivar.mask import block_causal_mask, scale_block_sizes
from minivar.quantizer import flatten_scales, split_scales
from minivar.sampling import guided_logits, sample_tokens
from minivar.tokenizer import Tokenizer, TokenizerConfig
from minivar.var import VAR, VARConfig

SCALES = (1, 2, 3, 4)


def test_mask_pattern_for_scales_1_2_3():
    allowed = block_causal_mask(scale_block_sizes((1, 2, 3)))  # blocks of 1, 4 and 9 tokens
    block = [0] + [1] * 4 + [2] * 9
    expected = torch.tensor([[block[j] <= block[i] for j in range(14)] for i in range(14)])
    assert torch.equal(allowed, expected)
    assert allowed[0].sum() == 1 and allowed[1:5].sum(1).tolist() == [5] * 4 and allowed[5:].sum(1).tolist() == [14] * 9


def test_blocks_of_one_give_the_causal_mask():
    assert torch.equal(block_causal_mask([1] * 10), torch.ones(10, 10, dtype=torch.bool).tril())


def tiny_models(seed=0, scales=SCALES):
    """A tiny tokenizer and VAR whose every path is active (adaLN not left at zero)."""
    torch.manual_seed(seed)
    tok = Tokenizer(TokenizerConfig(scales=scales, widths=(8, 16, 16), vocab_size=32, latent_dim=8)).eval()
    var = VAR(VARConfig(scales=scales, vocab_size=32, latent_dim=8, dim=32, depth=2, heads=2)).eval()
    with torch.no_grad():
        for name, p in var.named_parameters():
            if "ada" in name:
                p.normal_(0, 0.05)
    return tok, var


def random_tokens(B, vocab=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(vocab, (B, s, s), generator=g) for s in SCALES]


@pytest.mark.parametrize("block", [1, 2, 3])
def test_finer_inputs_never_change_coarser_logits(block):
    tok, var = tiny_models()
    labels = torch.tensor([3, 7])
    x = tok.teacher_forcing_inputs(random_tokens(2))
    starts = torch.tensor([0] + [s * s for s in SCALES]).cumsum(0)  # sequence offsets of each block
    x2 = x.clone()
    x2[:, starts[block] - 1:starts[block + 1] - 1] += 1.0  # inputs of `block` (x has no class-token slot)
    out, out2 = var(x, labels)[0], var(x2, labels)[0]
    coarse = slice(0, int(starts[block]))
    assert torch.allclose(out[:, coarse], out2[:, coarse], atol=1e-6)
    assert not torch.allclose(out[:, starts[block]:], out2[:, starts[block]:], atol=1e-4)


@pytest.mark.parametrize("use_cache", [True, False])
def test_sampling_logits_equal_one_full_masked_pass(use_cache):
    tok, var = tiny_models()
    labels = torch.tensor([1, 4, 9])
    idx_list, logits_list = var.generate(tok.quantizer, labels, cfg=0.0, return_logits=True, use_cache=use_cache,
                                         generator=torch.Generator().manual_seed(0))
    full, _ = var(tok.teacher_forcing_inputs(idx_list), labels)
    assert torch.allclose(torch.cat(logits_list, dim=1), full, atol=1e-5, rtol=1e-5)


def test_cache_and_no_cache_give_the_same_samples():
    tok, var = tiny_models()
    labels = torch.tensor([0, 5])
    a = var.generate(tok.quantizer, labels, cfg=2.0, generator=torch.Generator().manual_seed(3))
    b = var.generate(tok.quantizer, labels, cfg=2.0, generator=torch.Generator().manual_seed(3), use_cache=False)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_cfg_weight_zero_is_conditional_and_nonzero_guides():
    cond, uncond = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    assert torch.equal(guided_logits(torch.cat([cond, uncond]), 0.0), cond)
    assert torch.allclose(guided_logits(torch.cat([cond, uncond]), 2.0), 3 * cond - 2 * uncond)

    tok, var = tiny_models()
    labels = torch.tensor([2, 6])
    seen = []
    hook = var.class_emb.register_forward_hook(lambda m, inp, out: seen.append(inp[0].clone()))
    idx_list, guided = var.generate(tok.quantizer, labels, cfg=3.0, return_logits=True)
    hook.remove()
    assert torch.equal(seen[0], torch.tensor([2, 6, 10, 10]))  # [classes; null class] in one doubled batch
    cond_logits, _ = var(tok.teacher_forcing_inputs(idx_list), labels)
    first, last = slice(0, 1), slice(cond_logits.shape[1] - SCALES[-1] ** 2, None)
    assert torch.allclose(guided[0], cond_logits[:, first], atol=1e-5)  # weight 0 at the first scale
    assert not torch.allclose(guided[-1], cond_logits[:, last], atol=1e-3)  # weight 3 at the last


def test_same_seed_same_samples_and_different_seed_differs():
    tok, var = tiny_models()
    labels = torch.arange(4)
    run = lambda s: flatten_scales(var.generate(tok.quantizer, labels, generator=torch.Generator().manual_seed(s)))
    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))


def test_loss_falls_on_a_tiny_batch():
    tok, var = tiny_models()
    var.train()
    idx_list = random_tokens(8, seed=1)
    with torch.no_grad():  # the tokenizer is frozen: its features are data here
        x = tok.teacher_forcing_inputs(idx_list)
    targets, labels = flatten_scales(idx_list), torch.arange(8)
    opt = torch.optim.AdamW(var.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        _, loss = var(x, labels, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


def test_flatten_and_split_are_inverse():
    idx_list = random_tokens(3)
    assert all(torch.equal(a, b) for a, b in zip(split_scales(flatten_scales(idx_list), SCALES), idx_list))


def test_top_k_and_top_p_keep_only_likely_tokens():
    logits = torch.tensor([[[5.0, 4.0, 0.0, -1.0, -2.0]]]).repeat(1, 500, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_tokens(logits, top_k=2, generator=g).unique().tolist()) == {0, 1}
    assert set(sample_tokens(logits, top_p=0.5, generator=g).unique().tolist()) == {0}  # p(0) ≈ 0.72 > 0.5
    assert len(sample_tokens(logits, generator=g).unique()) >= 3
