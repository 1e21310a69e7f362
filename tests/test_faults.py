"""Faults during training: a run killed with SIGKILL at any moment stays loadable and resumes to the same model."""

import csv
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import vaekit
from vaekit.errors import ModelFileError

# fp32 for both runs: `auto`'s timed choice could differ between them on a busy machine (it did, beside a benchmark)
OPTIONS = ["--data", "digits", "--epochs", "20", "--hidden", "16", "--latent", "2", "--patience", "0", "--quiet",
           "--precision", "fp32"]  # fmt: skip


def start_training(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vaekit", "train", *args], stderr=subprocess.PIPE, text=True)


def wait_for(path, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"training ended before writing {path.name}: {process.stderr.read()}"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.002)


def assert_loadable_or_clearly_not_yet(run_dir) -> None:
    try:
        model = vaekit.load(run_dir)
    except ModelFileError as error:  # killed before the first epoch ended: said plainly, never a traceback
        assert "model.safetensors" in str(error)
    else:
        assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    options = dict(epochs=20, hidden=(16,), latent_dim=2, patience=None, quiet=True, precision="fp32")
    reference = vaekit.train("digits", tmp_path / "reference", **options).run_dir  # OPTIONS' run, uninterrupted

    run_dir = tmp_path / "killed"
    process = start_training(*OPTIONS, "--out", str(run_dir))
    wait_for(run_dir / "checkpoint.safetensors", process)  # the first kill lands just after the first save
    kills, rng = 0, random.Random(0)
    while process.poll() is None:
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
        kills += 1
        assert_loadable_or_clearly_not_yet(run_dir)
        process = start_training("--resume", str(run_dir), "--quiet")
        if kills < 2:
            time.sleep(rng.uniform(1.0, 3.0))  # at some moment of start-up, training or saving
        else:
            assert process.wait() == 0, process.stderr.read()
    assert process.returncode == 0, process.stderr.read()
    assert kills >= 1

    for name in ("checkpoint.safetensors", "model.safetensors"):
        a, b = load_file(reference / name), load_file(run_dir / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert heldout_curve(reference) == heldout_curve(run_dir)


def heldout_curve(run_dir) -> list[tuple[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(row["step"], row["heldout_neg_elbo"]) for row in csv.DictReader(f)]
