"""The sampler (sampling.py): temperature, top-k and top-p on fixed logits give exactly the
allowed set and the probabilities worked out here by hand, whatever the order of the logits;
the draw follows them; the KV cache returns every key and value stored so far."""
import itertools

import pytest
import torch

from minivar.sampling import KVCache, guided_logits, sample_tokens, sampling_probs

P = torch.tensor([0.5, 0.25, 0.15, 0.1])  # a distribution over 4 tokens
LOGITS = P.log()[None, None]  # 1×1×4: any constant could be added, the softmax is the same


def by_hand(p, temperature=1.0, keep=None):
    """p^(1/T), renormalised over the tokens `keep` (all if None)."""
    q = p ** (1 / temperature)
    if keep is not None:
        q = torch.where(torch.isin(torch.arange(len(p)), torch.tensor(keep)), q, torch.zeros(()))
    return q / q.sum()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_divides_the_logits(temperature):
    """softmax(log p / T) ∝ p^(1/T): T = 2 flattens [.5 .25 .15 .1] to [.370 .262 .203 .166]."""
    got = sampling_probs(LOGITS, temperature=temperature)[0, 0]
    assert torch.allclose(got, by_hand(P, temperature), atol=1e-6)
    if temperature == 2.0:
        assert torch.allclose(got, torch.tensor([0.3701, 0.2617, 0.2027, 0.1655]), atol=1e-4)


@pytest.mark.parametrize("top_k, keep", [(1, [0]), (2, [0, 1]), (3, [0, 1, 2]), (0, None), (4, None)])
def test_top_k_keeps_the_k_most_likely_tokens(top_k, keep):
    assert torch.allclose(sampling_probs(LOGITS, top_k=top_k)[0, 0], by_hand(P, keep=keep), atol=1e-6)


@pytest.mark.parametrize("top_p, keep", [(0.3, [0]), (0.5, [0]), (0.74, [0, 1]), (0.76, [0, 1, 2]),
                                         (0.95, [0, 1, 2, 3])])
def test_top_p_keeps_the_smallest_set_whose_mass_reaches_p(top_p, keep):
    """Cumulative mass in order: 0.5, 0.75, 0.9, 1.0. The set stops at the first token that reaches top_p."""
    assert torch.allclose(sampling_probs(LOGITS, top_p=top_p)[0, 0], by_hand(P, keep=keep), atol=1e-6)


def test_temperature_comes_before_top_p_and_top_k_before_top_p():
    """At T = 2 the cumulative mass is 0.370, 0.632, 0.835: top-p 0.7 keeps three tokens (two at T = 1).
    After top-k 2, top-p works on the renormalised pair (2/3, 1/3): top-p 0.6 keeps one."""
    assert torch.allclose(sampling_probs(LOGITS, temperature=2.0, top_p=0.7)[0, 0],
                          by_hand(P, 2.0, keep=[0, 1, 2]), atol=1e-6)
    assert torch.allclose(sampling_probs(LOGITS, top_k=2, top_p=0.6)[0, 0], by_hand(P, keep=[0]), atol=1e-6)


FILTERS = [  # (settings, the tokens they keep, the temperature), all worked out above on P in sorted order
    (dict(temperature=2.0), None, 2.0), (dict(top_k=1), [0], 1.0), (dict(top_k=2), [0, 1], 1.0),
    (dict(top_k=3), [0, 1, 2], 1.0), (dict(top_p=0.3), [0], 1.0), (dict(top_p=0.74), [0, 1], 1.0),
    (dict(top_p=0.76), [0, 1, 2], 1.0), (dict(temperature=2.0, top_p=0.7), [0, 1, 2], 2.0),
    (dict(top_k=2, top_p=0.6), [0], 1.0), (dict(top_k=3, top_p=0.74), [0, 1], 1.0),
]


@pytest.mark.parametrize("settings, keep, temperature", FILTERS,
                         ids=["-".join(f"{k}={v}" for k, v in f[0].items()) for f in FILTERS])
def test_every_filter_follows_the_tokens_whatever_their_order_in_the_vocabulary(settings, keep, temperature):
    """Real logits are not sorted. Position i holds P's tokens in the i-th of all 24 orders of 4:
    its probabilities must be the hand-worked ones of the sorted case, put in that same order."""
    orders = torch.tensor(list(itertools.permutations(range(4))))  # 24×4
    logits = P.log()[orders][None]  # 1×24×4: token j of position i has probability P[orders[i, j]]
    expected = by_hand(P, temperature, keep)[orders][None]
    assert torch.allclose(sampling_probs(logits, **settings), expected, atol=1e-6)


def test_every_position_has_its_own_distribution():
    logits = torch.stack([P.log(), P.flip(0).log()])[None]  # 1×2×4: the second position prefers token 3
    probs = sampling_probs(logits, top_k=1)
    assert probs[0, 0].argmax() == 0 and probs[0, 1].argmax() == 3 and torch.equal(probs.sum(-1), torch.ones(1, 2))


def test_the_draw_follows_the_filtered_distribution():
    """The draw is torch.multinomial on exactly these probabilities: the same seed gives the same
    tokens, and over many draws the frequencies approach them."""
    logits = LOGITS.expand(1, 20_000, 4)
    expected = by_hand(P, 2.0, keep=[0, 1, 2])
    drawn = sample_tokens(logits, temperature=2.0, top_p=0.7, generator=torch.Generator().manual_seed(0))
    again = torch.multinomial(expected.expand(20_000, 4), 1, generator=torch.Generator().manual_seed(0)).view(1, -1)
    assert torch.equal(drawn, again)
    frequencies = torch.bincount(drawn.flatten(), minlength=4) / drawn.numel()
    assert torch.allclose(frequencies, expected, atol=0.015) and frequencies[3] == 0


def test_guidance_mixes_as_one_plus_w_times_cond_minus_w_times_uncond():
    cond, uncond = torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[3.0, -1.0]]])
    stacked = torch.cat([cond, uncond])
    assert torch.equal(guided_logits(stacked, 0.0), cond)
    assert torch.allclose(guided_logits(stacked, 2.0), torch.tensor([[[3 * 1.0 - 2 * 3.0, 3 * 2.0 - 2 * -1.0]]]))


def test_kv_cache_returns_everything_stored_so_far_in_order():
    cache = KVCache(max_len=6)
    blocks = [torch.full((1, 1, n, 2), float(i)) for i, n in enumerate([1, 2, 3])]
    for i, block in enumerate(blocks):
        k, v = cache.append(block, -block)
        assert torch.equal(k, torch.cat(blocks[:i + 1], dim=2)) and torch.equal(v, -k)
    assert cache.len == 6
