"""The token cache VAR trains on (training/tokens.py): the training images' tokens, then the tokens
of the same images mirrored left to right (the flip augmentation, precomputed), each row with the
label of its image; the test images' tokens as they are. Checked against a tiny random tokenizer's
own encoding of images converted and mirrored here by hand."""
import torch

from minivar.quantizer import flatten_scales
from minivar.tokenizer import Tokenizer, TokenizerConfig
from minivar.training.tokens import cached_tokens, tokenize

SCALES = (1, 2, 4, 8)


def tiny_tokenizer():
    torch.manual_seed(0)
    return Tokenizer(TokenizerConfig(scales=SCALES, widths=(8, 16, 16), vocab_size=32, latent_dim=8)).eval()


def images(n, seed):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def tokens_by_hand(tokenizer, images_uint8):
    """uint8 [0, 255] -> [-1, 1] as v / 127.5 - 1, then the tokenizer's maps, flattened coarse to fine."""
    return flatten_scales(tokenizer.encode(images_uint8.float() / 127.5 - 1)).to(torch.int16)


def left_right(images_uint8):
    """Column j of every row becomes column 31 - j."""
    return images_uint8[..., torch.arange(31, -1, -1)]


def test_flipped_half_is_the_tokens_of_the_mirrored_images_with_their_labels(tmp_path):
    tok = tiny_tokenizer()
    train_x, train_y = images(6, seed=1), torch.tensor([3, 1, 4, 0, 5, 9])  # distinct labels: any reordering shows
    test_x, test_y = images(3, seed=2), torch.tensor([7, 2, 6])
    train, labels, test, labels_test = cached_tokens(tok, tmp_path, (train_x, train_y), (test_x, test_y), "cpu")
    plain, mirrored = tokens_by_hand(tok, train_x), tokens_by_hand(tok, left_right(train_x))
    upside_down = tokens_by_hand(tok, train_x.flip(2))
    assert not torch.equal(mirrored, plain) and not torch.equal(mirrored, upside_down)  # the test can tell them apart
    assert train.dtype == torch.int16 and train.shape == (12, sum(s * s for s in SCALES))
    assert torch.equal(train[:6], plain) and torch.equal(train[6:], mirrored)
    assert labels.tolist() == [3, 1, 4, 0, 5, 9] * 2  # row i + 6 is image i mirrored: the same label
    assert torch.equal(test, tokens_by_hand(tok, test_x)) and labels_test.tolist() == [7, 2, 6]  # never flipped


def test_tokenize_keeps_the_order_of_the_images_across_batches():
    tok = tiny_tokenizer()
    x = images(5, seed=3)
    got = tokenize(tok, x, "cpu", flip=True, batch_size=2, progress=False)  # batches of 2, 2 and 1
    assert torch.equal(got, tokens_by_hand(tok, left_right(x)))
