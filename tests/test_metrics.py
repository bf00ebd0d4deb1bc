"""FID: the Fréchet distance against hand-computable cases; the real Inception where installed."""
import numpy as np
import pytest
import torch

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
