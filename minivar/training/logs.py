"""The training log, <out-dir>/<stage>_log.jsonl: one JSON line per log step and per evaluation,
and how a line reads on the terminal.

On --resume the log is cut back to the checkpoint's step: a run killed after its last
checkpoint logged steps that the resumed run will log again, and they must not appear twice.
"""
import json

from minivar.training.files import atomic_write


def open_log(path, resumed_step):
    """The stage's log: a fresh one, or, on --resume, cut back to the checkpoint's step (a run
    killed after its last checkpoint logged steps that the resumed run will log again)."""
    kept = []
    if resumed_step is not None and path.is_file():
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= resumed_step:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                pass  # a line cut short by the kill
    atomic_write(path, lambda f: f.write("".join(kept).encode()))
    return open(path, "a")


def write_line(log, row):
    if log is not None:
        log.write(json.dumps(row) + "\n")
        log.flush()


def fmt(v, names=None):
    """A number, or a list labelled by scale when there is one value per scale."""
    if not isinstance(v, list):
        return f"{v:.4g}"
    if names and len(names) == len(v):
        return "[" + " ".join(f"{n}: {x:.3g}" for n, x in zip(names, v)) + "]"
    return " ".join(f"{x:.3g}" for x in v)
