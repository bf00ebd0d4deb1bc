"""Shared test helpers: a tiny synthetic CIFAR-10 in the official python layout."""
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_CIFAR = ROOT.parent / "shared" / "data"


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


@pytest.fixture
def fake_data_dir(tmp_path):
    write_fake_cifar(tmp_path / "data" / "cifar-10-batches-py")
    return tmp_path / "data"


@pytest.fixture
def shared_cifar():
    if not (SHARED_CIFAR / "cifar-10-batches-py" / "test_batch").is_file():
        pytest.skip(f"real CIFAR-10 not found at {SHARED_CIFAR} (only on the project's machines)")
    return SHARED_CIFAR


def run_script(*args, env=None, cwd=ROOT):
    """Run a project script in a subprocess; returns CompletedProcess with text output."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=600)
