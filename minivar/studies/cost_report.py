"""Tables and plots of the two cost studies: generating (complexity.py) and training
(training_cost.py). Figures are matplotlib Figures written atomically (plots.save_figure);
the notebooks display the same functions' output.
"""
import itertools

from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from minivar.training.plots import save_figure

MEASURED = ("train_s", "forward_s", "train_peak_mib", "forward_peak_mib")  # what training_cost measures per run


def save_generation_plot(result, path):
    """Log-log: counted attention FLOPs and sequential steps; measured time at each batch size."""
    grids, batches = result["grids"], result["batch_sizes"]
    fig = Figure(figsize=(4.2 * (2 + len(batches)), 3.6))
    axes = fig.subplots(1, 2 + len(batches))
    styles = {"ar_nocache": "C3--", "ar_cache": "C3-", "var_nocache": "C0--", "var_cache": "C0-"}
    for s in result["counted"]:  # the samplers
        slope = result["counted_slopes"][s]["attention_flops"]
        axes[0].loglog(grids, [result["counted"][s][str(n)]["attention_flops"] for n in grids], styles[s],
                       marker="o", ms=3, label=f"{s}  ~n^{slope:.1f}")
    for s in ("ar_cache", "var_cache"):
        slope = result["counted_slopes"][s]["steps"]
        axes[1].loglog(grids, [result["counted"][s][str(n)]["steps"] for n in grids], styles[s], marker="o", ms=3,
                       label=f"{s.split('_')[0].upper()}  ~n^{slope:.1f}")
    axes[0].set_title("attention FLOPs per image (counted)", fontsize=9)
    axes[1].set_title("sequential steps (counted)", fontsize=9)
    for ax, b in zip(axes[2:], batches):
        for s in result["counted"]:  # the samplers
            pts = [(r["n"], r["seconds"]) for r in result["measured"]
                   if r["sampler"] == s and r["batch"] == b and r["seconds"] is not None]
            if pts:
                fit = result["measured_slopes"].get(f"{s}_b{b}")
                ax.loglog(*zip(*pts), styles[s], marker="o", ms=3,
                          label=s + (f"  ~n^{fit['slope']:.1f}" if fit else ""))
        ax.set_title(f"generation time, batch {b} (measured, s)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("token map side n")
        ax.set_xticks(grids, [str(n) for n in grids])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"AR vs VAR, width {result['dim']}, depth {result['depth']}, on {result['machine']['device']}",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def print_generation_table(result):
    seconds = {(r["sampler"], r["n"], r["batch"]): r for r in result["measured"]}
    head = f"{'n':>3} {'sampler':12} {'steps':>6} {'tokens':>8} {'attn GFLOP':>11} {'total GFLOP':>12}"
    print(head + "".join(f" {'t(b=' + str(b) + ')':>10}" for b in result["batch_sizes"]))
    for n in result["grids"]:
        for s in result["counted"]:  # the samplers
            c = result["counted"][s][str(n)]
            line = f"{n:3d} {s:12} {c['steps']:6d} {c['tokens']:8d} {c['attention_flops'] / 1e9:11.3f} " \
                   f"{c['total_flops'] / 1e9:12.3f}"
            for b in result["batch_sizes"]:
                r = seconds.get((s, n, b))
                line += f" {r['seconds']:9.4f}s" if r and r["seconds"] is not None else f" {'skipped':>10}"
            print(line)
    print("slopes (counted attention FLOPs): " +
          ", ".join(f"{s} {v['attention_flops']:.2f}" for s, v in result["counted_slopes"].items()))
    print("slopes (measured time): " +
          ", ".join(f"{k} {v['slope']:.2f}" for k, v in result["measured_slopes"].items()))
    print_ratios(result["ratios"])


def print_ratios(ratios):
    """AR time over VAR (cached) time, at each measured size and batch."""
    fmt = lambda x: f"{x:6.2f}" if x is not None else "  (not timed)"
    for r in ratios:
        print(f"n={r['n']:2d}, batch {r['batch']:3d}: AR-cache / VAR-cache time {fmt(r['ar_cache_over_var_cache'])}, "
              f"AR-no-cache / VAR-cache {fmt(r['ar_nocache_over_var_cache'])}")


def save_training_plot(result, path):
    """Counted attention FLOPs and share of the L² pairs; measured seconds per image and peak memory."""
    grids, c, machine = result["grids"], result["counted"], result["machine"]
    axes = (fig := Figure(figsize=(17, 4.2))).subplots(1, 4)
    color = {"ar_causal": "C3", "ar_flex": "C1", "var_dense": "C0", "var_flex": "C2"}
    for v in result["variants"]:
        slope = result["counted_slopes"].get(v, {}).get("computed_attention_flops", float("nan"))
        axes[0].loglog(grids, [c[v][str(n)]["computed_attention_flops"] for n in grids], color[v] + "-", marker="o",
                       ms=3, label=f"{v} computed ~n^{slope:.2f}")
        axes[0].loglog(grids, [c[v][str(n)]["attention_flops"] for n in grids], color[v] + ":", label=f"{v} allowed")
        axes[1].semilogx(grids, [c[v][str(n)]["computed_pairs"] / c[v][str(n)]["tokens"] ** 2 for n in grids],
                         color[v] + "-", marker="o", ms=3, label=f"{v} computed")
        axes[1].semilogx(grids, [c[v][str(n)]["density"] for n in grids], color[v] + ":", label=f"{v} allowed")
        for (ax, key), b in itertools.product(zip(axes[[2, 2, 3, 3]], MEASURED), result["batch_sizes"]):
            pts = [(r["n"], r[key] / (b if key.endswith("_s") else 1)) for r in result["measured"]
                   if r["variant"] == v and r["batch"] == b and r.get(key)]
            if pts:  # training solid, forward dashed; one marker per batch size
                ax.loglog(*zip(*pts), color[v] + ("-" if key.startswith("train") else "--"), ms=4,
                          marker="os^vD"[result["batch_sizes"].index(b) % 5], label=f"{v} {key.split('_')[0]} b{b}")
    titles = ("attention FLOPs per image, fwd+bwd (counted)", "pairs computed, allowed: share of L² (counted)",
              "seconds per image: training step, forward", "peak tensor MiB: training step, forward")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9), ax.set_xlabel("map side n"), ax.set_xticks(grids, [str(n) for n in grids])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a panel is empty when everything was skipped
            ax.legend(fontsize=6)
    fig.suptitle(f"training cost, AR vs VAR: width {result['dim']}, depth {result['depth']}, heads {result['heads']}, "
                 f"on {machine['gpu'] or machine['cpu']} ({machine['threads']} threads)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def print_training_table(result):
    at = {(r["variant"], r["n"], r["batch"]): r for r in result["measured"]}
    print(f"{'n':>3} {'variant':9} {'L':>6} {'allowed':>7} {'computed':>8} {'GFLOP':>8} {'batch':>5} "
          f"{'train s':>8} {'fwd s':>8} {'train MiB':>9} {'fwd MiB':>9}")
    for n, v, b in itertools.product(result["grids"], result["variants"], result["batch_sizes"]):
        c, r = result["counted"][v][str(n)], at[(v, n, b)]
        line = f"{n:3d} {v:9} {c['tokens']:6d} {c['density']:7.3f} {c['computed_pairs'] / c['tokens'] ** 2:8.3f} " \
               f"{c['computed_total_flops'] / 1e9:8.2f} {b:5d} "
        if r["skipped"]:
            print(line + f"skipped: {r['skipped']}")
            continue
        cells = [f"{r[k]:{spec}}" if r[k] is not None else "-".rjust(int(spec[0]))
                 for k, spec in zip(MEASURED, ("8.3f", "8.3f", "9.0f", "9.0f"))]
        print(line + " ".join(cells) + (f"  (training skipped: {r['train_skipped']})" if r["train_skipped"] else ""))
    print("(allowed, computed: pairs / L²; GFLOP: computed, per image, forward+backward; MiB: peak tensor memory)")
    print("counted slopes (computed attention FLOPs): " + ", ".join(
        f"{v} {s['computed_attention_flops']:.2f}" for v, s in result["counted_slopes"].items()))
    for name, keys in result["measured_slopes"].items():
        print(f"measured slopes {name}: " + ", ".join(f"{k} {s['slope']:.2f}" for k, s in keys.items()))
    for r in result["ratios"]:
        print(f"n={r['n']:2d} batch {r['batch']}: " + ", ".join(f"{k} {x:.2f}" for k, x in r.items()
                                                                 if k not in ("n", "batch")))
