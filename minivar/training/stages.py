"""What each training stage does in one step, at evaluation, and in its picture.

train.py runs one loop for every stage; a stage object supplies the parts that differ:

    stage.model                  the nn.Module being trained
    stage.net                    what the training step calls: the model, or under torchrun its DDP wrapper
    stage.loss(step)             (loss, metrics) on the batch of this step
    stage.after_step(step, opt)  housekeeping after the optimizer step (e.g. re-seeding codes)
    stage.evaluate()             metrics on the test split
    stage.save_picture(path)     a PNG to look at after each evaluation
    stage.checkpoint()           what, besides weights and optimizer, a checkpoint carries
"""

import torch

from minivar.ar import AR
from minivar.data import CLASSES, Batches, EpochSampler, iterate_in_order
from minivar.quantizer import split_scales
from minivar.tokenizer import Tokenizer, TokenizerConfig, psnr
from minivar.training.checkpoint import CheckpointError, load_checkpoint
from minivar.training.device import autocast
from minivar.training.distributed import rank_zero_first, rows_from_all_ranks, sum_across_ranks
from minivar.training.plots import save_reconstruction_grid, save_sample_grid
from minivar.training.tokens import cached_tokens
from minivar.var import VAR, VARConfig


class TokenizerStage:
    kind, items = "tokenizer", "img"  # the progress bar counts images per second

    def __init__(self, tcfg, model_cfg: TokenizerConfig, train_data, test_data, device, rank=0, world_size=1):
        self.tcfg, self.device = tcfg, device
        self.model = self.net = Tokenizer(model_cfg).to(device)
        self.items_per_step = tcfg.batch_size  # the global batch (split across ranks under torchrun)
        self.batches = Batches(*train_data, tcfg.batch_size, device, seed=tcfg.seed, rank=rank, world_size=world_size)
        self.test_images, self.test_labels = test_data[0][:tcfg.eval_images], test_data[1][:tcfg.eval_images]
        self._last_latent = None
        self._usage = self.model.quantizer.usage_per_scale()  # over the last full re-seed window

    def loss(self, step):
        x, _ = self.batches.batch(step)
        with autocast(self.device):
            x_rec, loss, info = self.net(x)
        self._last_latent = info["f"].detach().float()
        return loss, {"loss": loss.item(), "psnr": psnr(x_rec.float(), x).mean().item(),
                      "usage": self._usage[-1].item(), "usage_min": self._usage.min().item()}

    def after_step(self, step, optimizer):
        """Every `reseed_every` steps, codes no scale used since the last check are moved
        onto current residuals, and their Adam moments are cleared so that stale
        statistics do not throw the fresh codes around."""
        if (step + 1) % self.tcfg.reseed_every:
            return {}
        # torchrun: count code use over every rank's images and re-seed from the whole global
        # batch, so that all ranks make the same change (no-ops in a single process)
        sum_across_ranks(self.model.quantizer.hits_KV)
        latents = rows_from_all_ranks(self._last_latent)
        self._usage = self.model.quantizer.usage_per_scale()
        dead = self.model.quantizer.reseed_dead_codes(latents)
        state = optimizer.state.get(self.model.quantizer.codebook.weight, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][dead] = 0
        return {"reseeded": len(dead)}

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
        x = iterate_in_order(self.test_images[:per_scale_images], self.test_labels, per_scale_images, self.device)
        x = next(x)[0]
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

    def checkpoint(self):
        return {}


def frozen_tokenizer(config: dict, state: dict):
    """Rebuild a tokenizer from a checkpoint's config and weights, for inference only."""
    tokenizer = Tokenizer(TokenizerConfig(**config))
    tokenizer.load_state_dict(state)
    return tokenizer.eval().requires_grad_(False)


def load_generator(ckpt_path, device):
    """(model, tokenizer) rebuilt from a var or ar checkpoint alone (it carries its tokenizer)."""
    return generator_from_checkpoint(load_checkpoint(ckpt_path), ckpt_path, device)


def generator_from_checkpoint(ckpt, ckpt_path, device):
    """load_generator for a checkpoint already read (ckpt_path only names it in errors)."""
    models = {"var": VAR, "ar": AR}
    if ckpt["kind"] not in models:
        raise CheckpointError(f"{ckpt_path} is a {ckpt['kind']} checkpoint; a var or ar checkpoint is needed "
                              f"(train one with: python train.py --stage var)")
    model = models[ckpt["kind"]](VARConfig(**ckpt["model_config"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt_path}: weights do not match the config stored with them ({str(e)[:100]})") from None
    tokenizer = frozen_tokenizer(ckpt["tokenizer_config"], ckpt["tokenizer"])
    return model.to(device).eval(), tokenizer.to(device)


def unigram_entropy_per_scale(tokens_NL, scales, vocab_size):
    """Entropy (nats) of each scale's token frequencies: the loss of a model that ignores
    everything but which scale it is at. A transformer has to beat this to have learned anything."""
    out = []
    for idx in split_scales(tokens_NL.long(), scales):
        p = torch.bincount(idx.flatten(), minlength=vocab_size).float()
        p = p[p > 0] / p.sum()
        out.append(-(p * p.log()).sum().item())
    return out


@torch.no_grad()
def test_cross_entropy(model, tokenizer, tokens_NL, labels_N, device, batch_size=250):
    """Mean cross-entropy per token, and per scale, of `model` on token rows; beside it the
    unigram entropy of the same rows. Means per token weight each scale by its s² tokens."""
    sums = torch.zeros(len(model.cfg.scales))
    for i in range(0, len(tokens_NL), batch_size):
        tokens, labels = tokens_NL[i:i + batch_size].long(), labels_N[i:i + batch_size]
        with autocast(device):
            logits, _ = model(model.teacher_forcing_inputs(tokenizer.quantizer, tokens), labels)
        sums += torch.tensor(model.loss_per_scale(logits, tokens)) * len(tokens)
    ce = (sums / len(tokens_NL)).tolist()
    unigram = unigram_entropy_per_scale(tokens_NL, model.cfg.scales, model.cfg.vocab_size)
    weights = [s * s / model.seq_len for s in model.cfg.scales]
    return {"ce": sum(w * c for w, c in zip(weights, ce)), "ce_per_scale": ce,
            "unigram": sum(w * u for w, u in zip(weights, unigram)), "unigram_per_scale": unigram}


class VARStage:
    """Next-scale prediction on cached token maps of a frozen tokenizer (ARStage below: next-token)."""
    kind, items = "var", "tok"  # the progress bar counts tokens per second
    model_class = VAR

    def __init__(self, tcfg, model_cfg, train_data, test_data, device, tokenizer_config, tokenizer_state,
                 rank=0, world_size=1):
        self.tcfg, self.device = tcfg, device
        self.tokenizer = frozen_tokenizer(tokenizer_config, tokenizer_state).to(device)
        self.tokenizer_config, self.tokenizer_state = tokenizer_config, tokenizer_state
        with rank_zero_first():  # torchrun: one process tokenizes, the others read its cache
            train_tok, self.train_labels, test_tok, test_labels = cached_tokens(
                self.tokenizer, tcfg.out_dir, train_data, test_data, device)
        self.train_tokens = train_tok.to(device)
        self.test_tokens, self.test_labels = test_tok[:tcfg.eval_images].to(device), test_labels[:tcfg.eval_images].to(device)
        self.train_labels = self.train_labels.to(device)
        self.sampler = EpochSampler(len(self.train_tokens), tcfg.batch_size, tcfg.seed, rank, world_size)
        self.model = self.net = self.model_class(model_cfg).to(device)
        self.items_per_step = tcfg.batch_size * self.model.seq_len

    def inputs(self, tokens_BL):
        """Teacher forcing: the transformer's inputs, built from the true token maps."""
        with torch.no_grad():
            return self.model.teacher_forcing_inputs(self.tokenizer.quantizer, tokens_BL)

    def loss(self, step):
        idx = self.sampler.indices(step).to(self.device)
        tokens, labels = self.train_tokens[idx].long(), self.train_labels[idx]
        labels = self.model.drop_labels(labels, self.sampler.uniforms(2, step))  # the null class, for CFG
        with autocast(self.device):
            logits, loss = self.net(self.inputs(tokens), labels, tokens)
        return loss, {"loss": loss.item(), "loss_per_scale": self.model.loss_per_scale(logits.detach(), tokens)}

    def after_step(self, step, optimizer):
        return {}

    def evaluate(self, images=None):
        """Test cross-entropy per scale (nats per token), next to each scale's unigram entropy;
        on the first `images` test images if given (the scaling study's loss curves)."""
        self.model.eval()
        result = test_cross_entropy(self.model, self.tokenizer, self.test_tokens[:images], self.test_labels[:images],
                                    self.device)
        self.model.train()
        return result

    @torch.no_grad()
    def save_picture(self, path, per_class=8, cfg=1.5, seed=0):
        self.model.eval()
        labels = torch.arange(len(CLASSES), device=self.device).repeat_interleave(per_class)
        gen = torch.Generator(self.device).manual_seed(seed)
        idx_list = self.model.generate(self.tokenizer.quantizer, labels, cfg=cfg, generator=gen)
        self.model.train()
        save_sample_grid(self.tokenizer.decode(idx_list), CLASSES, per_class, path)

    def checkpoint(self):
        """A VAR checkpoint carries its tokenizer, so sample.py needs this one file."""
        return {"tokenizer": self.tokenizer_state, "tokenizer_config": self.tokenizer_config}


class ARStage(VARStage):
    """The AR baseline: the same stage, the model reads the single-scale token map row by row."""
    kind = "ar"
    model_class = AR
