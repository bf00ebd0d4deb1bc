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


@pytest.mark.parametrize("mode", ["inpaint", "outpaint", "classedit"])
def test_kept_tokens_equal_the_source_at_every_scale_and_the_region_changes(mode):
    tok, var = tiny_models()
    torch.manual_seed(0)
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    labels = torch.tensor([2, 5, 2]) if mode == "classedit" else torch.tensor([1, 1, 1])
    box = (8, 8, 24, 24)
    edited, source_BL, keep_L = edit(var, tok, images, labels, box, mode, cfg_scale=1.0,
                                     generator=torch.Generator().manual_seed(0))
    # the same draw again, to read the tokens (decoding, then re-encoding, is lossy)
    idx_list = var.generate(tok.quantizer, labels, cfg_scale=1.0, generator=torch.Generator().manual_seed(0),
                            keep=(source_BL, keep_L[None].expand_as(source_BL)))
    result_BL = flatten_scales(idx_list)
    assert torch.equal(result_BL[:, keep_L], source_BL[:, keep_L])  # exactly, at every scale
    assert (result_BL[:, ~keep_L] != source_BL[:, ~keep_L]).any()  # the edited tokens were drawn anew
    assert 0 < keep_L.sum() < len(keep_L) and edited.shape == images.shape
    for scale, keep in zip(SCALES, split_scales(keep_L[None], SCALES)):  # each scale keeps and edits something
        if scale >= 4:
            assert keep.any() and (~keep).any()


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
