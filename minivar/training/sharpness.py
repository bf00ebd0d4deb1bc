"""What makes a tokenizer's reconstructions sharp: an adversarial and a perceptual loss.

An L2 loss alone is minimised by the *average* of all images that fit the tokens, so fine
detail comes out as blur, and every generator built on the tokenizer inherits the blur
(its FID cannot beat the tokenizer's own reconstruction FID). VAR's tokenizer, like
VQGAN's (Esser et al., 2021, §3.1), adds two terms:

- adversarial: a small patch discriminator D, trained from scratch beside the tokenizer,
  tells real images from reconstructions; the decoder is rewarded for fooling it, which
  pushes it to commit to one sharp detail instead of averaging. Hinge loss (D: relu(1 − D(x))
  + relu(1 + D(x̂)); decoder: −D(x̂)). It starts only once reconstructions have settled, and
  its weight is balanced against the reconstruction loss by their gradients at the
  decoder's last layer (VQGAN's adaptive weight), so it can neither vanish nor swamp L2.
- perceptual: distances between deep features of x and x̂ (as LPIPS, Zhang et al., 2018).
  LPIPS uses ImageNet networks; here the features come from a small CIFAR-10 classifier
  this project trains itself (`python train.py --stage perceptual`, a few minutes). Never
  from the Inception network FID uses: training on the metric's own features makes it lie.

Measured at the cpu preset (results/sharp_tokenizer/): the perceptual loss lowers the rFID
at no cost in PSNR; a discriminator on top made it worse at this budget, so
TokenizerConfig.adversarial_weight is 0 by default (over longer runs it is not measured).

Left out: LPIPS's learned per-channel weights (they were fitted to human judgements),
LeCam and R1 regularisation, and a discriminator on the token maps.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minivar.training.device import conv_layout


class PatchDiscriminator(nn.Module):
    """32×32 image -> 8×8 logits, one per overlapping patch of about 14×14 pixels: real (> 0)
    or reconstructed (< 0). GroupNorm, not BatchNorm, so a logit never depends on the batch."""

    def __init__(self, width=64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # 32 -> 16
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.GroupNorm(8, 2 * width), nn.LeakyReLU(0.2),  # -> 8
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.GroupNorm(8, 4 * width), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * width, 1, 3, padding=1),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, x_B3HW):
        return self.net(x_B3HW)


def discriminator_hinge_loss(logits_real, logits_fake):
    """D's loss: push real logits above +1 and reconstructions' below −1."""
    return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())


def adaptive_weight(rec_loss, gen_loss, last_layer_weight, max_weight=1e4):
    """λ = ‖∇L_rec‖ / (‖∇L_G‖ + 1e-4), both gradients at the decoder's last layer: the
    adversarial term then moves the decoder's output about as much as the reconstruction
    term does, whatever their raw scales (VQGAN, Eq. 7)."""
    g_rec = torch.autograd.grad(rec_loss, last_layer_weight, retain_graph=True)[0]
    g_gen = torch.autograd.grad(gen_loss, last_layer_weight, retain_graph=True)[0]
    return (g_rec.norm() / (g_gen.norm() + 1e-4)).clamp(0, max_weight).detach()


@dataclass
class PerceptualConfig:
    widths: tuple = (32, 64, 128)  # channels of the classifier's three stages (32×32, 16×16, 8×8)


class FeatureClassifier(nn.Module):
    """A small VGG-style CIFAR-10 classifier whose feature maps define the perceptual
    distance: three stages of two 3×3 convs (32×32, 16×16, 8×8), then a linear layer."""

    def __init__(self, widths=(32, 64, 128), num_classes=10):
        super().__init__()
        stages, c_in = [], 3
        for w in widths:
            stages.append(nn.Sequential(nn.Conv2d(c_in, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
                                        nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()))
            c_in = w
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(c_in, num_classes)

    def features(self, x_B3HW):
        """The feature map at the end of each stage (before pooling)."""
        out, h = [], x_B3HW
        for k, stage in enumerate(self.stages):
            h = stage(F.max_pool2d(h, 2) if k > 0 else h)
            out.append(h)
        return out

    def forward(self, x_B3HW):
        return self.head(self.features(x_B3HW)[-1].mean((2, 3)))


def frozen_classifier(config: dict, state: dict, device):
    """A trained classifier from its checkpoint's config and weights, frozen, in the layout the tokenizer trains in."""
    net = FeatureClassifier(PerceptualConfig(**config).widths)
    net.load_state_dict(state)
    return net.to(device, memory_format=conv_layout(device)).eval().requires_grad_(False)


def perceptual_distance(network, x_B3HW, y_B3HW):
    """LPIPS-style distance per image: at each stage, unit-normalise every position's feature
    vector, then the squared difference summed over channels and averaged over positions;
    summed over stages. Gradients flow to y (the reconstruction), not into the network."""
    with torch.no_grad():
        features_x = network.features(x_B3HW)
    total = 0.0
    for fx, fy in zip(features_x, network.features(y_B3HW)):
        total = total + (F.normalize(fx, dim=1) - F.normalize(fy, dim=1)).pow(2).sum(1).mean((1, 2))
    return total
