"""Evaluation of a trained model on a data set: -ELBO and its parts, bits/dim, active units, a linear probe."""

from __future__ import annotations

import numpy as np
import torch

from vaekit.data import Dataset
from vaekit.models import VAE
from vaekit.trainer import EVAL_SEED, bits_per_dim, evaluate_elbo

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2016: a unit is active when Cov_x(E_q[z_j]) exceeds this
PROBE_MAX_ITEMS = 10_000


@torch.no_grad()
def encode_means(model: VAE, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and log-variances of model-space data, batch by batch."""
    parts = [model.encode(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat([p.mean for p in parts]), torch.cat([p.logvar for p in parts])


def evaluate(model: VAE, data: Dataset, probe: bool = True, seed: int = EVAL_SEED) -> dict[str, float | int | str]:
    """Per-example means in nats (and bits/dim) over `data`; Bernoulli models see one seeded binarisation."""
    x = model.prepare(data.x, torch.Generator().manual_seed(seed))
    result: dict[str, float | int | str] = {"examples": len(data), "likelihood": model.config.likelihood}
    if model.config.likelihood == "bernoulli":
        result["binarization"] = f"static draw, seed {seed}"
    elbo = evaluate_elbo(model, x, generator=torch.Generator().manual_seed(seed))
    result.update(elbo)
    bpd = bits_per_dim(elbo["neg_elbo"], model)  # None for continuous data: no code length
    if bpd is not None:
        result["bits_per_dim"] = bpd
    means, _ = encode_means(model, x)
    result["active_units"] = int((means.var(0) > ACTIVE_UNIT_THRESHOLD).sum()) if len(data) > 1 else 0
    result["latent_dim"] = model.latent_dim
    if probe and data.labels is not None:
        accuracy = probe_accuracy(means.numpy(), data.labels.numpy(), seed)
        if accuracy is not None:
            result["probe_accuracy"] = accuracy
    return result


def probe_accuracy(z: np.ndarray, labels: np.ndarray, seed: int = 0) -> float | None:
    """5-fold cross-validated accuracy of a logistic-regression probe on the latents.

    None when the labels cannot support it (one class, or a class with a single item).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(z) > PROBE_MAX_ITEMS:
        keep = np.random.default_rng(seed).choice(len(z), PROBE_MAX_ITEMS, replace=False)
        z, labels = z[keep], labels[keep]
    _, counts = np.unique(labels, return_counts=True)
    folds = min(5, counts.min())
    if folds < 2 or len(counts) < 2:
        return None
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(probe, z, labels, cv=cv).mean())
