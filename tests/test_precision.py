"""The GPU's precision path, run on the CPU (CPU autocast follows CUDA's bf16 rules for matmuls):
logits and guidance in fp32, the quantizer's code choice in fp32, the KV cache in the compute
dtype; weight decay on weight matrices only; --dtype's choice; a forward pass torch.compile
can take whole."""
import pytest
import torch
import torch._dynamo

import minivar.var
from minivar.ar import AR
from minivar.quantizer import MultiScaleQuantizer, flatten_scales
from minivar.sampling import KVCache
from minivar.tokenizer import Tokenizer, TokenizerConfig
from minivar.training.device import autocast, choose_dtype
from minivar.training.optim import adamw, weight_decay_groups
from minivar.var import VAR, VARConfig

CPU = torch.device("cpu")
SCALES = (1, 2, 4)


def tiny(cls, seed=0):
    torch.manual_seed(seed)
    model = cls(VARConfig(scales=SCALES, vocab_size=32, latent_dim=8, dim=32, depth=2, heads=2)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ada" in name:  # adaLN-Zero would leave every block the identity
                p.normal_(0, 0.05)
    L = model.seq_len
    x = torch.randint(32, (2, L - 1)) if cls is AR else torch.randn(2, L - 1, 8)
    return model, x, torch.tensor([3, 10]), torch.randint(32, (2, L))


@pytest.mark.parametrize("cls", [VAR, AR])
def test_under_bf16_autocast_the_logits_and_loss_are_fp32_and_the_blocks_bf16(cls):
    model, x, labels, targets = tiny(cls)
    seen = []
    model.blocks[0].attn.qkv.register_forward_hook(lambda m, inp, out: seen.append(out.dtype))
    with autocast(CPU, "bf16"):
        logits, loss = model(x, labels, targets)
    assert seen == [torch.bfloat16]  # the autocast is on: the matmuls run in bf16
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32
    with torch.no_grad():
        reference = model(x, labels)[0]  # fp32 all the way
    assert (logits - reference).abs().max() < 0.1  # the same logits, up to the blocks' bf16 rounding


@pytest.mark.parametrize("cls", [VAR, AR])
def test_sampling_under_bf16_mixes_guidance_in_fp32_and_caches_in_bf16(cls, monkeypatch):
    model = tiny(cls)[0]
    caches, mixed = [], []
    real_kv, real_sample = minivar.var.KVCache, minivar.var.sample_tokens
    module = __import__(cls.__module__, fromlist=["KVCache"])
    monkeypatch.setattr(module, "KVCache", lambda max_len: caches.append(real_kv(max_len)) or caches[-1])
    monkeypatch.setattr(module, "sample_tokens", lambda logits, *a: mixed.append(logits.dtype) or real_sample(logits, *a))
    quantizer = MultiScaleQuantizer(32, 8, SCALES).eval()
    with autocast(CPU, "bf16"):
        model.generate(quantizer, torch.tensor([1, 4]), cfg_scale=3.0, generator=torch.Generator().manual_seed(0))
    assert len(caches) == model.cfg.depth and all(c.k.dtype == c.v.dtype == torch.bfloat16 for c in caches)
    assert mixed and set(mixed) == {torch.float32}


def test_the_quantizer_picks_the_fp32_codes_under_bf16_autocast():
    """The tokenizer trains under autocast with the quantizer inside: its nearest-code choice must be
    the one the token cache (fp32) makes, or the decoder learns codes VAR never sees."""
    torch.manual_seed(0)
    for cosine in (True, False):
        q = MultiScaleQuantizer(512, 32, (1, 2, 3, 4, 5, 6, 8), cosine_lookup=cosine).eval()
        f = torch.randn(16, 32, 8, 8).bfloat16()  # what a bf16 encoder hands over
        with torch.no_grad():
            fp32 = flatten_scales(q(f.float())[1])
            with autocast(CPU, "bf16"):
                f_hat, idx_list, vq_loss = q(f)
        assert torch.equal(flatten_scales(idx_list), fp32), cosine
        assert f_hat.dtype == vq_loss.dtype == torch.float32


def test_teacher_forcing_inputs_are_fp32_under_bf16_autocast():
    tok = Tokenizer(TokenizerConfig(scales=SCALES, widths=(8, 16, 16), vocab_size=32, latent_dim=8))
    model = tiny(VAR)[0]
    tokens = torch.randint(32, (2, model.seq_len))
    with autocast(CPU, "bf16"):
        inputs = model.teacher_forcing_inputs(tok.quantizer, tokens)
    assert inputs.dtype == torch.float32
    assert torch.equal(inputs, model.teacher_forcing_inputs(tok.quantizer, tokens))


def by_hand_decayed(model):
    """The weight matrices of linear and conv layers, named by walking the modules."""
    return {f"{name}.weight" for name, m in model.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d))}


@pytest.mark.parametrize("make", [lambda: tiny(VAR)[0], lambda: tiny(AR)[0],
                                  lambda: Tokenizer(TokenizerConfig(widths=(8, 16, 16), vocab_size=32, latent_dim=8))])
def test_weight_decay_applies_to_weight_matrices_only(make):
    model = make()
    decay, rest = weight_decay_groups(model)
    names = {n for n, _ in model.named_parameters()}
    assert set(decay) == by_hand_decayed(model) and set(rest) == names - set(decay) and not set(decay) & set(rest)
    never = [n for n in names if n.endswith(".bias") or "norm" in n or "emb" in n or "codebook" in n]
    assert never and not set(never) & set(decay)  # biases, q/k gains, embeddings, the codebook: never decayed
    if isinstance(model, VAR):
        assert {"pos_emb", "class_emb.weight", "level_emb.weight", "blocks.0.attn.q_norm.weight"} <= set(rest)
        assert {"blocks.0.attn.qkv.weight", "head.out.weight"} <= set(decay)
    optimizer = adamw(model, lr=1e-3, weight_decay=0.05)
    by_id = {id(p): n for n, p in model.named_parameters()}
    groups = [({by_id[id(p)] for p in g["params"]}, g["weight_decay"]) for g in optimizer.param_groups]
    assert groups == [(set(decay), 0.05), (set(rest), 0.0)]


@pytest.mark.parametrize("cls", [VAR, AR])
def test_the_training_forward_and_a_sampling_step_compile_without_graph_breaks(cls):
    """torch.compile takes the whole pass as one graph: masks are buffers, nothing but tensor work inside."""
    model, x, labels, targets = tiny(cls)
    model.train()
    explained = torch._dynamo.explain(model)(x, labels, targets)
    assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]

    def sampling_step(h, cond, caches):  # what generate runs at each step, before the draw
        for block, cache in zip(model.blocks, caches):
            h = block(h, cond, cache=cache)
        return model.head(h, cond)
    cond = model.class_emb(torch.tensor([1, 4, 10, 10]))
    with torch.no_grad():
        explained = torch._dynamo.explain(sampling_step)(cond[:, None], cond, [KVCache(model.seq_len) for _ in model.blocks])
    assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]


def test_dtype_choice():
    timed = []
    assert choose_dtype("fp32", CPU, time_step=timed.append) == ("fp32", "as asked") and not timed
    assert choose_dtype("bf16", CPU)[0] == "bf16"
    assert choose_dtype("auto", CPU)[0] == "fp32"  # nothing to time: fp32 on a CPU
    with pytest.raises(ValueError, match="--dtype half"):
        choose_dtype("half", CPU)


@pytest.mark.parametrize("faster", ["fp32", "bf16"])
def test_auto_keeps_the_faster_step_where_bf16_matmuls_are_not_hopeless(faster, monkeypatch):
    monkeypatch.setattr("minivar.training.device.bf16_matmul_slowdown", lambda device: 1.2)
    seconds = {"fp32": 1.0, "bf16": 0.5} if faster == "bf16" else {"fp32": 0.5, "bf16": 1.0}
    dtype, why = choose_dtype("auto", CPU, time_step=seconds.get)
    assert dtype == faster and "fp32 1000 ms" in why or "fp32 500 ms" in why
    monkeypatch.setattr("minivar.training.device.bf16_matmul_slowdown", lambda device: 30.0)
    dtype, why = choose_dtype("auto", CPU, time_step=lambda d: pytest.fail("timed a hopeless bf16 step"))
    assert dtype == "fp32" and "30x slower" in why


def test_timing_a_step_for_auto_leaves_the_run_as_it_was(tmp_path):
    """--dtype auto times real training steps before the run starts: no trace of them may remain (the
    code counts the tokenizer keeps, gradients, the random state), or the run would differ from one
    started with the dtype typed."""
    from types import SimpleNamespace

    from minivar.training.device import time_one_step
    from minivar.training.stages import TokenizerStage
    images, labels = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8), torch.arange(32) % 10
    run = SimpleNamespace(batch_size=8, seed=0, eval_images=8, reseed_every=100, lr=1e-3)
    stage = TokenizerStage(run, TokenizerConfig(widths=(8, 16, 16), vocab_size=32, latent_dim=8, perceptual_weight=0),
                           (images, labels), (images, labels), CPU)
    stage.model.quantizer.hits_KV[0, 3] = 5.0
    hits, rng = stage.model.quantizer.hits_KV.clone(), torch.get_rng_state()
    assert all(time_one_step(stage, dtype, repeats=1) > 0 for dtype in ("fp32", "bf16"))
    assert torch.equal(stage.model.quantizer.hits_KV, hits) and torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in stage.model.parameters())
