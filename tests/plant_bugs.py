"""Plant one-line bugs in a scratch copy of the project, one at a time, and see which test catches each.

    python tests/plant_bugs.py                 # every bug below, against `pytest -m "not slow"`
    python tests/plant_bugs.py --only temperature,residual --all-failures

A test suite earns trust by failing when the algorithm breaks. Each entry of BUGS is a plausible
one-line mistake in a step a student reads (the quantizer, the mask, VAR's forward and sampling
passes, the sampler, the AR baseline, editing, training) or in the code around it (the data path,
the token cache, the schedule, FID, the divergence guard, ...); for each, this copies the project
into a temporary folder, makes that one change, runs the fast tests there, and reports the
first test that fails, or SURVIVED if none does. The project itself is never touched.

It takes about a quarter of an hour on two cores (the fast subset stops at its first failure), so it is
not part of the test suite; tests/README.md lists what it found. Exit status 1 if any bug survives.
"""
import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name, file, the line as it is, the line with the bug, what the bug does)
BUGS = [
    ("residual", "minivar/quantizer.py", "rest = rest - h.detach()", "rest = rest",
     "every scale quantizes f itself, not what coarser scales left"),
    ("area-to-bilinear", "minivar/quantizer.py", 'size=(side, side), mode="area")',
     'size=(side, side), mode="bilinear")', "downsampling by bilinear interpolation instead of block means"),
    ("bicubic-to-nearest", "minivar/quantizer.py", 'size=(side, side), mode="bicubic")',
     'size=(side, side), mode="nearest")', "upsampling the codes by nearest neighbour"),
    ("f-hat-not-summed", "minivar/quantizer.py", "f_hat = f_hat + h\n", "f_hat = h\n",
     "f̂ keeps only the last scale instead of the sum of all scales so far"),
    ("no-straight-through", "minivar/quantizer.py", "f_hat_st = f_BChw + (f_hat - f_BChw).detach()",
     "f_hat_st = f_hat", "the decoder's gradient no longer reaches the encoder"),
    ("beta-on-codebook-term", "minivar/quantizer.py",
     "self.beta * F.mse_loss(f_hat.detach(), f_BChw) + F.mse_loss(f_hat, f_BChw.detach())",
     "F.mse_loss(f_hat.detach(), f_BChw) + self.beta * F.mse_loss(f_hat, f_BChw.detach())",
     "the commitment weight β moves to the codebook term"),
    ("farthest-code", "minivar/quantizer.py", "return score_NV.argmax(1).view(B, s, s)",
     "return score_NV.argmin(1).view(B, s, s)", "the lookup picks the worst code"),
    ("next-input-wrong-side", "minivar/quantizer.py", "area_resize(f_hat_BChw, self.scales[k + 1])",
     "area_resize(bicubic_resize(f_hat_BChw, self.scales[k]), self.scales[k + 1])",
     "the next input is made from f̂ squeezed to the current side first"),
    ("mask-strict", "minivar/mask.py", "block_of_token[None, :] <= block_of_token[:, None]",
     "block_of_token[None, :] < block_of_token[:, None]", "a token no longer sees its own scale"),
    ("mask-transposed", "minivar/mask.py", "block_of_token[None, :] <= block_of_token[:, None]",
     "block_of_token[None, :] >= block_of_token[:, None]", "coarse tokens see finer ones, not the reverse"),
    ("mask-causal", "minivar/mask.py", "return block_of_token[None, :] <= block_of_token[:, None]",
     "return torch.ones(len(block_of_token), len(block_of_token), dtype=torch.bool).tril()",
     "GPT's token-causal mask instead of VAR's block-causal one"),
    ("targets-shifted", "minivar/var.py", "F.cross_entropy(logits_BLV.flatten(0, 1), targets_BL.flatten())",
     "F.cross_entropy(logits_BLV[:, :-1].flatten(0, 1), targets_BL[:, 1:].flatten())",
     "VAR's targets shifted by one, as in GPT"),
    ("never-drop-labels", "minivar/var.py", "uniform_B.to(labels_B.device) < self.cfg.class_dropout",
     "uniform_B.to(labels_B.device) < 0", "class dropout never drops: CFG's null class is never learned"),
    ("drop-the-wrong-labels", "minivar/var.py", "uniform_B.to(labels_B.device) < self.cfg.class_dropout",
     "uniform_B.to(labels_B.device) > self.cfg.class_dropout", "90% of labels dropped instead of 10%"),
    ("constant-guidance", "minivar/var.py", "return cfg_scale * k / max(len(self.cfg.scales) - 1, 1)",
     "return cfg_scale", "the guidance weight does not ramp from 0 at the 1×1 map"),
    ("cfg-same-class-twice", "minivar/var.py",
     "self.class_emb(torch.cat([labels_B, torch.full_like(labels_B, self.cfg.num_classes)]))",
     "self.class_emb(torch.cat([labels_B, labels_B]))", "CFG's unconditional half sees the class too"),
    ("keep-ignored", "minivar/var.py", "torch.where(keep[1][:, start:end], keep[0][:, start:end], r_Bl)",
     "torch.where(keep[1][:, start:end], r_Bl, keep[0][:, start:end])",
     "editing keeps the drawn tokens and redraws the source's"),
    ("cache-position", "minivar/var.py", "self.pos_emb[:, start:end]", "self.pos_emb[:, :end - start]",
     "sampling embeds every scale at the first positions of the sequence"),
    ("last-input-dropped", "minivar/var.py", "split_scales(tokens_BL, self.cfg.scales)[:-1]",
     "split_scales(tokens_BL, self.cfg.scales)[1:]", "teacher forcing built from the wrong scales"),
    ("temperature-multiplies", "minivar/sampling.py", "logits_BlV.float() / max(temperature, 1e-6)",
     "logits_BlV.float() * max(temperature, 1e-6)", "temperature multiplies the logits"),
    ("top-k-one-short", "minivar/sampling.py", "logits.masked_fill(logits < kth_best",
     "logits.masked_fill(logits <= kth_best", "top-k keeps k − 1 tokens"),
    ("top-p-drops-the-crossing-token", "minivar/sampling.py",
     "drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p", "drop_sorted = cumulative >= top_p",
     "top-p drops the token that reaches the mass"),
    ("guidance-sign", "minivar/sampling.py", "return (1 + weight) * cond - weight * uncond",
     "return (1 + weight) * cond + weight * uncond", "guidance adds the unconditional logits"),
    ("cache-never-grows", "minivar/sampling.py", "self.len += n", "self.len = n",
     "the KV cache forgets every earlier scale"),
    ("ar-unshifted", "minivar/ar.py", "return tokens_BL[:, :-1]", "return tokens_BL[:, 1:]",
     "the AR baseline sees the token it must predict"),
    ("ar-guidance-by-position", "minivar/ar.py", "super().guidance_weight(self.scale_of_token[i], cfg_scale)",
     "super().guidance_weight(min(i, len(self.cfg.scales) - 1), cfg_scale)",
     "AR's guidance follows the position, not the scale"),
    ("edit-without-keep", "minivar/applications/editing.py", "keep=(source_BL, keep_BL), **sampling)",
     "**sampling)", "edit() forgets to pass the keep mask: it regenerates the whole image"),
    ("keep-threshold", "minivar/applications/editing.py", "(fraction_edited < 0.5)", "(fraction_edited <= 0.5)",
     "tokens half in the region are kept"),
    ("outpaint-inverted", "minivar/applications/editing.py", 'return ~region if mode == "outpaint" else region',
     "return region", "out-painting redraws the box instead of what surrounds it"),
    ("stage-never-drops", "minivar/training/stages.py",
     "labels = self.model.drop_labels(labels, self.sampler.uniforms(2, step))", "labels = labels",
     "the training step never drops a label"),
    ("ema-backwards", "minivar/training/ema.py", "model.parameters()], 1 - d)", "model.parameters()], d)",
     "the average keeps the new weights and forgets the old ones the wrong way round"),
    # Around the core: the filters on logits in any order, the data path, the token cache, the
    # learning-rate schedule, FID's inputs and statistics, the divergence guard, the cost counts,
    # codebook re-seeding, the evaluation's cross-entropy.
    ("top-k-assumes-sorted", "minivar/sampling.py", "kth_best = logits.topk(top_k, dim=-1).values[..., -1:]",
     "kth_best = logits[..., top_k - 1:top_k]", "top-k reads the k-th logit in vocabulary order, as if sorted"),
    ("top-p-mass-in-vocab-order", "minivar/sampling.py", "cumulative = sorted_logits.softmax(-1).cumsum(-1)",
     "cumulative = logits.softmax(-1).cumsum(-1)", "top-p sums the mass in vocabulary order, not from the likeliest"),
    ("top-p-mask-gathered", "minivar/sampling.py", "drop = drop_sorted.scatter(-1, order, drop_sorted)",
     "drop = drop_sorted.gather(-1, order)", "top-p's mask goes back to vocabulary order by the inverse permutation"),
    ("to-float-over-128", "minivar/data.py", "images_uint8.float().div(127.5).sub(1.0)",
     "images_uint8.float().div(128).sub(1.0)", "uint8 -> float as v/128 − 1: white is 0.992, not 1"),
    ("to-float-unit-range", "minivar/data.py", "images_uint8.float().div(127.5).sub(1.0)",
     "images_uint8.float().div(255)", "uint8 -> float in [0, 1], not the tokenizer's [−1, 1]"),
    ("to-uint8-truncates", "minivar/data.py", ".mul(127.5).round().to(torch.uint8)", ".mul(127.5).to(torch.uint8)",
     "float -> uint8 rounds down, not to the nearest level"),
    ("to-uint8-no-clamp", "minivar/data.py", "images.clamp(-1, 1).add(1)", "images.add(1)",
     "float -> uint8 without clamping: a decoder's overshoot past ±1 wraps around"),
    ("to-uint8-clamps-to-unit", "minivar/data.py", "images.clamp(-1, 1).add(1)", "images.clamp(0, 1).add(1)",
     "float -> uint8 clamps to [0, 1]: every dark pixel turns grey"),
    ("epoch-order-by-step", "minivar/data.py", "generator=self.generator(0, epoch))",
     "generator=self.generator(0, step))", "an epoch's order is seeded by the step that first asks: a resumed run "
     "sees other batches"),
    ("ragged-batch-kept", "minivar/data.py", "self.batches_per_epoch = n_rows // batch_size",
     "self.batches_per_epoch = (n_rows + batch_size - 1) // batch_size", "the ragged last batch of an epoch is kept"),
    ("cache-flips-vertically", "minivar/training/tokens.py", "x.flip(3) if flip else x", "x.flip(2) if flip else x",
     "the token cache's flipped half is mirrored top to bottom"),
    ("warmup-off-by-one", "minivar/training/optim.py", "return lr * (step + 1) / warmup_steps",
     "return lr * step / warmup_steps", "warm-up starts at 0 and reaches the peak a step late"),
    ("cosine-floor-at-zero", "minivar/training/optim.py",
     "lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))",
     "lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))", "the cosine decays to 0, not to 10% of the peak"),
    ("cosine-from-step-zero", "minivar/training/optim.py",
     "progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)", "progress = step / max(1, max_steps)",
     "the cosine counts from step 0, not from the end of warm-up"),
    ("fid-inputs-unit-range", "minivar/studies/metrics.py", "self.net(((x - 128) / 128)", "self.net((x / 255)",
     "Inception gets pixels in [0, 1], not (x − 128)/128"),
    ("fid-resize-align-corners", "minivar/studies/metrics.py", 'mode="bilinear", align_corners=False)',
     'mode="bilinear", align_corners=True)', "the resize to 299×299 aligns corner pixels, not pixel centres"),
    ("fid-biased-covariance", "minivar/studies/metrics.py", "return f.mean(0), torch.cov(f.T)",
     "return f.mean(0), torch.cov(f.T, correction=0)", "the features' covariance divides by N, not N − 1"),
    ("guard-ignores-sign", "minivar/training/divergence.py", "p.detach().abs().max().float()",
     "p.detach().max().float()", "the weight check sees only the largest positive weight"),
    ("guard-lets-nan-weights-through", "minivar/training/divergence.py", "elif not size <= self.weight_limit:",
     "elif size > self.weight_limit:", "NaN weights pass the weight check"),
    ("guard-lets-nan-loss-through", "minivar/training/divergence.py",
     "bad = ~(loss.detach().abs() <= self.loss_limit)", "bad = loss.detach().abs() > self.loss_limit",
     "a NaN loss passes the loss check"),
    ("guard-reports-last-bad-step", "minivar/training/divergence.py",
     "torch.where((self.first_bad < 0) & bad, step, self.first_bad)", "torch.where(bad, step, self.first_bad)",
     "the guard names the last bad step, not the first"),
    ("count-tokens-swapped", "minivar/studies/complexity.py", "tokens += b if cached else prefix",
     "tokens += prefix if cached else b", "the tokens processed with and without a cache are swapped"),
    ("count-mlp-once", "minivar/studies/complexity.py", "2 * (4 + 2 * mlp_ratio) * dim * dim * depth",
     "2 * (4 + mlp_ratio) * dim * dim * depth", "the linear FLOPs count one of the MLP's two matrices"),
    ("reseed-from-dead-codes", "minivar/training/codebook.py", "quantizer.nearest_code(u_BCss, exclude=dead)",
     "quantizer.nearest_code(u_BCss)", "re-seeding's residuals are left by every code, the dead ones too"),
    ("eval-batch-weighted-by-batch-size", "minivar/training/evaluation.py",
     "loss_per_scale(model, logits, tokens).cpu() * len(tokens)",
     "loss_per_scale(model, logits, tokens).cpu() * batch_size", "the evaluation counts a short last batch as full"),
    ("eval-scales-weighted-equally", "minivar/training/evaluation.py",
     "weights = [s * s / sum(s * s for s in model.cfg.scales) for s in model.cfg.scales]",
     "weights = [1 / len(model.cfg.scales) for s in model.cfg.scales]",
     "the overall cross-entropy weights every scale alike, not by its s² tokens"),
    ("unigram-in-bits", "minivar/training/evaluation.py", "-(p * p.log()).sum()", "-(p * p.log2()).sum()",
     "the unigram floor in bits, beside a cross-entropy in nats"),
    # The transformer block and head, the precision rules, weight decay, the EMA's copy.
    ("qk-norm-shared", "minivar/transformer.py", "self.k_norm(k.float())", "self.q_norm(k.float())",
     "keys are normalised with the queries' gain"),
    ("adaln-scale-without-one", "minivar/transformer.py", "return h_BLD * (1 + scale_B1D) + shift_B1D",
     "return h_BLD * scale_B1D + shift_B1D", "adaLN multiplies by the scale instead of by 1 + scale"),
    ("adaln-chunks-swapped", "minivar/transformer.py",
     "shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond_BD)",
     "shift1, scale1, gate1, scale2, shift2, gate2 = self.ada(cond_BD)", "the MLP's shift and scale swapped"),
    ("modulate-before-norm", "minivar/transformer.py", "self.mlp(modulate(self.norm2(x_BLD), shift2, scale2))",
     "self.mlp(self.norm2(modulate(x_BLD, shift2, scale2)))", "the MLP's input modulated before the norm, not after"),
    ("heads-merged-wrong", "minivar/transformer.py", "y.transpose(1, 2).reshape(B, L, D)", "y.reshape(B, L, D)",
     "the heads' outputs merged without moving the head axis back: positions and heads mixed"),
    ("head-skips-norm", "minivar/transformer.py", "modulate(self.norm(x_BLD.float()), shift, scale)",
     "modulate(x_BLD.float(), shift, scale)", "the head's adaptive layer norm forgets the norm"),
    ("head-autocast-on", "minivar/transformer.py", "with torch.autocast(x_BLD.device.type, enabled=False):",
     "with torch.autocast(x_BLD.device.type, enabled=True):", "the logits computed in bf16"),
    ("quantizer-keeps-bf16", "minivar/quantizer.py", "return self.quantize(f_BChw.float())",
     "return self.quantize(f_BChw)", "the quantizer picks codes on a bf16 encoder's output in bf16"),
    ("decay-every-matrix", "minivar/training/optim.py", 'isinstance(module, DECAYED) and name == "weight"',
     "p.ndim >= 2", "weight decay on every 2-D parameter: the class, level and position embeddings too"),
    ("ema-averages-the-live-model", "minivar/training/ema.py", "self.params = list(self.model.parameters())",
     "self.params = list(model.parameters())", "the average is taken of the model's own tensors: it never differs"),
]


# The exercises of notebooks/EXERCISES.md whose check is "which tests fail", made the way the
# exercise asks (`--exercises` runs them, listing every failing test): the answer to check against.
EXERCISES = [
    ("exercise-4-causal-mask", "minivar/mask.py", "return block_of_token[None, :] <= block_of_token[:, None]",
     "return torch.ones(len(block_of_token), len(block_of_token), dtype=torch.bool).tril()",
     "exercise 4: GPT's causal mask over the same positions"),
    ("exercise-4-no-mask", "minivar/mask.py", "return block_of_token[None, :] <= block_of_token[:, None]",
     "return torch.ones(len(block_of_token), len(block_of_token), dtype=torch.bool)", "exercise 4: no mask at all"),
    ("exercise-5-shifted-targets", "minivar/var.py",
     "F.cross_entropy(logits_BLV.flatten(0, 1), targets_BL.flatten())",
     "F.cross_entropy(logits_BLV[:, :-1].flatten(0, 1), targets_BL[:, 1:].flatten())",
     "exercise 5: targets shifted by one, as in GPT"),
    ("exercise-6-constant-guidance", "minivar/var.py", "return cfg_scale * k / max(len(self.cfg.scales) - 1, 1)",
     "return cfg_scale", "exercise 6: a constant guidance weight"),
    ("exercise-8-keep-more", "minivar/applications/editing.py", "(fraction_edited < 0.5)", "(fraction_edited < 0.8)",
     "exercise 8: keep a token unless 80% of its cell is edited"),
]


def scratch_copy(folder):
    """The project's files (no .git, no outputs), with ./data linked so that real-data tests still find it."""
    ignore = shutil.ignore_patterns(".git", "out", "out-*", "data", "__pycache__", "*.egg-info", ".pytest_cache",
                                    "samples.png")
    shutil.copytree(ROOT, folder, ignore=ignore, symlinks=True)
    if (ROOT / "data").exists():
        (folder / "data").symlink_to((ROOT / "data").resolve())


def run_fast_tests(folder, all_failures, timeout):
    cmd = [sys.executable, "-m", "pytest", "-m", "not slow", "-q", "-p", "no:cacheprovider", "--no-header",
           "-o", "addopts=", *([] if all_failures else ["-x"])]
    try:
        done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return ["(timed out)"]
    return re.findall(r"^FAILED (\S+)", done.stdout, re.M) + re.findall(r"^ERROR (\S+)", done.stdout, re.M)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated bug names (default: all)")
    p.add_argument("--exercises", action="store_true", help="plant the exercises' changes instead (implies "
                                                           "--all-failures)")
    p.add_argument("--all-failures", action="store_true", help="run the whole fast subset for each bug and list "
                                                               "every test that fails (slower)")
    p.add_argument("--timeout", type=int, default=300, help="seconds per run of the fast subset (default: 300)")
    args = p.parse_args(argv)
    pool = EXERCISES if args.exercises else BUGS
    args.all_failures = args.all_failures or args.exercises
    chosen = [b for b in pool if not args.only or b[0] in args.only.split(",")]
    survived = []
    with tempfile.TemporaryDirectory(prefix="minivar-bugs-") as tmp:
        folder = Path(tmp) / "minivar"
        scratch_copy(folder)
        for name, file, right, wrong, what in chosen:
            path = folder / file
            original = path.read_text()
            if original.count(right) != 1:
                print(f"{name:32s} NOT PLANTED: the line is not in {file} exactly once (did the code change?)")
                survived.append(name)
                continue
            path.write_text(original.replace(right, wrong))
            t0 = time.perf_counter()
            failed = run_fast_tests(folder, args.all_failures, args.timeout)
            path.write_text(original)
            verdict = ", ".join(failed) if failed else "SURVIVED"
            print(f"{name:32s} {time.perf_counter() - t0:5.0f} s  {verdict}\n{'':32s}        ({what})", flush=True)
            if not failed:
                survived.append(name)
    print(f"\n{len(chosen) - len(survived)} of {len(chosen)} planted bugs turn `pytest -m \"not slow\"` red"
          + (f"; survived: {', '.join(survived)}" if survived else ""))
    sys.exit(1 if survived else 0)


if __name__ == "__main__":
    main()
