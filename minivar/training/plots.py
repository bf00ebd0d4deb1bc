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


def save_sample_grid(images_B3HW, row_labels, n_per_row, path, column_labels=None):
    """A grid with one labelled row per class (and, if given, a label over each column)."""
    rows = len(row_labels)
    fig = Figure(figsize=(1.1 * n_per_row + 1.0, 1.1 * rows + (0.25 if column_labels else 0)))
    axes = fig.subplots(rows, n_per_row, squeeze=False)
    for r in range(rows):
        for c in range(n_per_row):
            axes[r, c].imshow(to_numpy_image(images_B3HW[r * n_per_row + c]))
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=8)
    for c, label in enumerate(column_labels or []):
        axes[0, c].set_title(label, fontsize=8)
    fig.tight_layout(pad=0.2)
    save_figure(fig, path)


def save_sequence_and_mask(path, scales=(1, 2, 3, 4, 5, 6, 8)):
    """The README's picture of VAR: the training sequence, what each block predicts, and the
    block-causal mask over it (mask.py), coloured by scale."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    from minivar.mask import block_causal_mask, scale_block_sizes
    sizes = scale_block_sizes(scales)
    colours = colormaps["viridis"](np.linspace(0.1, 0.9, len(scales)))
    fig = Figure(figsize=(11, 4.6))
    strip, grid = fig.add_gridspec(1, 2, width_ratios=(1.35, 1)).subplots()
    start = 0
    for k, (side, size) in enumerate(zip(scales, sizes)):
        inputs = "class" if k == 0 else f"F{k} resized\nto {side}×{side}"
        for row, label, alpha in ((1, inputs, 0.55), (0, f"{side}×{side}\nmap", 0.9)):
            strip.add_patch(Rectangle((start, row), size, 0.8, color=colours[k], alpha=alpha))
            if size >= 16:  # the small blocks have no room for a label
                strip.text(start + size / 2, row + 0.4, label, ha="center", va="center", fontsize=7)
        start += size
    strip.set(xlim=(0, start), ylim=(-0.2, 2.0), yticks=[0.4, 1.4], yticklabels=["predicts", "input"],
              xlabel=f"sequence position (L = {start}; blocks of 1, 4, 9, 16, 25, 36, 64 tokens)",
              title="one training sequence: block k's input, the reconstruction F after the\n"
                    "coarser scales, predicts the whole k-th token map at once")
    mask = block_causal_mask(sizes).numpy()
    level = np.repeat(np.arange(len(scales)), sizes)
    image = np.ones((start, start, 4))
    image[mask] = colours[np.broadcast_to(level[:, None], mask.shape)[mask]]
    grid.imshow(image, interpolation="nearest")
    grid.set(title="block-causal mask: query i may attend to key j\niff scale(j) ≤ scale(i)",
             xlabel="key position j", ylabel="query position i")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
