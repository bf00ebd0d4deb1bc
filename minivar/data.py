"""CIFAR-10: find it, download it if needed, hold it in memory, serve batches.

- Layout: the official "CIFAR-10 python version" (data_batch_1..5, test_batch,
  batches.meta) inside `<data_dir>/cifar-10-batches-py/`.
- Download: the official tarball, md5-checked, extracted into a temporary folder and
  renamed into place, so an interrupted or corrupt download never leaves a broken
  data directory behind (nor an empty one).
- Reading: the batches are pickles, and a pickle can run code. They are read with an
  unpickler that builds only what the format holds (dicts, lists, strings, numbers and
  numpy arrays), then checked (keys, dtype, shape, labels); each file is also compared with
  the official checksums, which re-encoded copies fail, so a mismatch is only a notice.
- Batches: the whole split lives on the device as uint8 (150 MB for train). The
  order of every epoch is a fixed function of (seed, epoch) and the flips of a batch
  a fixed function of (seed, step): resuming at step t gives exactly the batches an
  uninterrupted run would have seen, with no loader state to save. (EpochSampler does
  the same for the cached token maps that VAR trains on.)
Left out: other datasets, augmentations beyond horizontal flips, worker processes
(nothing to load once the split is in memory).
"""
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

# MINIVAR_CIFAR_URL points the downloader at a mirror (the md5 is still checked).
CIFAR_URL = os.environ.get("MINIVAR_CIFAR_URL", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR_FOLDER = "cifar-10-batches-py"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLIT_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
OFFICIAL_MD5 = {"data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
                "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
                "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e"}
_checked = set()  # (folder, file) pairs already compared with OFFICIAL_MD5 in this process


class DataError(Exception):
    """Missing or unreadable data, said in one line with what to do about it."""


def cifar_folder(data_dir) -> Path:
    """The folder holding the batch files: `data_dir/cifar-10-batches-py`, or data_dir itself."""
    data_dir = Path(data_dir)
    if (data_dir / "batches.meta").is_file():
        return data_dir
    return data_dir / CIFAR_FOLDER


def download_cifar10(data_dir, url: str = CIFAR_URL, md5: str = CIFAR_MD5) -> Path:
    """Download and extract the official tarball into data_dir; returns the batch folder.
    Folders it had to create are removed again if the download fails."""
    data_dir = Path(data_dir)
    created = [p for p in [data_dir, *data_dir.parents] if not p.exists()]
    try:
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=data_dir, prefix=".download-"):
                pass  # can we write here at all? (before a 170 MB download, not after)
        except OSError as e:
            raise DataError(f"CIFAR-10 is not in {data_dir} and cannot be downloaded there ({e.strerror or e}): pass "
                            f"--data-dir to a folder you can write, or copy the official 'cifar-10-batches-py' "
                            f"folder into {data_dir}") from None
        with tempfile.TemporaryDirectory(dir=data_dir, prefix=".download-") as tmp:
            tarball = Path(tmp) / "cifar-10-python.tar.gz"
            try:
                with urllib.request.urlopen(url, timeout=30) as response, open(tarball, "wb") as out:
                    total = int(response.headers.get("Content-Length", 0)) or None
                    with tqdm(total=total, unit="B", unit_scale=True, desc="downloading CIFAR-10") as bar:
                        while chunk := response.read(1 << 20):
                            out.write(chunk)
                            bar.update(len(chunk))
            except OSError as e:  # URLError, timeouts, refused connections are all OSErrors
                raise DataError(f"could not download CIFAR-10 from {url} ({getattr(e, 'reason', e)}); "
                                f"without internet, copy the 'cifar-10-batches-py' folder of the official "
                                f"python release into {data_dir} or pass --data-dir to where it is") from None
            digest = hashlib.md5(tarball.read_bytes()).hexdigest()
            if digest != md5:
                raise DataError(f"downloaded CIFAR-10 has md5 {digest}, expected {md5}: the download is corrupt; "
                                f"run again to retry")
            with tarfile.open(tarball) as tar:
                tar.extractall(tmp, filter="data")
            shutil.move(str(Path(tmp) / CIFAR_FOLDER), str(data_dir / CIFAR_FOLDER))  # whole folder or nothing
    except BaseException:
        for folder in created:  # innermost first: only the folders this call made, if still empty
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    return data_dir / CIFAR_FOLDER


class _BatchUnpickler(pickle.Unpickler):
    """Builds only what a CIFAR-10 batch holds; any other class (os.system, say) is refused."""
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR-10 batch never holds")
        return super().find_class(module, name)


def read_batch(path: Path):
    """(images uint8 N×3×32×32, labels int64 N) of one batch file, read safely and checked."""
    with open(path, "rb") as f:
        batch = _BatchUnpickler(f, encoding="bytes").load()
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError("it is not a dict with b'data' and b'labels'")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"its data is {getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}, "
                         "not uint8 N×3072")
    if labels.shape != (len(data),) or len(data) == 0 or labels.dtype.kind not in "iu" or \
            labels.min() < 0 or labels.max() >= len(CLASSES):
        raise ValueError(f"its labels are not {len(data)} integers from 0 to {len(CLASSES) - 1}")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels.astype(np.int64))


def check_official(folder: Path, names):
    """One notice per split, once per file and process, if its files are not byte for byte the official ones."""
    names = [n for n in names if (folder, n) not in _checked]
    _checked.update((folder, n) for n in names)
    differ = [n for n in names if hashlib.md5((folder / n).read_bytes()).hexdigest() != OFFICIAL_MD5.get(n)]
    if differ:
        print(f"note: CIFAR-10's {', '.join(differ)} {'differs' if len(differ) == 1 else 'differ'} from the official "
              "release (md5); used as they are (re-encoded copies exist)")  # a notice on stdout: stderr is for errors


def load_cifar10(data_dir, split: str, download: bool = True):
    """Return (images uint8 N×3×32×32, labels int64 N) for split 'train' or 'test'."""
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(f"--data-dir {data_dir} is a file, not a folder")
    folder = cifar_folder(data_dir)
    if not folder.is_dir():
        if not download:
            raise DataError(f"CIFAR-10 not found in {data_dir} (expected {folder}/); "
                            f"pass --data-dir to a folder holding cifar-10-batches-py")
        folder = download_cifar10(data_dir)
    images, labels = [], []
    for name in SPLIT_FILES[split]:
        path = folder / name
        try:
            x, y = read_batch(path)
        except FileNotFoundError:
            raise DataError(f"{path} is missing: {folder} is not a complete CIFAR-10 copy; "
                            f"delete it to download again, or pass --data-dir to a complete one") from None
        except Exception as e:  # refused, truncated, or not what the format holds
            raise DataError(f"{path} is not a valid CIFAR-10 batch: {e}; delete {folder} to download again, "
                            f"or pass --data-dir to a good copy") from None
        images.append(x)
        labels.append(y)
    check_official(folder, SPLIT_FILES[split])
    return torch.cat(images), torch.cat(labels)


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the range the tokenizer works in."""
    return images_uint8.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], for saving and for metrics."""
    return images.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)


class EpochSampler:
    """Which rows make up the batch of a given step.

    A pure function of (seed, step): each epoch's order comes from a generator seeded
    with (seed, epoch), so resuming at step t needs no saved loader state.
    `rank`/`world_size` give each data-parallel process a disjoint slice of the batch.
    Everything it returns is already on `device`, copied without waiting for the GPU.
    """

    def __init__(self, n_rows, batch_size, seed=0, rank=0, world_size=1, device="cpu"):
        if batch_size > n_rows:
            raise DataError(f"batch size {batch_size} is larger than the data ({n_rows} rows); "
                            "use a smaller --batch-size")
        self.n_rows, self.batch_size, self.seed = n_rows, batch_size, seed
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.batches_per_epoch = n_rows // batch_size  # drop the ragged last batch
        self._epoch, self._order = None, None

    def generator(self, stream: int, n: int) -> torch.Generator:
        # Integer mixing, not hash(): Python salts string hashes per process.
        return torch.Generator().manual_seed((self.seed * 1_000_003 + n) * 4 + stream)

    def indices(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:  # a new permutation once per epoch
            order = torch.randperm(self.n_rows, generator=self.generator(0, epoch))
            self._epoch, self._order = epoch, self.to_device(order)
        idx = self._order[i * self.batch_size:(i + 1) * self.batch_size]
        return idx.chunk(self.world_size)[self.rank]

    def uniforms(self, stream: int, step: int) -> torch.Tensor:
        """One uniform number in [0, 1) per row of this rank's part of the batch. Drawn for
        the whole batch, then sliced like the indices: under torchrun every row gets the
        number it would get in a single process (flips, class dropout)."""
        u = torch.rand(self.batch_size, generator=self.generator(stream, step))
        return self.to_device(u.chunk(self.world_size)[self.rank])

    def to_device(self, t):
        """A plain copy to a GPU waits for every kernel queued before it; from pinned memory
        with non_blocking it does not, and the training loop keeps the GPU busy."""
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)


class Batches:
    """Shuffled, randomly flipped image batches of one split, held on `device` as uint8.
    The flips of a step come from a generator seeded with (seed, step)."""

    def __init__(self, images_uint8, labels, batch_size, device, seed=0, flip=True, rank=0, world_size=1):
        self.sampler = EpochSampler(len(images_uint8), batch_size, seed, rank, world_size, device)
        self.images, self.labels, self.flip = images_uint8.to(device), labels.to(device), flip

    def batch(self, step: int):
        idx = self.sampler.indices(step)
        x = to_float(self.images[idx])
        if self.flip:
            flip = self.sampler.uniforms(1, step) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x, self.labels[idx]


def iterate_in_order(images_uint8, labels, batch_size, device):
    """Plain sequential batches (float [-1, 1]) over a whole split, for evaluation."""
    for i in range(0, len(images_uint8), batch_size):
        yield to_float(images_uint8[i:i + batch_size].to(device)), labels[i:i + batch_size].to(device)
