"""Token maps as training data: tokenize CIFAR-10 once, keep the result.

VAR trains on the frozen tokenizer's token maps. Re-encoding every image at every step
would waste most of a CPU's time, so each split is encoded once (training images in
both orientations: the flip augmentation, precomputed) and cached on disk in the
output folder, keyed by everything the tokens depend on: the tokenizer's settings and
weights, and every image and label of both splits. (Hashing all of CIFAR-10, 184 MB, takes
0.1-0.3 s on 2 CPU cores, measured roughly beside other jobs: far less than tokenizing, and a
relabelled or edited image anywhere in the data is never trained on with its old tokens.)

A sample's K token maps are stored flattened and concatenated (row-major within a
scale, coarse to fine): one row of L = Σ s_k² ints, the same order as VAR's sequence.
"""
import hashlib
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from minivar.data import to_float
from minivar.quantizer import flatten_scales
from minivar.training.checkpoint import CheckpointError, read_verified, save_checkpoint
from minivar.training.files import remove_stale_temporaries


@torch.no_grad()
def tokenize(tokenizer, images_uint8, device, flip=False, batch_size=500, desc="tokenizing", progress=True):
    """Encode uint8 images (optionally mirrored) into B×L int16 token rows, on the CPU."""
    rows = []
    for i in tqdm(range(0, len(images_uint8), batch_size), desc=desc, leave=False, disable=not progress):
        x = to_float(images_uint8[i:i + batch_size].to(device))
        rows.append(flatten_scales(tokenizer.encode(x.flip(3) if flip else x)).to(torch.int16).cpu())
    return torch.cat(rows)


def cache_key(tokenizer, train_data, test_data):
    """A hash of what the tokens depend on: the tokenizer (settings and weights) and both splits whole."""
    key = hashlib.sha256(repr(asdict(tokenizer.cfg)).encode())
    for tensor in [*tokenizer.state_dict().values(), *train_data, *test_data]:
        tensor = tensor.detach().cpu().contiguous()
        key.update(f"{tuple(tensor.shape)} {tensor.dtype};".encode())  # so that no two arrays hash alike by layout
        key.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the bytes themselves, not a copy of them
    return key.hexdigest()[:12]


def cached_tokens(tokenizer, cache_dir, train_data, test_data, device):
    """(train tokens of both flips, their labels, test tokens, test labels), cached on disk."""
    cache = Path(cache_dir) / f"tokens-{cache_key(tokenizer, train_data, test_data)}.pt"
    remove_stale_temporaries(cache)  # a killed write's leftovers: once the cache exists, no write would remove them
    if cache.is_file():
        try:
            cached = read_verified(cache)
            check_tokens(cached, tokenizer.cfg, len(train_data[0]), len(test_data[0]))
            return cached
        except (CheckpointError, ValueError) as e:  # cut short, damaged, or not what it should hold: only a cache
            print(f"note: the token cache {cache} is damaged ({e}); rebuilding it", file=sys.stderr)
    elif others := sorted(p.name for p in cache.parent.glob("tokens-*.pt")):
        print(f"note: {', '.join(others)} in {cache.parent}: made by another tokenizer or from other data; tokenizing "
              f"anew into {cache.name}", file=sys.stderr)
    was_training = tokenizer.training
    tokenizer.eval()
    (train_x, train_y), (test_x, test_y) = train_data, test_data
    train = torch.cat([tokenize(tokenizer, train_x, device, desc="tokenizing train"),
                       tokenize(tokenizer, train_x, device, flip=True, desc="tokenizing train, flipped")])
    result = (train, torch.cat([train_y, train_y]), tokenize(tokenizer, test_x, device, desc="tokenizing test"), test_y)
    tokenizer.train(was_training)
    save_checkpoint(result, cache)  # atomic write, like every checkpoint
    return result


def check_tokens(cached, tokenizer_cfg, n_train, n_test):
    """Raise ValueError unless `cached` is what cached_tokens writes for this tokenizer and data:
    token rows of the right length with ids inside the codebook, labels of the 10 classes."""
    L, V = sum(s * s for s in tokenizer_cfg.scales), tokenizer_cfg.vocab_size
    if not (isinstance(cached, tuple) and len(cached) == 4 and all(isinstance(t, torch.Tensor) for t in cached)):
        raise ValueError("not four tensors")
    train, train_y, test, test_y = cached
    if train.shape != (2 * n_train, L) or test.shape != (n_test, L) or train_y.shape != (2 * n_train,) or \
            test_y.shape != (n_test,):
        raise ValueError("shapes that do not fit the data")
    for ids, high, what in ((train, V, "token ids"), (test, V, "token ids"), (train_y, 10, "labels"),
                            (test_y, 10, "labels")):
        if ids.is_floating_point() or len(ids) and not (0 <= int(ids.min()) and int(ids.max()) < high):
            raise ValueError(f"{what} outside 0..{high - 1}")
