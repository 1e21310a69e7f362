"""A trained model is a folder: config.json (plain data) + model.safetensors (weights). Never pickle.

The training checkpoint (checkpoint.safetensors) lives in the same folder and holds what resuming
needs: weights, optimizer moments, random-number-generator states and counters.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import safetensors
import torch
from safetensors.torch import load_file, save_file

from vaekit import __version__
from vaekit._atomic import atomic_path, write_text
from vaekit.errors import ModelFileError
from vaekit.models import LatentVariableModel, ModelConfig, build

CONFIG, WEIGHTS = "config.json", "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"
FORMAT = "vaekit-run"


def save_config(run_dir: str | os.PathLike, model: LatentVariableModel, **sections: Any) -> None:
    """Write config.json: the model's architecture and data spec, plus any further sections (training, data)."""
    config = {"format": FORMAT, "vaekit_version": __version__, "model": model.config.to_dict(), **sections}
    write_text(Path(run_dir) / CONFIG, json.dumps(config, indent=2) + "\n")


def update_config(run_dir: str | os.PathLike, **sections: Any) -> None:
    """Rewrite config.json with these sections replaced or added, the others as they were."""
    config = read_config(run_dir)
    config.update(sections)
    write_text(Path(run_dir) / CONFIG, json.dumps(config, indent=2) + "\n")


def save_weights(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    if not run_dir.is_dir():
        raise ModelFileError(f"{run_dir}: no such run folder")
    if not path.is_file():
        raise ModelFileError(f"{run_dir}: not a vaekit run folder (no {CONFIG})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: corrupt JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a vaekit run configuration")
    return config


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelFileError(f"{path}: missing")
    try:
        return load_file(str(path))
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{path}: corrupt safetensors file ({e})") from None


def load(run_dir: str | os.PathLike) -> LatentVariableModel:
    """Rebuild a trained model from its run folder, in evaluation mode."""
    config = read_config(run_dir)
    path = Path(run_dir) / WEIGHTS
    try:
        model_config = ModelConfig.from_dict(config.get("model"))
        with torch.device("meta"):  # shapes without memory: a corrupt config never allocates a huge model
            skeleton = build(model_config)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{Path(run_dir) / CONFIG}: invalid model section ({e})") from None
    tensors = read_weights(path)
    check_weights(skeleton.state_dict(), tensors, path)
    model = build(model_config)
    model.load_state_dict(tensors)
    return model.eval()


def check_weights(expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Raise ModelFileError naming the first tensor that is missing, extra, or of another shape or dtype."""
    for name, value in expected.items():
        if name not in tensors:
            raise ModelFileError(f"{path}: weights do not match the config (no tensor {name!r})")
        if tensors[name].shape != value.shape or tensors[name].dtype != value.dtype:
            raise ModelFileError(
                f"{path}: weights do not match the config ({name!r} is {tensors[name].dtype} of shape "
                f"{tuple(tensors[name].shape)}, expected {value.dtype} of shape {tuple(value.shape)})"
            )
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise ModelFileError(f"{path}: weights do not match the config (unexpected tensor {extra[0]!r})")


def load_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Copy weights into `model` after `check_weights`."""
    check_weights(model.state_dict(), tensors, path)
    model.load_state_dict(tensors)


def save_checkpoint(
    run_dir: Path,
    model: LatentVariableModel,
    optimizer: torch.optim.Optimizer,
    rng: dict[str, torch.Tensor],
    state: dict[str, Any],
) -> None:
    """One safetensors file, written atomically: weights, optimizer moments, RNG states, and the
    counters and optimizer settings as JSON in its metadata, so a crash never leaves them out of step."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for index, moments in opt["state"].items():
        tensors.update({f"optim.{index}.{k}": torch.as_tensor(v) for k, v in moments.items()})
    tensors.update({f"rng.{k}": v for k, v in rng.items()})
    metadata = {"state": json.dumps(state), "param_groups": json.dumps(opt["param_groups"])}
    save_weights(run_dir / CHECKPOINT, tensors, metadata)


def load_checkpoint(
    run_dir: Path, model: LatentVariableModel, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Restore model and optimizer in place; return (RNG states, counters)."""
    path = run_dir / CHECKPOINT
    tensors = read_weights(path)
    try:
        with safetensors.safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        state, param_groups = json.loads(metadata["state"]), json.loads(metadata["param_groups"])
    except (KeyError, json.JSONDecodeError, safetensors.SafetensorError) as e:
        raise ModelFileError(f"{path}: not a vaekit checkpoint ({e})") from None
    load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            moments.setdefault(int(index), {})[name] = value
    try:
        optimizer.load_state_dict({"state": moments, "param_groups": param_groups})
    except ValueError as e:  # e.g. a weight-decay run checkpointed before biases and gains left the decay
        raise ModelFileError(f"{path}: its optimizer state does not fit this run's optimizer ({e})") from None
    rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
    return rng, state
