"""Zero-shot editing (editing.py) and rejection sampling by the implicit classifier (rejection.py)."""
import pytest
import torch

from minivar.applications.editing import edit, edit_region, keep_mask
from minivar.applications.rejection import generate_best_of, implicit_classifier_score
from minivar.quantizer import flatten_scales, split_scales
from tests.test_ar import tiny_ar
from tests.test_var import tiny_models as tiny_models_at

SCALES = (1, 2, 4, 8)  # images in, so the last map is the tokenizer's 8×8 latent


def tiny_models():
    return tiny_models_at(scales=SCALES)


def test_keep_mask_keeps_tokens_mostly_outside_the_region():
    region = edit_region((16, 0, 32, 32))  # the right half
    keep = split_scales(keep_mask((1, 2, 4), region)[None], (1, 2, 4))
    assert keep[0].tolist() == [[[False]]]  # 1×1: half its cell is edited, so it is regenerated
    assert keep[1][0].tolist() == [[True, False], [True, False]]
    assert keep[2][0, 0].tolist() == [True, True, False, False]


def kept_by_hand(scales, box, mode, side=32):
    """Per scale, token (i, j) keeps the source's value iff less than half of its pixel cell is
    redrawn: the box (inpaint, classedit) or everything but the box (outpaint)."""
    x0, y0, x1, y1 = box
    keep = []
    for s in scales:
        cell = side // s
        for i in range(s):  # rows
            for j in range(s):
                inside = max(0, min(x1, (j + 1) * cell) - max(x0, j * cell)) * \
                    max(0, min(y1, (i + 1) * cell) - max(y0, i * cell))
                redrawn = inside if mode != "outpaint" else cell * cell - inside
                keep.append(redrawn / (cell * cell) < 0.5)
    return torch.tensor(keep)


@pytest.mark.parametrize("mode", ["inpaint", "outpaint", "classedit"])
def test_what_edit_returns_keeps_the_source_wherever_the_mask_says_and_redraws_the_rest(mode):
    """The tokens edit() itself returns, not a second call of generate: kept ones equal the
    source image's own tokens at every scale, the others are drawn anew, the images are
    the decoded tokens."""
    tok, var = tiny_models()
    torch.manual_seed(0)
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    labels = torch.tensor([2, 5, 2]) if mode == "classedit" else torch.tensor([1, 1, 1])
    box = (8, 8, 24, 24)
    result = edit(var, tok, images, labels, box, mode, cfg_scale=1.0, generator=torch.Generator().manual_seed(0))
    keep_L = kept_by_hand(SCALES, box, mode)
    source_BL = flatten_scales(tok.encode(images))
    assert torch.equal(result.keep_L, keep_L) and torch.equal(result.source_BL, source_BL)
    assert torch.equal(result.tokens_BL[:, keep_L], source_BL[:, keep_L])  # exactly, at every scale
    changed = result.tokens_BL != source_BL
    for scale, redrawn in zip(SCALES, split_scales(changed, SCALES)):
        keep = split_scales(keep_L[None], SCALES)[SCALES.index(scale)]
        if not keep.all():  # every scale with a region to redraw has new tokens in it
            assert redrawn[:, ~keep[0]].any(), scale
    assert torch.allclose(result.images, tok.decode(split_scales(result.tokens_BL, SCALES)))


def test_editing_refuses_the_raster_ar_model():
    tok, _ = tiny_models()
    ar, _ = tiny_ar()
    with pytest.raises(ValueError, match="continue a prefix"):
        edit(ar, tok, torch.zeros(1, 3, 32, 32), torch.tensor([0]), (8, 8, 24, 24), "inpaint")


def test_a_bad_box_or_mode_is_refused():
    tok, var = tiny_models()
    with pytest.raises(ValueError, match="box"):
        edit(var, tok, torch.zeros(1, 3, 32, 32), torch.tensor([0]), (8, 8, 40, 24), "inpaint")
    with pytest.raises(ValueError, match="inpaint, outpaint, classedit"):
        edit(var, tok, torch.zeros(1, 3, 32, 32), torch.tensor([0]), (8, 8, 24, 24), "paint")


def test_rejection_with_one_candidate_is_plain_sampling():
    tok, var = tiny_models()
    labels = torch.tensor([0, 3, 3, 9])
    plain = var.generate(tok.quantizer, labels, cfg_scale=1.5, generator=torch.Generator().manual_seed(4))
    kept, scores = generate_best_of(var, tok.quantizer, labels, 1, cfg_scale=1.5, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(plain, kept)) and scores.shape == (4, 1)


@pytest.mark.parametrize("which", ["var", "ar"])
def test_rejection_keeps_the_candidate_with_the_highest_score(which):
    tok, var = tiny_models()
    model, quantizer = (var, tok.quantizer) if which == "var" else tiny_ar()
    labels = torch.tensor([1, 6, 6])
    kept, scores = generate_best_of(model, quantizer, labels, 5, cfg_scale=1.0, generator=torch.Generator().manual_seed(2))
    assert scores.shape == (3, 5) and scores.std() > 0
    kept_scores = implicit_classifier_score(model, quantizer, kept, labels)
    assert torch.allclose(kept_scores, scores.max(1).values, atol=1e-4)


def test_implicit_classifier_score_is_the_conditional_minus_unconditional_log_likelihood():
    tok, var = tiny_models()
    idx_list = var.generate(tok.quantizer, torch.tensor([2, 7]), generator=torch.Generator().manual_seed(0))
    tokens = flatten_scales(idx_list)
    x = var.teacher_forcing_inputs(tok.quantizer, tokens)
    log_p = lambda labels: var(x, labels)[0].log_softmax(-1).gather(-1, tokens[..., None])[..., 0].sum(1)
    expected = log_p(torch.tensor([2, 7])) - log_p(torch.tensor([10, 10]))
    assert torch.allclose(implicit_classifier_score(var, tok.quantizer, idx_list, torch.tensor([2, 7])), expected, atol=1e-4)
