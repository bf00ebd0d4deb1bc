import hashlib
import io
import tarfile

import pytest
import torch

from minivar.data import Batches, DataError, EpochSampler, download_cifar10, load_cifar10, to_float, to_uint8
from tests.conftest import write_fake_cifar


def test_loads_official_layout(fake_data_dir):
    x, y = load_cifar10(fake_data_dir, "train")
    assert x.shape == (200, 3, 32, 32) and x.dtype == torch.uint8
    assert y.shape == (200,) and 0 <= y.min() and y.max() <= 9
    assert load_cifar10(fake_data_dir, "test")[0].shape == (100, 3, 32, 32)


def test_real_cifar_matches_official_statistics(real_cifar):
    x, y = load_cifar10(real_cifar, "train", download=False)
    assert x.shape == (50000, 3, 32, 32) and torch.bincount(y).tolist() == [5000] * 10
    mean = (x.float() / 255).mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.tensor([0.4914, 0.4822, 0.4465]), atol=2e-3)


def test_batches_are_a_function_of_step_and_shuffle_each_epoch(fake_data_dir):
    x, y = load_cifar10(fake_data_dir, "train")
    batches = Batches(x, y, batch_size=50, device="cpu", seed=1)
    a, la = batches.batch(3)
    b, lb = Batches(x, y, batch_size=50, device="cpu", seed=1).batch(3)  # a fresh object: same batch
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert a.min() >= -1 and a.max() <= 1
    epoch0 = torch.cat([batches.batch(s)[1] for s in range(4)])
    epoch1 = torch.cat([batches.batch(s)[1] for s in range(4, 8)])
    assert sorted(epoch0.tolist()) == sorted(y.tolist())  # every image once per epoch
    assert not torch.equal(epoch0, epoch1)  # in a new order


def test_flips_are_horizontal_and_random(fake_data_dir):
    x, y = load_cifar10(fake_data_dir, "train")
    plain = Batches(x, y, 200, "cpu", seed=0, flip=False).batch(0)[0]
    flipped = Batches(x, y, 200, "cpu", seed=0, flip=True).batch(0)[0]
    same = (plain == flipped).flatten(1).all(1)
    mirrored = (plain.flip(3) == flipped).flatten(1).all(1)
    assert (same | mirrored).all() and 0.2 < mirrored.float().mean() < 0.8


def test_ranks_get_disjoint_halves(fake_data_dir):
    x, y = load_cifar10(fake_data_dir, "train")
    whole = Batches(x, y, 40, "cpu", seed=0, flip=False).batch(2)[0]
    halves = [Batches(x, y, 40, "cpu", seed=0, flip=False, rank=r, world_size=2).batch(2)[0] for r in range(2)]
    assert torch.equal(torch.cat(halves), whole)


def test_uint8_to_float_maps_0_and_255_exactly_onto_minus_one_and_one():
    levels = [0, 1, 127, 128, 254, 255]
    got = to_float(torch.tensor(levels, dtype=torch.uint8))
    assert got.dtype == torch.float32 and got[0] == -1 and got[-1] == 1
    assert torch.allclose(got, torch.tensor([2 * v / 255 - 1 for v in levels]), atol=1e-6)


def test_float_to_uint8_clamps_outside_minus_one_one_and_rounds_to_the_nearest_level():
    outside = torch.tensor([-30.0, -1.5, -1.0001, -1.0, 1.0, 1.0001, 1.5, 30.0])  # a decoder's output can overshoot
    assert to_uint8(outside).dtype == torch.uint8 and to_uint8(outside).tolist() == [0] * 4 + [255] * 4
    levels = torch.arange(256.0)
    for fraction, up in ((0.3, 0.0), (0.7, 1.0)):  # level v + 0.3 rounds to v, v + 0.7 to v + 1 (255 at most)
        x = (levels + fraction) / 127.5 - 1
        assert torch.equal(to_uint8(x), (levels + up).clamp(max=255).to(torch.uint8)), fraction
    assert torch.equal(to_uint8(levels / 127.5 - 1), levels.to(torch.uint8))  # every level comes back as itself


def test_each_epoch_is_a_new_permutation_in_whole_batches_and_any_step_can_be_asked_first():
    """10 rows in batches of 3: 3 batches an epoch, one row left out of each (the ragged batch is
    dropped). A sampler made fresh at any step (a resumed run) gives what a walking one gave."""
    walked = EpochSampler(10, 3, seed=4)
    batches = [walked.indices(step) for step in range(9)]  # three epochs, in order
    assert all(len(b) == 3 for b in batches)
    epochs = [torch.cat(batches[3 * e:3 * e + 3]).tolist() for e in range(3)]
    assert all(len(set(rows)) == 9 and set(rows) <= set(range(10)) for rows in epochs)  # no row twice in an epoch
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    for step in (1, 4, 8):  # mid-epoch, in the second and third epochs
        assert torch.equal(EpochSampler(10, 3, seed=4).indices(step), batches[step])


def _tarball(tmp_path):
    write_fake_cifar(tmp_path / "src" / "cifar-10-batches-py", n_train=10, n_test=5)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(buf.getvalue())
    return path, hashlib.md5(buf.getvalue()).hexdigest()


def test_download_verifies_and_extracts(tmp_path):
    tarball, md5 = _tarball(tmp_path)
    folder = download_cifar10(tmp_path / "data", url=tarball.as_uri(), md5=md5)
    assert load_cifar10(tmp_path / "data", "test")[0].shape == (5, 3, 32, 32)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["cifar-10-batches-py"]  # no leftovers
    assert folder == tmp_path / "data" / "cifar-10-batches-py"


def test_corrupt_download_leaves_nothing_behind(tmp_path):
    tarball, _ = _tarball(tmp_path)
    with pytest.raises(DataError, match="md5"):
        download_cifar10(tmp_path / "data", url=tarball.as_uri(), md5="0" * 32)
    assert not (tmp_path / "data").exists()  # it created the folder, so it removes it again


def test_offline_download_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="could not download.*cifar-10-batches-py"):
        download_cifar10(tmp_path / "data", url=(tmp_path / "nowhere.tar.gz").as_uri())


def test_truncated_batch_file_is_reported(fake_data_dir):
    (fake_data_dir / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="test_batch is not a valid CIFAR-10 batch: pickle data was truncated"):
        load_cifar10(fake_data_dir, "test")
