"""VAR: the block-causal mask, teacher forcing, cached sampling with CFG (var.py, sampling.py)."""
import pytest
import torch

import minivar.var
from minivar.mask import block_causal_mask, scale_block_sizes
from minivar.quantizer import flatten_scales, split_scales
from minivar.sampling import guided_logits, sample_tokens
from minivar.studies.complexity import generate_without_cache
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
    x = var.teacher_forcing_inputs(tok.quantizer, flatten_scales(random_tokens(2)))
    starts = torch.tensor([0] + [s * s for s in SCALES]).cumsum(0)  # sequence offsets of each block
    x2 = x.clone()
    x2[:, starts[block] - 1:starts[block + 1] - 1] += 1.0  # inputs of `block` (x has no class-token slot)
    out, out2 = var(x, labels)[0], var(x2, labels)[0]
    coarse = slice(0, int(starts[block]))
    assert torch.allclose(out[:, coarse], out2[:, coarse], atol=1e-6)
    assert not torch.allclose(out[:, starts[block]:], out2[:, starts[block]:], atol=1e-4)


def conditional_logits_while_sampling(model, quantizer, labels, **sampling):
    """Sample, recording the head's conditional logits (the first half of the CFG batch) at every step."""
    seen = []
    hook = model.head.register_forward_hook(lambda m, inp, out: seen.append(out[:len(labels)]))
    idx_list = model.generate(quantizer, labels, **sampling)
    hook.remove()
    return idx_list, torch.cat(seen, dim=1)


def test_sampling_logits_equal_one_full_masked_pass():
    tok, var = tiny_models()
    labels = torch.tensor([1, 4, 9])
    idx_list, logits = conditional_logits_while_sampling(var, tok.quantizer, labels,
                                                         generator=torch.Generator().manual_seed(0))
    full, _ = var(var.teacher_forcing_inputs(tok.quantizer, flatten_scales(idx_list)), labels)
    assert torch.allclose(logits, full, atol=1e-5, rtol=1e-5)


def test_cache_and_no_cache_give_the_same_samples():
    tok, var = tiny_models()
    labels = torch.tensor([0, 5])
    a = var.generate(tok.quantizer, labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(3))
    b = generate_without_cache(var, tok.quantizer, labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_cfg_mixes_class_and_null_class_with_a_linear_ramp(monkeypatch):
    cond, uncond = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    assert torch.equal(guided_logits(torch.cat([cond, uncond]), 0.0), cond)
    assert torch.allclose(guided_logits(torch.cat([cond, uncond]), 2.0), 3 * cond - 2 * uncond)

    tok, var = tiny_models()
    classes, head_outputs, sampled_from = [], [], []
    var.class_emb.register_forward_hook(lambda m, inp, out: classes.append(inp[0].clone()))
    var.head.register_forward_hook(lambda m, inp, out: head_outputs.append(out))
    monkeypatch.setattr(minivar.var, "sample_tokens", lambda logits, *args: sampled_from.append(logits)
                        or torch.zeros(logits.shape[:-1], dtype=torch.long))
    var.generate(tok.quantizer, torch.tensor([2, 6]), cfg_scale=3.0)
    assert torch.equal(classes[0], torch.tensor([2, 6, 10, 10]))  # [classes; null class] in one doubled batch
    K = len(SCALES)
    for k, (out, guided) in enumerate(zip(head_outputs, sampled_from)):
        w = 3.0 * k / (K - 1)  # 0 at the 1×1 map, rising linearly to 3 at the last scale
        c, u = out.chunk(2)
        assert torch.allclose(guided, (1 + w) * c - w * u, atol=1e-5), k
    assert not torch.allclose(sampled_from[-1], head_outputs[-1].chunk(2)[0], atol=1e-3)  # really guided


def test_same_seed_same_samples_and_different_seed_differs():
    tok, var = tiny_models()
    labels = torch.arange(4)
    run = lambda s: flatten_scales(var.generate(tok.quantizer, labels, generator=torch.Generator().manual_seed(s)))
    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))


def test_targets_are_not_shifted_position_k_predicts_token_k():
    """Unlike GPT, block k's positions predict scale k's tokens at the same positions: the
    1×1 map from the class token, and so on (paper Eq. 6)."""
    tok, var = tiny_models()
    targets, labels = flatten_scales(random_tokens(2, seed=3)), torch.tensor([1, 8])
    logits, loss = var(var.teacher_forcing_inputs(tok.quantizer, targets), labels, targets)
    aligned = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    shifted = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), targets[:, 1:].flatten())
    assert torch.allclose(loss, aligned, atol=1e-6) and not torch.allclose(loss, shifted, atol=1e-3)
    assert logits.shape[1] == targets.shape[1] == var.seq_len  # one prediction per token, none left over


def test_next_input_after_the_last_scale_is_none():
    tok, var = tiny_models()
    idx_list = random_tokens(2)
    f_hat = torch.zeros(2, var.cfg.latent_dim, SCALES[-1], SCALES[-1])
    for k, idx in enumerate(idx_list):
        f_hat, next_BCss = tok.quantizer.add_scale(f_hat, idx, k)
        assert (next_BCss is None) == (k == len(SCALES) - 1)
    assert torch.allclose(f_hat, tok.quantizer.cumulative_latents(idx_list)[-1])


def test_loss_falls_on_a_tiny_batch():
    tok, var = tiny_models()
    var.train()
    idx_list = random_tokens(8, seed=1)
    targets, labels = flatten_scales(idx_list), torch.arange(8)
    x = var.teacher_forcing_inputs(tok.quantizer, targets)  # no gradient: the tokenizer is frozen
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


def test_class_dropout_sends_labels_under_the_rate_to_the_null_class():
    """Label i becomes the null class (id num_classes = 10) iff its uniform number is below class_dropout."""
    var = VAR(VARConfig(scales=SCALES, vocab_size=32, latent_dim=8, dim=32, depth=1, heads=2, class_dropout=0.25))
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    uniform = torch.tensor([0.0, 0.1, 0.2, 0.2499, 0.25, 0.5, 0.9, 0.999])
    assert var.drop_labels(labels, uniform).tolist() == [10, 10, 10, 10, 4, 5, 6, 7]


def tiny_var_stage(tmp_path, class_dropout=0.1, ema_decay=0.0, n=64):
    """The training stage of train.py --stage var on random images and a tiny untrained tokenizer."""
    from types import SimpleNamespace

    from minivar.training.stages import VARStage
    torch.manual_seed(0)
    tok = Tokenizer(TokenizerConfig(widths=(8, 16, 16), vocab_size=32, latent_dim=8))
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n) % 10
    run = SimpleNamespace(batch_size=16, seed=0, eval_images=16, out_dir=tmp_path, ema_decay=ema_decay)
    return VARStage(run, VARConfig(vocab_size=32, latent_dim=8, dim=32, depth=1, heads=2, class_dropout=class_dropout),
                    (images, labels), (images[:16], labels[:16]), torch.device("cpu"),
                    tokenizer={"tokenizer_config": vars(tok.cfg), "tokenizer": tok.state_dict()})


def test_training_steps_drop_labels_at_the_configured_rate_and_keep_the_others(tmp_path):
    """What the training step feeds the model: the batch's own labels, except about class_dropout of
    them replaced by the null class (CFG's unconditional model is learned from those)."""
    stage = tiny_var_stage(tmp_path, class_dropout=0.3)
    fed = []
    model = stage.net
    stage.net = lambda x, labels, targets: fed.append(labels) or model(x, labels, targets)
    true = []
    for step in range(60):
        true.append(stage.train_labels[stage.sampler.indices(step)])
        stage.loss(step)
    fed, true = torch.cat(fed), torch.cat(true)
    dropped = fed == 10
    assert 0.25 < dropped.float().mean() < 0.35, dropped.float().mean()  # 960 labels: 0.30 ± 0.015 (sd)
    assert torch.equal(fed[~dropped], true[~dropped])


def test_teacher_forcing_inputs_are_the_area_resized_cumulative_reconstruction_by_hand():
    """Input block k+1 = area(F_k, s_{k+1}), F_k = Σ_{j≤k} phi_j(bicubic(e[r_j])), recomputed in plain torch."""
    tok, var = tiny_models()
    q = tok.quantizer
    idx_list = random_tokens(2, seed=5)
    inputs = var.teacher_forcing_inputs(q, flatten_scales(idx_list))  # B × (L − 1) × C
    side, f_hat, start = SCALES[-1], 0, 0
    for k in range(len(SCALES) - 1):
        z = q.codebook.weight[idx_list[k]].permute(0, 3, 1, 2)
        up = torch.nn.functional.interpolate(z, size=(side, side), mode="bicubic", align_corners=False)
        phi = q.phi(k)
        f_hat = f_hat + 0.5 * up + 0.5 * torch.nn.functional.conv2d(up, phi.conv.weight, phi.conv.bias, padding=1)
        expected = torch.nn.functional.adaptive_avg_pool2d(f_hat, SCALES[k + 1])  # area resize
        n = SCALES[k + 1] ** 2
        assert torch.allclose(inputs[:, start:start + n], expected.flatten(2).transpose(1, 2), atol=1e-5), k
        start += n
    assert start == inputs.shape[1]
