"""minivar.studies.complexity: the counted work of the four samplers, checked against the real samplers."""
import json
from functools import partial

import pytest
import torch

from minivar.mask import block_causal_mask
from minivar.studies.complexity import SAMPLERS, count, fit_slope, generate_without_cache, random_model, var_scales
from tests.conftest import run_script


def test_var_scales_reproduce_the_papers_schedules():
    assert var_scales(8) == (1, 2, 3, 4, 5, 6, 8)
    assert var_scales(16) == (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    assert var_scales(1) == (1,) and var_scales(32)[-1] == 32


def pairs_from_masks(sampler, n):
    """Brute force: build each step's mask and count the allowed (query, key) pairs it runs."""
    scales = (n,) if sampler.startswith("ar") else var_scales(n)
    blocks = [1] * n * n if sampler.startswith("ar") else [s * s for s in scales]
    mask = block_causal_mask(blocks)
    total, end = 0, 0
    for b in blocks:
        end += b
        rows = slice(end - b, end) if sampler.endswith("_cache") else slice(0, end)  # new tokens / the whole prefix
        total += int(mask[rows, :end].sum())
    return total


def pairs_in_generate(sampler, n, monkeypatch):
    """Brute force on the real sampler: count the pairs every attention call computes."""
    model, quantizer = random_model(sampler, n, dim=16, depth=2, heads=2, ratio=1.25, device=torch.device("cpu"))
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(q, k, v, attn_mask=None, is_causal=False):
        L, S = q.shape[-2], k.shape[-2]
        seen.append(int(attn_mask.sum()) if attn_mask is not None else L * (L + 1) // 2 if is_causal else L * S)
        return sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    for block in model.blocks:  # (a full pass calls the function each layer holds: VAR's is SDPA itself)
        if block.attn.attend is sdpa:
            block.attn.attend = counting_sdpa
    with torch.no_grad():
        sample = model.generate if sampler.endswith("_cache") else partial(generate_without_cache, model)
        sample(quantizer, torch.tensor([1]))
    return sum(seen) // model.cfg.depth  # one call per layer per step


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_counted_attention_equals_brute_force(sampler, n, monkeypatch):
    counted = count(sampler, n)["attention_pairs"]
    assert counted == pairs_from_masks(sampler, n)
    assert counted == pairs_in_generate(sampler, n, monkeypatch)


def test_closed_forms_for_ar():
    N = 100  # n = 10
    assert count("ar_cache", 10)["attention_pairs"] == N * (N + 1) // 2
    assert count("ar_nocache", 10)["attention_pairs"] == sum(k * (k + 1) // 2 for k in range(1, N + 1))
    assert count("ar_cache", 10)["steps"] == N and count("var_cache", 16)["steps"] == 10


@pytest.mark.parametrize("sampler, tokens, pairs", [("var_cache", 1 + 4, 1 * 1 + 4 * 5),
                                                     ("var_nocache", 1 + 5, 1 * 1 + (1 * 1 + 4 * 5))])
def test_tokens_and_flops_of_a_2x2_map_by_hand(sampler, tokens, pairs):
    """n = 2: scales 1 and 2, steps of 1 and 4 tokens. With a cache step 2 runs its 4 tokens against 5
    keys; without one it reruns all 5 under the mask. A token costs 2 FLOPs per weight of each layer
    (qkv 3·D², projection D², MLP up and down 2·4·D²), a pair 2·D for q·k and 2·D for the sum of v;
    the head makes V logits for each of the 1 + 4 new tokens."""
    D, depth, V = 2, 3, 5
    counted = count(sampler, 2, dim=D, depth=depth, vocab=V)
    linear = 2 * (3 * D * D + D * D + 2 * 4 * D * D) * depth * tokens + 2 * D * V * 5
    attention = 4 * D * depth * pairs
    assert counted == {"steps": 2, "tokens": tokens, "attention_pairs": pairs, "attention_flops": attention,
                       "linear_flops": linear, "total_flops": attention + linear}


def test_attention_slopes_are_6_4_4_4():
    ns = [8, 12, 16, 24, 32, 48, 64]
    slopes = {s: fit_slope(ns, [count(s, n)["attention_flops"] for n in ns]) for s in SAMPLERS}
    for sampler, expected in zip(SAMPLERS, (6, 4, 4, 4)):
        assert abs(slopes[sampler] - expected) <= 0.3, slopes


def test_fit_slope_recovers_a_power():
    assert fit_slope([2, 4, 8], [3 * n ** 2.5 for n in (2, 4, 8)]) == pytest.approx(2.5)


@pytest.mark.slow
def test_cli_writes_table_json_and_plot(tmp_path):
    result = run_script("-m", "minivar.studies.complexity", "--grids", "2,3,4", "--batch-sizes", "1,2", "--dim", "16",
                        "--depth", "1", "--heads", "2", "--device", "cpu", "--out-dir", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((tmp_path / "complexity_cpu.json").read_text())
    assert (tmp_path / "complexity_cpu.png").stat().st_size > 10_000
    assert len(data["measured"]) == 3 * 2 * 4 and all(r["seconds"] > 0 for r in data["measured"])
    assert set(data["measured_slopes"]) == {f"{s}_b{b}" for s in SAMPLERS for b in (1, 2)}
    assert "ar_cache" in result.stdout and "slopes" in result.stdout


@pytest.mark.slow
def test_cli_bad_grid_is_one_line(tmp_path):
    result = run_script("-m", "minivar.studies.complexity", "--grids", "4,x", "--out-dir", tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr and "--grids 4,x" in result.stderr
