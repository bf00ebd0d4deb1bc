"""Pictures written by training, sampling and the benchmarks.

Figures are built as plain matplotlib `Figure` objects, not through pyplot: they are
written to files without touching the display backend, so this works on a headless
server and leaves a notebook's inline plots alone."""
from matplotlib.figure import Figure

from minivar.data import to_uint8
from minivar.training.checkpoint import atomic_write


def save_figure(fig, path, dpi=100):
    """A PNG written atomically, like every output: a killed write leaves the old file."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def to_numpy_image(x_3HW):
    return to_uint8(x_3HW.detach().float().cpu()).permute(1, 2, 0).numpy()


def save_reconstruction_grid(x_B3HW, recs, scales, path):
    """One row per image: the original, then the cumulative reconstruction after each scale."""
    B, K = len(x_B3HW), len(recs)
    fig = Figure(figsize=(1.2 * (K + 1), 1.2 * B + 0.3))
    axes = fig.subplots(B, K + 1, squeeze=False)
    for i in range(B):
        for j, img in enumerate([x_B3HW[i]] + [r[i] for r in recs]):
            axes[i, j].imshow(to_numpy_image(img))
            axes[i, j].axis("off")
    for j, title in enumerate(["original"] + [f"1..{s}×{s}" for s in scales]):
        axes[0, j].set_title(title, fontsize=7)
    fig.tight_layout(pad=0.2)
    save_figure(fig, path)


def save_sample_grid(images_B3HW, row_labels, n_per_row, path):
    """A grid with one labelled row per class."""
    rows = len(row_labels)
    fig = Figure(figsize=(1.1 * n_per_row + 1.0, 1.1 * rows))
    axes = fig.subplots(rows, n_per_row, squeeze=False)
    for r in range(rows):
        for c in range(n_per_row):
            axes[r, c].imshow(to_numpy_image(images_B3HW[r * n_per_row + c]))
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout(pad=0.2)
    save_figure(fig, path)
