"""What each training stage does in one step, at evaluation, and in its picture.

train.py runs one loop for every stage; a stage object supplies what differs:

    stage.model                  the nn.Module being trained
    stage.net                    what the step calls: the model, or its torch.compile / DDP wrapper
    stage.train_step(step, optimizer, lr, grad_clip, log)    one optimizer step (Stage, below)
    stage.set_dtype(dtype)       fp32, or bf16 autocast (device.py)
    stage.evaluate()             metrics on the test split
    stage.save_picture(path)     a PNG to look at after each evaluation
    stage.state(), load_state()  what a checkpoint carries besides the model and its optimizer

The stages, in the order `python train.py` runs them: perceptual (the small CIFAR-10
classifier whose features the tokenizer's perceptual loss compares), tokenizer, var; and
ar, the baseline, on its own.
"""
import contextlib

import torch
import torch.nn.functional as F

from minivar.ar import AR
from minivar.data import CLASSES, Batches, EpochSampler, iterate_in_order
from minivar.flex_attention import use_flex
from minivar.tokenizer import Tokenizer, psnr
from minivar.training.checkpoint import frozen_tokenizer
from minivar.training.codebook import reseed_in_training
from minivar.training.device import autocast, conv_layout
from minivar.training import distributed
from minivar.training.ema import EMA
from minivar.training.evaluation import loss_per_scale, test_cross_entropy
from minivar.training.plots import save_reconstruction_grid, save_sample_grid
from minivar.training.sharpness import (
    FeatureClassifier,
    PatchDiscriminator,
    PerceptualConfig,
    adaptive_weight,
    discriminator_hinge_loss,
    frozen_classifier,
    perceptual_distance,
)
from minivar.training.tokens import cached_tokens
from minivar.var import VAR


class Stage:
    items = "img"  # what the progress bar counts per second
    dtype, autocast = "fp32", contextlib.nullcontext()  # until set_dtype

    def set_dtype(self, dtype):
        """Train (and evaluate) in fp32, or under bf16 autocast."""
        self.dtype, self.autocast = dtype, autocast(self.device, dtype)

    def train_step(self, step, optimizer, lr, grad_clip, log=True):
        """One optimizer step at learning rate lr, gradients clipped to norm grad_clip. Returns
        the step's metrics as tensors: reading one waits for the GPU, so the loop does that
        only when it logs; metrics that cost work of their own only if `log`."""
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, metrics = self.loss(step, log)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), grad_clip)
        optimizer.step()
        metrics.update(self.after_step(step, optimizer))
        return metrics

    def after_step(self, step, optimizer):
        """Work after the optimizer step (the tokenizer: its discriminator, dead codes)."""
        return {}

    def state(self):
        return {}

    def load_state(self, ckpt):
        pass

    def save_picture(self, path):  # a stage without a picture worth a file (the perceptual classifier)
        pass


class PerceptualStage(Stage):
    """The classifier behind the perceptual loss (sharpness.py), trained on training images."""
    kind = "perceptual"

    def __init__(self, tcfg, model_cfg: PerceptualConfig, train_data, test_data, device, rank=0, world_size=1):
        self.device, self.layout = device, conv_layout(device)
        self.model = self.net = FeatureClassifier(model_cfg.widths).to(device, memory_format=self.layout)
        self.items_per_step = tcfg.batch_size
        self.batches = Batches(*train_data, tcfg.batch_size, device, seed=tcfg.seed, rank=rank, world_size=world_size)
        self.test_images, self.test_labels = test_data[0][:tcfg.eval_images], test_data[1][:tcfg.eval_images]

    def loss(self, step, log=True):
        x, y = self.batches.batch(step)
        with self.autocast:
            logits = self.net(x.contiguous(memory_format=self.layout))
        loss = F.cross_entropy(logits.float(), y)
        return loss, {"loss": loss.detach(), "accuracy": (logits.argmax(1) == y).float().mean()}

    @torch.no_grad()
    def evaluate(self):
        self.model.eval()
        correct = sum((self.model(x).argmax(1) == y).sum().item()
                      for x, y in iterate_in_order(self.test_images, self.test_labels, 500, self.device))
        self.model.train()
        return {"test_accuracy": correct / len(self.test_images)}


class TokenizerStage(Stage):
    """Reconstruction + VQ losses (tokenizer.py), plus sharpness.py's terms whose weights are above 0."""
    kind = "tokenizer"

    def __init__(self, tcfg, model_cfg, train_data, test_data, device, rank=0, world_size=1, perceptual=None):
        self.tcfg, self.device, self.perceptual_checkpoint = tcfg, device, perceptual
        self.layout = conv_layout(device)
        self.model = self.net = Tokenizer(model_cfg).to(device, memory_format=self.layout)
        self.scale_names = [f"{s}×{s}" for s in model_cfg.scales]
        self.items_per_step = tcfg.batch_size  # the global batch (split across ranks under torchrun)
        self.batches = Batches(*train_data, tcfg.batch_size, device, seed=tcfg.seed, rank=rank, world_size=world_size)
        self.test_images, self.test_labels = test_data[0][:tcfg.eval_images], test_data[1][:tcfg.eval_images]
        self.perceptual = None
        if model_cfg.perceptual_weight > 0:  # perceptual = {"model_config", "model"} of a perceptual checkpoint
            self.perceptual = frozen_classifier(perceptual["model_config"], perceptual["model"], device)
        self.discriminator, self._last = None, None
        if model_cfg.adversarial_weight > 0:
            with torch.random.fork_rng(devices=[]):  # its own seed: until disc_start the run is bit for bit
                torch.manual_seed(tcfg.seed + 1)      # the one without the adversarial term
                self.discriminator = self.disc_net = PatchDiscriminator().to(device, memory_format=self.layout)
            if distributed.active():  # torchrun: its gradients are averaged like the tokenizer's
                self.disc_net = torch.nn.parallel.DistributedDataParallel(self.discriminator)
            self.disc_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=tcfg.lr, betas=(0.5, 0.9))

    def loss(self, step, log=True):
        cfg = self.model.cfg
        x = self.batches.batch(step)[0].contiguous(memory_format=self.layout)
        with self.autocast:
            x_rec, _, info = self.net(x)
            rec_loss = info["rec_loss"]
            metrics = {"psnr": psnr(x_rec.detach().float(), x).mean()} if log else {}
            if self.perceptual is not None:
                distance = perceptual_distance(self.perceptual, x, x_rec).mean()
                rec_loss = rec_loss + cfg.perceptual_weight * distance
                metrics["perceptual"] = distance.detach()
            loss = rec_loss + info["vq_loss"]
            if self.discriminator is not None and step >= cfg.disc_start + cfg.disc_warmup:
                gen_loss = -self.disc_net(x_rec).mean()  # the decoder wants D to call x_rec real
                weight = adaptive_weight(rec_loss, gen_loss, self.model.decoder[-1].weight)
                loss = loss + cfg.adversarial_weight * weight * gen_loss
                metrics.update(gen_loss=gen_loss.detach(), adaptive_weight=weight)
        self._last = (x, x_rec.detach(), info["f"].detach().float())
        return loss, {"loss": loss.detach(), **metrics}

    def after_step(self, step, optimizer):
        metrics = {}
        x, x_rec, latent = self._last
        if self.discriminator is not None and step >= self.model.cfg.disc_start:
            for group in self.disc_optimizer.param_groups:  # D follows the tokenizer's schedule
                group["lr"] = optimizer.param_groups[0]["lr"]
            with self.autocast:
                d_loss = discriminator_hinge_loss(self.disc_net(x), self.disc_net(x_rec))
            self.disc_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            self.disc_optimizer.step()
            metrics["disc_loss"] = d_loss.detach()
        if (step + 1) % self.tcfg.reseed_every == 0:  # unused codes move onto current residuals (codebook.py)
            metrics.update(reseed_in_training(self.model.quantizer, latent, optimizer))
        return metrics

    @torch.no_grad()
    def evaluate(self, per_scale_images=500):
        """Test PSNR of the full reconstruction; PSNR after each scale on a subset; usage per scale."""
        self.model.eval()
        scores, hits_KV = [], torch.zeros_like(self.model.quantizer.hits_KV)
        for x, _ in iterate_in_order(self.test_images, self.test_labels, 250, self.device):
            idx_list = self.model.encode(x)
            for k, idx in enumerate(idx_list):
                hits_KV[k] += torch.bincount(idx.flatten(), minlength=hits_KV.shape[1])
            scores.append(psnr(self.model.decode(idx_list).float(), x))
        x = next(iterate_in_order(self.test_images[:per_scale_images], self.test_labels, per_scale_images,
                                  self.device))[0]
        per_scale = [psnr(rec.float(), x).mean().item() for rec in self.model.cumulative_reconstructions(x)]
        self.model.train()
        usage = (hits_KV > 0).float().mean(1).tolist()
        return {"psnr": torch.cat(scores).mean().item(), "psnr_per_scale": per_scale, "usage_per_scale": usage}

    @torch.no_grad()
    def save_picture(self, path):
        self.model.eval()
        x = next(iterate_in_order(self.test_images[:8], self.test_labels, 8, self.device))[0]
        recs = self.model.cumulative_reconstructions(x)
        self.model.train()
        save_reconstruction_grid(x, recs, self.model.cfg.scales, path)

    def state(self):
        """The discriminator, its optimizer and the perceptual network: resuming needs this file alone."""
        state = {"perceptual": self.perceptual_checkpoint} if self.perceptual is not None else {}
        if self.discriminator is not None:
            state.update(discriminator=self.discriminator.state_dict(), disc_optimizer=self.disc_optimizer.state_dict())
        return state

    def load_state(self, ckpt):
        if self.discriminator is not None and "discriminator" in ckpt:
            self.discriminator.load_state_dict(ckpt["discriminator"])
            self.disc_optimizer.load_state_dict(ckpt["disc_optimizer"])


class VARStage(Stage):
    """Next-scale prediction on cached token maps of a frozen tokenizer (ARStage below: next-token)."""
    kind, items = "var", "tok"  # the progress bar counts tokens per second
    model_class = VAR

    def __init__(self, tcfg, model_cfg, train_data, test_data, device, rank=0, world_size=1, tokenizer=None):
        self.tcfg, self.device = tcfg, device
        self.tokenizer_checkpoint = tokenizer  # {"tokenizer_config", "tokenizer"}: travels in every checkpoint
        self.tokenizer = frozen_tokenizer(tokenizer["tokenizer_config"], tokenizer["tokenizer"]).to(device)
        self.scale_names = [f"{s}×{s}" for s in model_cfg.scales]
        with distributed.rank_zero_first():  # torchrun: one process tokenizes, the others read its cache
            train_tok, train_labels, test_tok, test_labels = cached_tokens(
                self.tokenizer, tcfg.out_dir, train_data, test_data, device)
        self.train_tokens, self.train_labels = train_tok.to(device), train_labels.to(device)  # resident on the device
        self.test_tokens = test_tok[:tcfg.eval_images].to(device)
        self.test_labels = test_labels[:tcfg.eval_images].to(device)
        self.sampler = EpochSampler(len(self.train_tokens), tcfg.batch_size, tcfg.seed, rank, world_size, device)
        self.model = self.net = self.model_class(model_cfg).to(device)
        if model_cfg.attention == "flex":  # FlexAttention in the training pass (flex_attention.py)
            use_flex(self.model)
        self.ema = EMA(self.model, tcfg.ema_decay) if tcfg.ema_decay > 0 else None  # what samples are drawn from
        self.items_per_step = tcfg.batch_size * self.model.seq_len

    def loss(self, step, log=True):
        idx = self.sampler.indices(step)
        tokens, labels = self.train_tokens[idx].long(), self.train_labels[idx]
        labels = self.model.drop_labels(labels, self.sampler.uniforms(2, step))  # the null class, for CFG
        inputs = self.model.teacher_forcing_inputs(self.tokenizer.quantizer, tokens)  # (fp32 under any autocast)
        with self.autocast:
            logits, loss = self.net(inputs, labels, tokens)
        metrics = {"loss": loss.detach()}
        if log:  # a second pass over the logits: only when the loop logs it
            metrics["loss_per_scale"] = loss_per_scale(self.model, logits.detach(), tokens)
        return loss, metrics

    def after_step(self, step, optimizer):
        if self.ema is not None:
            self.ema.update(self.model, step)
        return {}

    def evaluate(self, images=None):
        """Test cross-entropy per scale (nats per token), next to each scale's unigram entropy;
        on the first `images` test images if given (the scaling study's loss curves). With an
        EMA, the same for the averaged weights (ema_ce, ema_ce_per_scale)."""
        self.model.eval()
        tokens, labels = self.test_tokens[:images], self.test_labels[:images]
        result = test_cross_entropy(self.model, self.tokenizer, tokens, labels, self.device, dtype=self.dtype)
        self.model.train()
        if self.ema is not None:
            ema = test_cross_entropy(self.ema.model, self.tokenizer, tokens, labels, self.device, dtype=self.dtype)
            result.update(ema_ce=ema["ce"], ema_ce_per_scale=ema["ce_per_scale"])
        return result

    @torch.no_grad()
    def save_picture(self, path, per_class=8, cfg_scale=1.5, seed=0):
        """Samples of the weights sample.py will use: the EMA's if there is one."""
        model = self.model if self.ema is None else self.ema.model
        was_training = model.training
        model.eval()
        labels = torch.arange(len(CLASSES), device=self.device).repeat_interleave(per_class)
        gen = torch.Generator(self.device).manual_seed(seed)
        idx_list = model.generate(self.tokenizer.quantizer, labels, cfg_scale=cfg_scale, generator=gen)
        model.train(was_training)
        save_sample_grid(self.tokenizer.decode(idx_list), CLASSES, per_class, path)

    def state(self):
        """The tokenizer, so that sample.py needs this one file; the EMA beside the raw weights."""
        return {**self.tokenizer_checkpoint, **({"ema": self.ema.state_dict()} if self.ema is not None else {})}

    def start_from(self, weights):
        """--init-from: the model (and its average) begin at another run's weights."""
        self.model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()})
        if self.ema is not None:
            self.ema.load_state_dict(self.model.state_dict())

    def load_state(self, ckpt):
        """On --resume: the EMA as saved; a run resumed with an EMA it did not have starts the
        average from the weights it resumes from."""
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"] if "ema" in ckpt else self.model.state_dict())


class ARStage(VARStage):
    """The AR baseline: the same stage, the model reads the token maps one token at a time."""
    kind = "ar"
    model_class = AR
