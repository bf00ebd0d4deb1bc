"""FID: the Fréchet distance against hand-computable cases and numpy's statistics; what Inception is
handed (resized to 299×299, scaled as (x − 128)/128), seen through a stand-in network that returns
its input; the real Inception where installed."""
import numpy as np
import pytest
import torch

from minivar.studies import metrics
from minivar.studies.metrics import MetricsError, fid_from_features, frechet_distance, inception_path, statistics


def test_diagonal_gaussians_have_a_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # 5 + 1 + 1 + 0
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected) == pytest.approx(7.0)


def test_full_covariances_match_the_eigenvalues_of_their_product():
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = A @ A.T + 0.1 * np.eye(6), B @ B.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    tr_sqrt = np.sqrt(np.linalg.eigvals(s1 @ s2).real.clip(min=0)).sum()  # eigenvalues of Σ1Σ2 are real, ≥ 0
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_fid_of_a_set_with_itself_is_zero_and_a_shift_is_its_square():
    x = np.random.default_rng(1).normal(size=(500, 16))
    assert abs(fid_from_features(x, x)) < 1e-6
    assert fid_from_features(x, x + 0.5) == pytest.approx(16 * 0.25, rel=1e-6)
    mu, sigma = statistics(x)
    assert mu.shape == (16,) and sigma.shape == (16, 16)
    with pytest.raises(MetricsError):
        statistics(x[:1])


def test_statistics_are_numpys_mean_and_unbiased_covariance():
    x = np.random.default_rng(2).normal(size=(7, 3))
    mu, sigma = statistics(x)
    assert np.allclose(mu.numpy(), x.mean(0)) and np.allclose(sigma.numpy(), np.cov(x, rowvar=False))
    assert np.allclose(sigma.numpy(), (x - x.mean(0)).T @ (x - x.mean(0)) / 6)  # divided by N − 1, as numpy does


class Identity(torch.nn.Module):
    def forward(self, x):
        return x


@pytest.fixture
def what_inception_sees(tmp_path, monkeypatch):
    """InceptionFeatures loading, instead of Inception, a TorchScript network that returns its input:
    its "features" are the images exactly as Inception would get them, B×3×299×299."""
    torch.jit.script(Identity()).save(str(tmp_path / "identity.pt"))
    monkeypatch.setattr(metrics, "inception_path", lambda: tmp_path / "identity.pt")
    network = metrics.InceptionFeatures(torch.device("cpu"))
    return lambda images_uint8: network(images_uint8).view(-1, 3, 299, 299)


def bilinear_by_hand(n_out, n_in):
    """n_out×n_in matrix of bilinear resizing with pixel centres aligned (align_corners=False): output
    pixel i reads the input at (i + 0.5)·n_in/n_out − 0.5 (at least 0), between its two neighbours."""
    at = ((torch.arange(n_out) + 0.5) * n_in / n_out - 0.5).clamp(min=0).double()
    left = at.floor().long().clamp(max=n_in - 1)
    right = (left + 1).clamp(max=n_in - 1)
    W = torch.zeros(n_out, n_in, dtype=torch.float64)
    W[torch.arange(n_out), left] += 1 - (at - left)
    W[torch.arange(n_out), right] += at - left
    return W


def test_inception_gets_pixels_scaled_as_x_minus_128_over_128(what_inception_sees):
    """Flat images: 0 -> −1, 128 -> 0, 255 -> 127/128 (the TF-Inception convention, not [0, 1], not v/127.5 − 1)."""
    levels = torch.tensor([0, 128, 255], dtype=torch.uint8)
    seen = what_inception_sees(levels[:, None, None, None].expand(3, 3, 32, 32))
    for image, value in zip(seen, [-1.0, 0.0, 127 / 128]):
        assert torch.allclose(image, torch.full_like(image, value), atol=1e-6)


def test_inception_gets_images_resized_bilinearly_to_299(what_inception_sees):
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    W = bilinear_by_hand(299, 32)
    expected = (W @ images.double() @ W.T - 128) / 128  # rows, then columns
    assert torch.allclose(what_inception_sees(images).double(), expected, atol=1e-4)


class MeanColour(torch.nn.Module):
    """A stand-in feature network: each image's mean colour, 3 features."""
    dim = 3

    def forward(self, x_uint8):
        return x_uint8.float().mean((2, 3))


def test_the_reference_statistics_are_cached_for_exactly_those_images(tmp_path):
    """Cached on first use, read back after; a set that differs in its last image only gets its own."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (300, 3, 4, 4), dtype=torch.uint8, generator=g)
    feats = images.double().mean((2, 3)).numpy()
    mu, sigma = metrics.reference_statistics(MeanColour(), images, tmp_path, "test", torch.device("cpu"))
    assert np.allclose(mu.numpy(), feats.mean(0)) and np.allclose(sigma.numpy(), np.cov(feats, rowvar=False))
    assert len(list(tmp_path.glob("fid-ref-test-*.pt"))) == 1
    changed = images.clone()
    changed[-1] = 255 - changed[-1]
    mu2, _ = metrics.reference_statistics(MeanColour(), changed, tmp_path, "test", torch.device("cpu"))
    assert len(list(tmp_path.glob("fid-ref-test-*.pt"))) == 2
    assert np.allclose(mu2.numpy(), changed.double().mean((2, 3)).numpy().mean(0))
    mu3, _ = metrics.reference_statistics(MeanColour(), images, tmp_path, "test", torch.device("cpu"))
    assert torch.equal(mu3, mu) and len(list(tmp_path.glob("fid-ref-test-*.pt"))) == 2  # read back


def test_real_inception_gives_2048_features_where_installed():
    try:
        path = inception_path()
    except MetricsError as e:
        pytest.skip(str(e))
    from minivar.studies.metrics import InceptionFeatures
    net = InceptionFeatures(torch.device("cpu"))
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    f = net(images)
    assert path.name == "default_1.pt" and f.shape == (2, 2048) and torch.isfinite(f).all()
    assert not torch.allclose(f[0], f[1])
