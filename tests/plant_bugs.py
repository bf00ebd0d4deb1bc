"""Plant one-line bugs in a scratch copy of the project, one at a time, and see which test catches each.

    python tests/plant_bugs.py                 # every bug below, against `pytest -m "not slow"`
    python tests/plant_bugs.py --only temperature,residual --all-failures

A test suite earns trust by failing when the algorithm breaks. Each entry of BUGS is a plausible
one-line mistake in a step a student reads (the quantizer, the mask, VAR's forward and sampling
passes, the sampler, the AR baseline, editing, training); for each, this copies the project
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
