"""How minivar's commands talk to a person: one line for a bad flag, checked numbers, Ctrl-C.

- OneLineParser: argparse, but a bad flag is answered with one line (what was wrong and
  where --help is), not the usage block and a traceback.
- Value checks used as argparse types: a flag that must be a finite positive number says
  so at parse time, before any work starts (`--lr inf` or `--cfg-scale nan` never train or
  sample); so does a number float32, the precision the models compute in, cannot hold
  (`--lr 1e39` overflows to inf, `--top-p 1e-46` rounds to 0), and a seed out of range.
- is_out_of_memory: whether an error is an allocation failure, which commands then say in one line.
- StopSignal: Ctrl-C (SIGINT) or SIGTERM only asks the training loop to stop; the loop
  finishes the step it is in, saves and exits, so a checkpoint never holds half a step.
  A second Ctrl-C quits at once, without saving.
- sigterm_like_ctrl_c: outside that loop (loading, tokenizing, FID statistics, sampling), SIGTERM
  stops a command the way Ctrl-C does: one line, exit status 130.
"""
import argparse
import math
import signal
import sys


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


FLOAT32_MAX, FLOAT32_TINY = 3.4028234e38, 1.1754944e-38  # the largest and the smallest normal float32


def _number(text, kind=float):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: need a finite number")
    if kind is float and value != 0 and not FLOAT32_TINY <= abs(value) <= FLOAT32_MAX:
        raise argparse.ArgumentTypeError(f"{text!r}: float32 cannot hold it (it would become "
                                         f"{'inf' if abs(value) > 1 else '0'}); give a number between "
                                         f"{FLOAT32_TINY:.3g} and {FLOAT32_MAX:.3g}")
    return value


def seed(text):
    """A seed NumPy accepts too: 0 to 2³² − 1."""
    value = _number(text, int)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{text!r}: need an integer from 0 to {2**32 - 1}")
    return value


def is_out_of_memory(error):
    """An allocation that failed: MemoryError, CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    text = str(error).lower()
    return isinstance(error, MemoryError) or isinstance(error, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text)


def finite(text):
    return _number(text)


def positive(text):
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: need a number above 0")
    return value


def non_negative(text):
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: need a number of 0 or more")
    return value


def positive_int(text):
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: need an integer of 1 or more")
    return value


def non_negative_int(text):
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: need an integer of 0 or more")
    return value


def below_one(text):
    value = _number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: need a number in [0, 1)")
    return value


def probability(text):
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: need a number in (0, 1]")
    return value


def sigterm_like_ctrl_c():
    """From here on, SIGINT and SIGTERM both raise KeyboardInterrupt, which every command answers
    with one line and exit status 130. (Python's own SIGTERM ends the process on the spot, with
    status 143 and not a word; a scheduler or `kill` stopping a run deserves the same as Ctrl-C.)"""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.default_int_handler)  # (it raises KeyboardInterrupt whatever the signal)


class StopSignal:
    """Inside `with StopSignal() as stop:`, Ctrl-C and SIGTERM set stop.requested instead of
    raising KeyboardInterrupt wherever Python happens to be (possibly between an optimizer
    step and the bookkeeping that goes with it). A second Ctrl-C exits at once."""

    def __enter__(self):
        self.requested = False
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        if self.requested:
            print("\nsecond interrupt: quitting without saving; the last checkpoint is kept", file=sys.stderr)
            raise SystemExit(130)
        self.requested = True
        print("\ninterrupt: stopping after this step, then saving (interrupt again to quit without saving)",
              file=sys.stderr)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False
