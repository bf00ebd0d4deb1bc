"""Training cost: the counts behind studies/training_cost.py, FlexAttention against the dense
mask (flex_attention.py), the attention option through checkpoints, and the benchmark end to end."""
import json
import os
import warnings
from dataclasses import asdict

import pytest
import torch

import minivar.flex_attention as flex_attention
from minivar.ar import AR
from minivar.mask import block_causal_mask
from minivar.studies import training_cost
from minivar.studies.complexity import block_sizes as blocks
from minivar.studies.training_cost import count
from minivar.tokenizer import Tokenizer, TokenizerConfig
from minivar.training.checkpoint import load_generator, save_checkpoint
from minivar.var import VAR, VARConfig
from tests.conftest import run_script, write_fake_cifar

CPU = torch.device("cpu")


def flex_or_skip(device, need_grad):
    why = flex_attention.flex_unavailable(device, need_grad)
    if why:
        pytest.skip(why)


def tiny(kind, n, attention="sdpa", seed=0):
    """A VAR over n×n maps (VAR's schedule) or an AR over one n×n map, adaLN not left at zero
    (at zero every block is the identity, and no mask could change the logits)."""
    torch.manual_seed(seed)
    scales = (n,) if kind == "ar" else training_cost.var_scales(n)
    cfg = VARConfig(scales=scales, vocab_size=32, latent_dim=8, dim=32, depth=2, heads=2, attention=attention)
    model = (AR if kind == "ar" else VAR)(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ada" in name:
                p.normal_(0, 0.05)
    if attention == "flex":
        flex_attention.use_flex(model)
    L = model.seq_len
    x = torch.randint(32, (2, L - 1)) if kind == "ar" else torch.randn(2, L - 1, 8)
    return model, x, torch.tensor([3, 10]), torch.randint(32, (2, L))


# --- counting ---

@pytest.mark.parametrize("variant", ["ar_causal", "var_dense", "var_flex"])
@pytest.mark.parametrize("n", [2, 3, 8, 16])
def test_allowed_pairs_are_the_mask_s_true_count(variant, n):
    c = count(variant, n, dim=32, depth=1)
    mask = block_causal_mask(blocks(variant, n))
    assert c["tokens"] == len(mask) and c["allowed_pairs"] == mask.sum()
    assert c["density"] == pytest.approx(mask.float().mean().item())
    if variant == "var_flex":  # whole tiles: at least the allowed pairs, at most all
        assert c["allowed_pairs"] <= c["computed_pairs"] <= len(mask) ** 2
    else:
        assert c["computed_pairs"] == {"var_dense": len(mask) ** 2, "ar_causal": c["allowed_pairs"]}[variant]


def test_worked_example_var_8x8():
    """Scales 1,2,3,4,5,6,8: blocks b = 1,4,9,16,25,36,64, prefixes P = 1,5,14,30,55,91,155, Σ b·P = 15198."""
    c = count("var_dense", 8, dim=1, depth=1, vocab=1, mlp_ratio=1)
    assert (c["tokens"], c["allowed_pairs"], c["computed_pairs"]) == (155, 15198, 155**2)
    assert c["attention_flops"] == 3 * 4 * 15198 and c["computed_attention_flops"] == 3 * 4 * 155**2
    assert count("ar_causal", 4, dim=1, depth=1)["allowed_pairs"] == 16 * 17 // 2


@pytest.mark.parametrize("variant, n", [("var_flex", 16), ("var_flex", 24), ("ar_flex", 16)])
def test_flex_computed_pairs_are_the_block_mask_s_tiles(variant, n):
    """What count() says FlexAttention computes is what its BlockMask schedules: every tile
    holding at least one allowed pair, at its full size."""
    if flex_attention.BlockMask is None:
        pytest.skip("this torch has no FlexAttention")
    tiles = flex_attention.flex_block_mask(tuple(blocks(variant, n)), CPU).to_dense()[0, 0].long()
    L = sum(blocks(variant, n))
    side = torch.tensor([min(training_cost.TILE, L - i) for i in range(0, L, training_cost.TILE)])
    c = count(variant, n, dim=32, depth=1)
    assert c["computed_pairs"] == int((tiles * side[:, None] * side[None, :]).sum())
    assert c["allowed_pairs"] < c["computed_pairs"] < L * L  # some tiles skipped, some partly wasted


# --- FlexAttention against the dense mask ---

@pytest.mark.slow  # compiles FlexAttention for two shapes: tens of seconds on a small CPU
@pytest.mark.parametrize("kind", ["var", "ar"])
def test_flex_and_dense_give_the_same_logits(kind):
    flex_or_skip(CPU, need_grad=False)
    model, x, labels, _ = tiny(kind, 12)
    flex_model = tiny(kind, 12, attention="flex")[0]  # the same weights (same seed)
    assert isinstance(flex_model.blocks[0].attn.attend, flex_attention.FlexAttend)
    with torch.no_grad():
        dense, flex = model(x, labels)[0], flex_model(x, labels)[0]
        assert flex_attention.flex_unavailable(CPU, need_grad=False) is None  # it ran: no fallback on the way
        for block in model.blocks:  # the test can fail: without the mask the logits change
            block.attn.attend = lambda q, k, v, attn_mask=None: torch.nn.functional.scaled_dot_product_attention(q, k, v)
        unmasked = model(x, labels)[0]
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=0)
    assert (unmasked - dense).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["var", "ar"])
def test_flex_and_dense_give_the_same_gradients(kind):
    """Needs a device where FlexAttention has a backward (CUDA; not CPU in torch 2.13)."""
    device = torch.device("cuda") if torch.cuda.is_available() else CPU
    flex_or_skip(device, need_grad=True)
    grads = {}
    for attention in ("sdpa", "flex"):
        model, x, labels, targets = tiny(kind, 12, attention=attention)
        model, x, labels, targets = model.to(device), x.to(device), labels.to(device), targets.to(device)
        logits, loss = model(x, labels, targets)
        loss.backward()
        grads[attention] = (logits.detach(), [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(grads["flex"][0], grads["sdpa"][0], atol=1e-5, rtol=0)
    for flex, dense in zip(grads["flex"][1], grads["sdpa"][1]):
        torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["var", "ar"])
def test_flex_training_on_cpu_falls_back_to_dense_with_one_warning(monkeypatch, kind):
    """The dense fallback uses the model's own mask: VAR's block-causal one, AR's lower-triangular one."""
    monkeypatch.setattr(flex_attention, "_warned", set())
    model, x, labels, targets = tiny(kind, 4)
    model(x, labels, targets)[1].backward()
    dense = [p.grad.clone() for p in model.parameters()]
    model = tiny(kind, 4, attention="flex")[0]
    with pytest.warns(UserWarning, match="no backward on cpu") as record:
        model(x, labels, targets)[1].backward()
        model(x, labels, targets)
    assert len(record) == 1
    for p, g in zip(model.parameters(), dense):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)


def test_when_torch_compile_raises_flex_falls_back_to_dense_with_one_warning(monkeypatch):
    monkeypatch.setitem(flex_attention._flex, "fn", None), monkeypatch.setitem(flex_attention._flex, "error", None)
    monkeypatch.setattr(flex_attention, "_warned", set())

    def broken_compile(*args, **kwargs):
        raise RuntimeError("torch.compile is not supported on this Python")
    monkeypatch.setattr(torch, "compile", broken_compile)
    model, x, labels, _ = tiny("var", 4, attention="flex")
    with torch.no_grad(), pytest.warns(UserWarning, match="torch.compile is unavailable") as record:
        flex = [model(x, labels)[0] for _ in range(2)]
    assert len(record) == 1
    with torch.no_grad():
        assert torch.equal(flex[0], tiny("var", 4)[0](x, labels)[0]) and torch.equal(flex[1], flex[0])


def test_when_compiling_fails_at_the_first_call_the_dense_mask_takes_over(monkeypatch):
    """A missing C++ compiler (CPU) or Triton (GPU) shows only when the compiled function first runs."""
    if flex_attention.BlockMask is None:
        pytest.skip("this torch has no FlexAttention")
    import torch._dynamo

    def fails(*args, **kwargs):
        raise torch._dynamo.exc.TorchDynamoException("no C++ compiler")
    monkeypatch.setitem(flex_attention._flex, "fn", fails), monkeypatch.setitem(flex_attention._flex, "error", None)
    monkeypatch.setattr(flex_attention, "_warned", set())
    model, x, labels, _ = tiny("ar", 4, attention="flex")
    with torch.no_grad(), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        flex = [model(x, labels)[0] for _ in range(2)]
        dense = tiny("ar", 4)[0](x, labels)[0]
    assert [str(w.message) for w in record] == ["attention='flex': compiling FlexAttention failed "
                                                "(TorchDynamoException); the dense mask is used instead"]
    torch.testing.assert_close(flex[0], dense, atol=1e-6, rtol=0)
    torch.testing.assert_close(flex[1], dense, atol=1e-6, rtol=0)


def test_auto_keeps_the_dense_path_where_flex_cannot_train():
    best, seconds, why = flex_attention.fastest_attention([1, 4, 9], heads=2, head_dim=16, batch=2, device=CPU)
    assert (best, seconds) == ("sdpa", {}) and "no backward on cpu" in why


@pytest.mark.parametrize("block_sizes", [[1] * 14, [1, 4, 9]])
def test_auto_times_both_paths_for_ar_and_var_where_flex_looks_available(monkeypatch, block_sizes):
    """Where FlexAttention has a backward (any CUDA GPU), --attention auto times it against the dense
    path; for AR's blocks of one token that path is SDPA's causal kernel (it once got a string as a mask)."""
    calls = []

    def fake_flex(q, k, v, block_mask):  # FlexAttention stands in: SDPA under the block mask's dense pattern
        calls.append(block_mask)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=block_causal_mask(block_sizes))
    monkeypatch.setattr(flex_attention, "flex_unavailable", lambda device, need_grad: None)
    monkeypatch.setattr(flex_attention, "flex_block_mask", lambda sizes, device: tuple(sizes))
    monkeypatch.setitem(flex_attention._flex, "fn", fake_flex), monkeypatch.setitem(flex_attention._flex, "error", None)
    best, seconds, why = flex_attention.fastest_attention(block_sizes, heads=2, head_dim=8, batch=2, device=CPU)
    assert why is None and best in ("sdpa", "flex") and set(seconds) == {"sdpa", "flex"}
    assert calls and all(c == tuple(block_sizes) for c in calls)


def test_unknown_attention_is_refused():
    with pytest.raises(ValueError, match="attention='fast'"):
        tiny("var", 3, attention="fast")


# --- the option through checkpoints ---

@pytest.mark.parametrize("attention", ["flex", None])  # None: a checkpoint from before the option existed
def test_attention_survives_a_checkpoint_round_trip(tmp_path, attention):
    var = tiny("var", 4)[0]
    tok = Tokenizer(TokenizerConfig(scales=var.cfg.scales, widths=(8, 16, 16), vocab_size=32, latent_dim=8))
    config = asdict(var.cfg) | {"attention": attention}
    if attention is None:
        del config["attention"]
    save_checkpoint({"kind": "var", "model_config": config, "model": var.state_dict(),
                     "tokenizer_config": asdict(tok.cfg), "tokenizer": tok.state_dict()}, tmp_path / "var.pt")
    model, _ = load_generator(tmp_path / "var.pt", CPU)
    assert model.cfg.attention == (attention or "sdpa")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), var.state_dict().values()))


# --- the benchmark ---

@pytest.mark.slow
def test_benchmark_writes_json_and_plot_and_reports_skips(tmp_path, capsys):
    """n = 2 is measured (each run in its own process); n = 3 is predicted to exceed --max-run-s."""
    flags = ["--grids", "2,3", "--batch-sizes", "1", "--dim", "16", "--depth", "1", "--heads", "2",
             "--attention", "ar_causal,var_dense", "--out-dir", str(tmp_path)]
    training_cost.main(flags + ["--max-run-s", "1e-9"])
    result = json.loads((tmp_path / "training_cost_cpu.json").read_text())
    assert (tmp_path / "training_cost_cpu.png").stat().st_size > 0
    for key in ("grids", "batch_sizes", "variants", "counted", "counted_slopes", "measured", "measured_slopes",
                "ratios", "machine", "command", "var_scales"):
        assert key in result, key
    rows = {(r["variant"], r["n"]): r for r in result["measured"]}
    assert len(rows) == 4
    for variant in ("ar_causal", "var_dense"):
        measured, skipped = rows[(variant, 2)], rows[(variant, 3)]
        assert measured["skipped"] is None and measured["train_s"] > 0 and measured["forward_s"] > 0
        assert measured["train_peak_mib"] > 0
        assert "--max-run-s" in skipped["skipped"] and skipped["train_s"] is None
    assert result["counted"]["var_dense"]["3"]["tokens"] == 14
    assert "skipped: predicted" in capsys.readouterr().out

    training_cost.main(flags + ["--max-memory-gib", "1e-9", "--grids", "5"])  # nothing fits; one n: no slopes
    result = json.loads((tmp_path / "training_cost_cpu.json").read_text())
    assert len(result["measured"]) == 2 and all("--max-memory-gib" in r["skipped"] for r in result["measured"])
    assert result["counted_slopes"] == {} and result["counted"]["var_dense"]["5"]["tokens"] == 55


@pytest.mark.parametrize("flags, message", [(["--grids", "0,8"], "positive integers"),
                                            (["--attention", "var_sparse"], "var_dense"),
                                            (["--dim", "30", "--heads", "4"], "divisible"),
                                            (["--max-run-s", "nan"], "finite")])
def test_bad_flags_are_one_line(flags, message, capsys):
    with pytest.raises(SystemExit) as exit:
        training_cost.main(flags)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_peak_bytes_sees_a_temporary():
    """The CPU measurement counts memory freed before the end: a 4 MB temporary shows."""
    def fn():
        x = torch.ones(1 << 20)  # 4 MiB
        return float(x.sum())
    assert training_cost.peak_bytes(fn, CPU) >= 4 << 20


@pytest.mark.slow  # trains a tiny tokenizer, then VAR and AR for two steps each: about a minute on 2 CPU cores
def test_train_attention_flag_reaches_var_and_ar_checkpoints(tmp_path):
    write_fake_cifar(tmp_path / "data" / "cifar-10-batches-py")
    env = {**os.environ, "MINIVAR_CIFAR_URL": "file:///nonexistent/cifar-10-python.tar.gz"}
    common = ["--preset", "tiny", "--data-dir", tmp_path / "data", "--out-dir", tmp_path / "out"]
    out = {}
    for stage, flags in [("tokenizer", ["--perceptual-weight", "0", "--adversarial-weight", "0"]),
                         ("var", ["--attention", "auto", "--max-steps", "2"]),
                         ("ar", ["--attention", "flex", "--max-steps", "2"])]:
        done = run_script("train.py", *common, "--stage", stage, *flags, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        out[stage] = done.stdout
    var, ar = (torch.load(tmp_path / "out" / f"{k}.pt", weights_only=True)["model_config"] for k in ("var", "ar"))
    assert f"--attention auto: {var['attention']} (" in out["var"]  # one line: the choice, and the times or why
    assert ar["attention"] == "flex"  # the flag applies to the AR stage too
