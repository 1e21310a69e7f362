"""Evaluation of a trained model on a data set: -ELBO and its parts, the importance-sampled negative
log-likelihood, bits/dim, active units, a linear probe."""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path

import numpy as np
import safetensors
import torch
from tqdm.auto import tqdm

from vaekit import io as model_io
from vaekit.data import Dataset
from vaekit.errors import VaekitError
from vaekit.importance import effective_sample_size
from vaekit.models import LatentVariableModel
from vaekit.parallel import imap_shards
from vaekit.trainer import EVAL_SEED, bits_per_dim, evaluate_elbo, labels_for

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2016: a unit is active when Cov_x(E_q[z_j]) exceeds this
PROBE_MAX_ITEMS = 10_000


@torch.no_grad()
def encode_means(
    model: LatentVariableModel, x: torch.Tensor, y: torch.Tensor | None = None, batch_size: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and log-variances of model-space data (labels y, for a conditional model), batch by batch."""
    parts = [
        model.encode(x[i : i + batch_size], None if y is None else y[i : i + batch_size])
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat([p.mean for p in parts]), torch.cat([p.logvar for p in parts])


def evaluate(
    model: LatentVariableModel,
    data: Dataset,
    probe: bool = True,
    seed: int = EVAL_SEED,
    nll_k: int | None = None,
    nll_checkpoint: str | os.PathLike | None = None,
    nll_workers: int | None = 1,
) -> dict[str, float | int | str]:
    """Per-example means in nats (and bits/dim) over `data`; Bernoulli models see one seeded binarisation.

    nll_k: also the importance-sampled negative log-likelihood with this many samples per item;
    nll_checkpoint: a file to save it in as it goes and to resume it from; nll_workers: processes that
    estimate it side by side (see negative_log_likelihood).
    """
    x = model.prepare(data.x, torch.Generator().manual_seed(seed))
    y = labels_for(model, data)
    result: dict[str, float | int | str] = {"examples": len(data), "likelihood": model.config.likelihood}
    if model.config.likelihood == "bernoulli":
        result["binarization"] = f"static draw, seed {seed}"
    elbo = evaluate_elbo(model, x, generator=torch.Generator().manual_seed(seed), y=y)
    result.update(elbo)
    bpd = bits_per_dim(elbo["neg_elbo"], model)  # None for continuous data: no code length
    if bpd is not None:
        result["bits_per_dim"] = bpd
    if nll_k is not None:
        result.update(negative_log_likelihood(model, x, nll_k, y, seed, checkpoint=nll_checkpoint, workers=nll_workers))
    means, _ = encode_means(model, x, y)
    result["active_units"] = int((means.var(0) > ACTIVE_UNIT_THRESHOLD).sum()) if len(data) > 1 else 0
    result["latent_dim"] = model.latent_dim
    if probe and data.labels is not None:
        accuracy = probe_accuracy(means.numpy(), data.labels.numpy(), seed)
        if accuracy is not None:
            result["probe_accuracy"] = accuracy
    return result


def negative_log_likelihood(
    model: LatentVariableModel,
    x: torch.Tensor,
    k: int,
    y: torch.Tensor | None = None,
    seed: int = EVAL_SEED,
    batch_size: int | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_seconds: float = 60.0,
    workers: int | None = 1,
) -> dict[str, float | int]:
    """Mean importance-sampled -log p(x) over model-space data x, in nats, with its standard error.

    `nll_stderr` is the standard error of the mean from the importance sampling alone (the items are
    fixed): sqrt(sum of the per-item squared standard errors) / n. `nll_ess_median` is the median over
    items of the weights' effective sample size (sum w)^2 / sum w^2: far below k, an item's estimate
    rests on a few samples and its log p(x) likely reads low (the NLL high): a larger k, or a better
    encoder, would move it.

    Each batch draws its samples from a generator of its own, seeded from `seed` and the batch's
    number, so the figures are the same however the batches are shared out: `workers` processes
    estimate batches side by side (None: one per core; the cores are shared out among them), which pays
    for long estimates (a deep model, k in the thousands), not for one that takes seconds. A model on a
    GPU is estimated in this process.

    With `checkpoint` (a file), the estimates so far are saved there about every `checkpoint_seconds`
    and at the end, and a call that finds the file goes on where it stopped, with the very samples an
    unbroken run draws. The file is refused for another model, data, k, seed or batch size.
    """
    batch_size = batch_size or max(1, min(len(x), 256))
    log_px, variance = torch.zeros(len(x), dtype=torch.float64), torch.zeros(len(x), dtype=torch.float64)
    done = 0
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        fingerprint = _fingerprint(model, x, y, k, seed, batch_size, SEEDING)
        done = _resume(checkpoint, fingerprint, log_px, variance)
        saved_at = time.monotonic()
    batches = [(start, min(start + batch_size, len(x))) for start in range(done, len(x), batch_size)]
    if x.device.type != "cpu":
        workers = 1
    estimates = imap_shards(_estimate_batch, (model, x, y, k, seed, batch_size), batches, workers)
    with tqdm(
        total=len(x),
        initial=done,
        unit="item",
        desc=f"log p(x), k={k}",
        leave=False,
        disable=None if progress else True,
    ) as bar:
        for (start, stop), (batch_log_px, batch_variance) in zip(batches, estimates, strict=True):
            log_px[start:stop], variance[start:stop] = batch_log_px, batch_variance
            bar.update(stop - start)
            done = stop
            if checkpoint is not None and (done == len(x) or time.monotonic() - saved_at >= checkpoint_seconds):
                _save_progress(checkpoint, fingerprint, done, log_px, variance)
                saved_at = time.monotonic()
    nll = -float(log_px.mean())
    result: dict[str, float | int] = {"nll": nll, "nll_stderr": math.sqrt(float(variance.sum())) / len(x), "nll_k": k}
    if k > 1 and len(x):
        result["nll_ess_median"] = float(effective_sample_size(variance, k).median())
    bpd = bits_per_dim(nll, model)
    if bpd is not None:
        result["nll_bits_per_dim"] = bpd
    return result


# how the samples are drawn, part of a checkpoint's fingerprint: files of 2026-12-01 and before drew every
# batch from one generator in turn, and are refused
SEEDING = "a generator per batch"


def _estimate_batch(shared: tuple, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x) and the variance of its estimate for the items start..stop (a task for `imap_shards`)."""
    model, x, y, k, seed, batch_size = shared
    number = start // batch_size
    batch_seed = int(np.random.SeedSequence([seed, number]).generate_state(1, np.uint64)[0] >> 1)
    generator = torch.Generator(x.device).manual_seed(batch_seed)
    with torch.no_grad():
        est = model.importance_sampled(x[start:stop].float(), k, None if y is None else y[start:stop], generator)
    return est.log_px.cpu(), est.stderr.cpu() ** 2


def _fingerprint(model: LatentVariableModel, x: torch.Tensor, y: torch.Tensor | None, *settings) -> str:
    """A digest of everything the estimates depend on: weights, data, labels and the sampling settings."""
    digest = hashlib.sha256(repr(settings).encode())
    tensors = [*sorted(model.state_dict().items()), ("x", x), ("y", y)]
    for name, tensor in tensors:
        if tensor is not None:
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _resume(path: Path, fingerprint: str, log_px, variance) -> int:
    """Fill in the estimates saved at `path`; return how many items are done."""
    if not path.exists():
        return 0
    try:
        with safetensors.safe_open(str(path), "pt") as f:  # one read: the metadata and the tensors
            metadata = f.metadata() or {}
            saved = {name: f.get_tensor(name) for name in ("log_px", "variance")}
        done = int(metadata["done"])
    except (safetensors.SafetensorError, OSError, ValueError, KeyError) as e:
        raise VaekitError(f"{path}: not a readable log-likelihood checkpoint ({e}); delete it to start over") from None
    if metadata.get("fingerprint") != fingerprint:
        raise VaekitError(
            f"{path}: saved for another model, data set, k, seed or batch size (or by a vaekit that drew its samples "
            "otherwise, of 2026-12-01 or before); delete it or choose another file"
        )
    log_px[:done], variance[:done] = saved["log_px"][:done], saved["variance"][:done]
    return done


def _save_progress(path: Path, fingerprint: str, done: int, log_px, variance) -> None:
    tensors = {"log_px": log_px, "variance": variance}
    model_io.save_weights(path, tensors, metadata={"fingerprint": fingerprint, "done": str(done)})


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
