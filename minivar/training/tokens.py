"""Token maps as training data: tokenize CIFAR-10 once, keep the result.

VAR trains on the frozen tokenizer's token maps. Re-encoding every image at every step
would waste most of a CPU's time, so each split is encoded once (training images in
both orientations: the flip augmentation, precomputed) and cached on disk in the
output folder, keyed by the tokenizer's weights and the data.

A sample's K token maps are stored flattened and concatenated (row-major within a
scale, coarse to fine): one row of L = Σ s_k² ints, the same order as VAR's sequence.
"""
import hashlib
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from minivar.data import to_float
from minivar.quantizer import flatten_scales
from minivar.training.checkpoint import save_checkpoint


@torch.no_grad()
def tokenize(tokenizer, images_uint8, device, flip=False, batch_size=500, desc="tokenizing"):
    """Encode uint8 images (optionally mirrored) into B×L int16 token rows, on the CPU."""
    rows = []
    for i in tqdm(range(0, len(images_uint8), batch_size), desc=desc, leave=False):
        x = to_float(images_uint8[i:i + batch_size].to(device))
        rows.append(flatten_scales(tokenizer.encode(x.flip(3) if flip else x)).to(torch.int16).cpu())
    return torch.cat(rows)


def cached_tokens(tokenizer, cache_dir, train_data, test_data, device):
    """(train tokens of both flips, their labels, test tokens, test labels), cached on disk."""
    fingerprint = hashlib.sha1()  # new tokenizer weights or new data: a new cache file
    for tensor in list(tokenizer.state_dict().values()) + [train_data[0][:64], test_data[0][:64]]:
        fingerprint.update(tensor.detach().cpu().numpy().tobytes())
    fingerprint.update(f"{len(train_data[0])},{len(test_data[0])}".encode())
    cache = Path(cache_dir) / f"tokens-{fingerprint.hexdigest()[:12]}.pt"
    if cache.is_file():
        try:
            return torch.load(cache, weights_only=True)
        except Exception:  # cut short or damaged: it is only a cache
            print(f"note: the token cache {cache} is damaged; rebuilding it", file=sys.stderr)
    was_training = tokenizer.training
    tokenizer.eval()
    (train_x, train_y), (test_x, test_y) = train_data, test_data
    train = torch.cat([tokenize(tokenizer, train_x, device, desc="tokenizing train"),
                       tokenize(tokenizer, train_x, device, flip=True, desc="tokenizing train, flipped")])
    result = (train, torch.cat([train_y, train_y]), tokenize(tokenizer, test_x, device, desc="tokenizing test"), test_y)
    tokenizer.train(was_training)
    save_checkpoint(result, cache)  # atomic write, like every checkpoint
    return result
