"""The recipe study's trials: what each changes in the cpu preset's VAR, why it was chosen, and
which of them `combined` takes (python -m minivar.studies.recipe runs them)."""
import json
from pathlib import Path

from minivar.training.presets import PRESETS, run_settings

NOISE = 1.0  # FID differences below this are noise at 1,000 samples (results/README.md)
CE_NOISE = 0.02  # test cross-entropy differences below this are noise between two runs (results/README.md)

# name -> (why, change: the preset's VAR training settings and model settings -> the trial's)
TRIALS = {
    "base": ("the preset as it is: the baseline every trial is compared with", lambda t, m: ({}, {})),
    "lr2x": ("twice the peak learning rate: the one change this project measured helping at this budget "
             "(2.5 FID at 1,000 samples, before the core's weight-decay change)",
             lambda t, m: ({"lr": 2 * t["lr"]}, {})),
    "lr3x": ("three times the peak learning rate: is twice already past the best?", lambda t, m: ({"lr": 3 * t["lr"]}, {})),
    "lr5x": ("five times the peak learning rate: three times still beat twice on test loss (4.799 against 4.820), "
             "so the best lies higher or between", lambda t, m: ({"lr": 5 * t["lr"]}, {})),
    "batch2x": ("twice the batch at equal seconds (fewer steps): a less noisy gradient, as large-batch VAR "
                "training uses", lambda t, m: ({"batch_size": 2 * t["batch_size"]}, {})),
    "batch-half": ("half the batch at equal seconds (more steps): the test loss was still falling at the end "
                   "of the preset's steps, so more, noisier steps may pay", lambda t, m: ({"batch_size": t["batch_size"] // 2}, {})),
    "shallower": ("two blocks fewer at equal seconds (more steps): at a budget this small a smaller model trained "
                  "longer can win (compute-optimal scaling)", lambda t, m: ({}, {"depth": m["depth"] - 2})),
    "ema0.99": ("a shorter moving average (about 100 steps instead of 1,000): the 0.999 average reaches back into "
                "the first, poor steps of a 1,700-step run", lambda t, m: ({"ema_decay": 0.99}, {})),
}


def preset_settings(preset):
    train, model = PRESETS[preset]["var"]
    defaults = run_settings("var", {"preset": preset})
    return {**vars(defaults[0]), **train}, {**vars(defaults[1]), **model}


def trial_changes(name, preset, results_dir):
    """(training flags, model flags) of a trial: its change to the preset; for `combined`, every single
    change that helped (for each setting, the one with the lowest test loss among those)."""
    train, model = preset_settings(preset)
    if name != "combined":
        return TRIALS[name][1](train, model)
    done = {n: read_result(results_dir, n) for n in TRIALS}
    if any(r is None for r in done.values()):
        raise ValueError("combined needs every single-change trial finished first: " +
                         ", ".join(n for n, r in done.items() if r is None) + " not yet")
    helped = sorted((sampled_ce(r), n) for n, r in done.items() if n != "base" and helps(r, done["base"]))
    changes, taken = ({}, {}), set()
    for _, n in helped:  # lowest loss first: a setting is taken from the trial that moved it best
        for part, flags in zip(changes, TRIALS[n][1](train, model)):
            for key, value in flags.items():
                if key not in taken:
                    part[key], taken = value, taken | {key}
    return changes


def sampled_ce(result):
    """Test cross-entropy of the weights samples come from: the moving average's where there is one."""
    return result["test_ce_ema"] if result.get("test_ce_ema") is not None else result["test_ce"]


def helps(result, base):
    """A change helped if its FID beat the baseline's by more than the noise, or if its test loss did
    while its FID stayed within the noise: 1,000 samples cannot resolve a gain of a nat's few hundredths,
    the test loss (on 2,000 images, every token) can."""
    fid, ce = result["best_fid"] - base["best_fid"], sampled_ce(result) - sampled_ce(base)
    return fid < -NOISE or (ce < -CE_NOISE and fid <= NOISE)


def read_result(results_dir, name):
    path = Path(results_dir) / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None
