"""How a generator is scored while it trains (training/evaluation.py): the cross-entropy per scale
and overall (each scale weighted by its s² tokens), over batches of any size, and the unigram floor
beside it, worked out here with plain torch on a tiny model."""
import math

import pytest
import torch

from minivar.training import evaluation  # its test_cross_entropy is not a test: not imported by name
from tests.test_var import SCALES, tiny_models

L = sum(s * s for s in SCALES)  # 30 tokens a row: blocks of 1, 4, 9, 16


def test_unigram_entropy_is_each_scales_token_frequencies_in_nats():
    """Scales 1 and 2 on two rows. 1×1: tokens 0 and 1, once each: ln 2. 2×2: token 1 six times, token 2
    twice: −(¾ ln ¾ + ¼ ln ¼) = 0.5623."""
    rows = torch.tensor([[0, 1, 1, 2, 2], [1, 1, 1, 1, 1]], dtype=torch.int16)
    got = evaluation.unigram_entropy_per_scale(rows, (1, 2), vocab_size=4)
    assert got == pytest.approx([math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))])
    assert got[1] == pytest.approx(0.562335, abs=1e-6)


def test_cross_entropy_per_scale_and_overall_over_uneven_batches():
    tok, var = tiny_models()
    g = torch.Generator().manual_seed(5)
    tokens, labels = torch.randint(32, (5, L), generator=g).to(torch.int16), torch.tensor([0, 3, 9, 3, 1])
    got = evaluation.test_cross_entropy(var, tok, tokens, labels, torch.device("cpu"), batch_size=2)  # 2, 2, 1
    with torch.no_grad():
        logits = var(var.teacher_forcing_inputs(tok.quantizer, tokens.long()), labels)[0]
    nll_NL = -logits.log_softmax(-1).gather(-1, tokens.long()[..., None])[..., 0]  # by hand: −log p(token)
    starts = [0, 1, 5, 14, 30]
    per_scale = [nll_NL[:, a:b].mean().item() for a, b in zip(starts, starts[1:])]
    assert got["ce_per_scale"] == pytest.approx(per_scale, abs=1e-5)
    assert got["ce"] == pytest.approx(nll_NL.mean().item(), abs=1e-5)  # every token counts once
    unigram = evaluation.unigram_entropy_per_scale(tokens, SCALES, 32)
    assert got["unigram_per_scale"] == unigram
    assert got["unigram"] == pytest.approx(sum(u * s * s / L for u, s in zip(unigram, SCALES)))
