"""Shared test helpers: a tiny synthetic CIFAR-10 in the official python layout."""
import errno
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def fill_the_disk(monkeypatch, module):
    """Every file `module` opens through os.fdopen refuses its writes with ENOSPC, as on a full disk."""
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(module.os, "fdopen", lambda *args, **kwargs: FullDisk(real_fdopen(*args, **kwargs)))


def real_cifar_dir():
    """Where a user keeps real CIFAR-10: $MINIVAR_DATA_DIR, else ./data (train.py's --data-dir default)."""
    return Path(os.environ.get("MINIVAR_DATA_DIR", ROOT / "data"))


def has_real_cifar():
    return (real_cifar_dir() / "cifar-10-batches-py" / "test_batch").is_file()


def write_fake_cifar(folder: Path, n_train=200, n_test=100, seed=0):
    """Smooth random images (so a tokenizer can learn them), labels 0-9, official layout."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def images(n):
        coarse = rng.uniform(0, 255, size=(n, 3, 4, 4))
        return np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3).astype(np.uint8).reshape(n, 3072)

    per_batch = n_train // 5
    for i in range(5):
        batch = {b"data": images(per_batch), b"labels": rng.integers(0, 10, per_batch).tolist(), b"batch_label": b"fake"}
        (folder / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch))
    test = {b"data": images(n_test), b"labels": rng.integers(0, 10, n_test).tolist(), b"batch_label": b"fake"}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"] * 10}))
    return folder


# The environment for scripts run by the tests: never a download (the URL points nowhere).
OFFLINE = {**os.environ, "MINIVAR_CIFAR_URL": "file:///nonexistent/cifar-10-python.tar.gz"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A small synthetic CIFAR-10 shared by the tests of one module."""
    folder = tmp_path_factory.mktemp("data")
    write_fake_cifar(folder / "cifar-10-batches-py")
    return folder


@pytest.fixture
def fake_data_dir(tmp_path):
    write_fake_cifar(tmp_path / "data" / "cifar-10-batches-py")
    return tmp_path / "data"


@pytest.fixture
def real_cifar():
    """The folder holding real CIFAR-10 (cifar-10-batches-py/), or a skip that says where it was looked for."""
    if not has_real_cifar():
        pytest.skip(f"real CIFAR-10 not found in {real_cifar_dir()}: put cifar-10-batches-py/ there (python train.py "
                    "downloads it), or point MINIVAR_DATA_DIR at the folder holding it")
    return real_cifar_dir()


def run_script(*args, env=None, cwd=ROOT):
    """Run a project script in a subprocess; returns CompletedProcess with text output."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=600)
