"""Stopping a run that blew up before it saves a checkpoint of the blow-up.

A learning rate far too high shows first in the loss (not a finite number, or 10⁴ times its
first value), but one step can also throw the weights far away while the loss of that step,
computed before its update, still looks fine. So before any checkpoint replaces the last
one, the guard checks three things: the losses seen since the last check, the weights as
they are now (finite, and no larger than 10⁴ times their size at the start of this run,
plus 1), and the numbers the evaluation just printed. If any fails, the run stops with one
line and the checkpoint on disk stays the last good one; the line says which that is (a step
of this run, what the file held before the run, or none at all).

The loss flag lives on the device and is read only where the loop reads something anyway
(a log line, a checkpoint), so a GPU is never made to wait for it step by step. Under
torchrun every process checks at the same steps and all stop together.
"""
import math
import os

import torch

from minivar.training import distributed


class Diverged(Exception):
    """The loss, the weights or the evaluation stopped being sane numbers."""


def largest_weight(model):
    """max |w| over every parameter: NaN if any weight is NaN."""
    return torch.stack([p.detach().abs().max().float() for p in model.parameters()]).max().item()


def file_identity(path):
    """(inode, modification time) of a file, None if there is none: every checkpoint write is a
    new file renamed into place (files.atomic_write), so a changed identity means a new save."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_ino, status.st_mtime_ns


def not_finite(results):
    """The names of an evaluation's results (numbers or lists of numbers) that hold a NaN or an inf."""
    return [k for k, v in results.items() if not all(math.isfinite(x) for x in (v if isinstance(v, list) else [v]))]


class DivergenceGuard:
    def __init__(self, kind, model, device, lr, ckpt_path):
        self.kind, self.model, self.lr, self.ckpt_path = kind, model, lr, ckpt_path
        self.file_at_start = file_identity(ckpt_path)  # to say, if the run stops, what the file still holds
        self.weight_limit = 1e4 * (largest_weight(model) + 1)
        self.first_bad = torch.tensor(-1, device=device)  # the first step whose loss failed, -1 if none
        self.loss_limit = None

    def watch(self, step, loss):
        """After each step: remember (on the device) whether this step's loss was sane."""
        if self.loss_limit is None:
            self.loss_limit = 1e4 * (loss.detach().abs() + 1)
        bad = ~(loss.detach().abs() <= self.loss_limit)  # NaN fails <= too
        self.first_bad = torch.where((self.first_bad < 0) & bad, step, self.first_bad)

    def check(self, step):
        """Before a log line or a checkpoint: raise Diverged if the loss or the weights went wrong."""
        bad_loss = self.first_bad.item()
        size = largest_weight(self.model)
        problem = ""
        if bad_loss >= 0:
            problem = f"the {self.kind} loss was not a finite number, or 10⁴ times its start, at step {bad_loss + 1}"
        elif not size <= self.weight_limit:
            problem = f"after step {step} the {self.kind} weights reached {size:.3g} (at the start: " \
                      f"{self.weight_limit / 1e4 - 1:.3g})"
        if distributed.any_rank(bool(problem)):
            self.stop(problem or "another process diverged")

    def check_results(self, results, main):
        """After an evaluation (run by rank 0 only): every number it printed must be finite."""
        names = not_finite(results) if main else []
        if distributed.any_rank(bool(names)):
            self.stop(f"the {self.kind} evaluation gave {', '.join(names)} that are not finite numbers" if names
                      else "the evaluation diverged")

    def stop(self, problem):
        now, path = file_identity(self.ckpt_path), self.ckpt_path
        kept = f"nothing was saved: {path} was never written" if now is None else \
            f"{path} was not overwritten: it holds what it held before this run started" if now == self.file_at_start \
            else f"{path} was not overwritten: it keeps the last good step"
        raise Diverged(f"{problem}: training diverged (peak learning rate {self.lr:g}); lower --lr or --grad-clip. "
                       f"{kept}")
