"""Figures: image grids (samples, reconstructions, interpolations), loss curves, a latent scatter."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vaekit._atomic import atomic_path

MIN_CELL = 56  # small images (8x8 digits) are scaled up so a grid is readable


def grid_image(images: torch.Tensor, ncols: int, pad: int = 2) -> Image.Image:
    """Images in [0, 1], shape (N, C, H, W), tiled row by row on a white background."""
    n, c, h, w = images.shape
    scale = max(1, MIN_CELL // max(h, w))
    nrows = -(-n // ncols)
    canvas = np.full((c, nrows * (h + pad) + pad, ncols * (w + pad) + pad), 255, dtype=np.uint8)
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    for i in range(n):
        r, col = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        canvas[:, y : y + h, x : x + w] = pixels[i]
    image = Image.fromarray(canvas[0] if c == 1 else canvas.transpose(1, 2, 0))
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def save_grid(path: str | os.PathLike, images: torch.Tensor, ncols: int) -> None:
    with atomic_path(path) as tmp:
        grid_image(images, ncols).save(tmp, format="PNG")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_loss_plot(path: str | os.PathLike, metrics: list[dict[str, float]]) -> None:
    plt = _pyplot()
    epochs = [m["epoch"] for m in metrics]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [m["train_neg_elbo"] for m in metrics], label="train")
    ax.plot(epochs, [m["heldout_neg_elbo"] for m in metrics], label="held-out")
    ax.set(xlabel="epoch", ylabel="-ELBO (nats per example)", title="Training")
    ax.grid(alpha=0.3)
    ax.legend()
    _save_figure(fig, path)


def save_latent_scatter(
    path: str | os.PathLike, z: np.ndarray, labels: np.ndarray | None, label_names: list[str] | None
) -> None:
    """Held-out posterior means; the first two principal components when the latent space has more than two."""
    plt = _pyplot()
    if z.shape[1] > 2 and len(z) < 2:  # a single held-out item has no principal components
        z, axes = z[:, :2], ("z 0", "z 1")
    elif z.shape[1] > 2:
        from sklearn.decomposition import PCA

        z, axes = PCA(n_components=2).fit_transform(z), ("PC 1", "PC 2")
    elif z.shape[1] == 2:
        axes = ("z 0", "z 1")
    else:
        z, axes = np.column_stack([z[:, 0], np.zeros(len(z))]), ("z 0", "")
    fig, ax = plt.subplots(figsize=(6, 5))
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1], s=4, alpha=0.6)
    else:
        cmap = plt.get_cmap("tab10" if labels.max() < 10 else "tab20")
        for k in np.unique(labels):
            name = label_names[k] if label_names and k < len(label_names) else str(k)
            ax.scatter(*z[labels == k].T, s=4, alpha=0.6, color=cmap(k % cmap.N), label=name)
        ax.legend(markerscale=3, fontsize=7, loc="best")
    ax.set(xlabel=axes[0], ylabel=axes[1], title="Held-out latents (posterior means)")
    _save_figure(fig, path)


def _save_figure(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    _pyplot().close(fig)
