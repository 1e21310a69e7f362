"""Two processes through torchrun (gloo, CPU) train the same model as one process, and resume works."""

import json
import subprocess
import sys

import torch
from safetensors.torch import load_file

TINY = [
    "--hidden",
    "16",
    "--latent",
    "2",
    "--patience",
    "0",
    "--quiet",
    "--batch-size",
    "100",
    "--precision",
    "fp32",
    "--lr-decay",
    "0",
]


def vaekit(*args):
    result = subprocess.run([sys.executable, "-m", "vaekit", *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result


def final_parameters(run_dir):
    tensors = load_file(str(run_dir / "checkpoint.safetensors"))
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


def assert_close(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k


def test_two_processes_match_one_and_resume(tmp_path):
    vaekit("train", "--out", tmp_path / "one", "--epochs", 2, "--binarize", "dynamic", *TINY)
    vaekit("train", "--out", tmp_path / "two", "--epochs", 2, "--binarize", "dynamic", "--nproc", 2, *TINY)
    one, two = final_parameters(tmp_path / "one"), final_parameters(tmp_path / "two")
    assert_close(one, two)
    assert any(not torch.equal(one[k], two[k]) for k in one)  # really two processes: sums in another order
    metrics_one = (tmp_path / "one" / "metrics.csv").read_text().splitlines()
    metrics_two = (tmp_path / "two" / "metrics.csv").read_text().splitlines()
    assert len(metrics_one) == len(metrics_two) == 3  # header + 2 epochs, written once (rank 0 only)

    # resume under torchrun: a 1-epoch run extended to 2 epochs equals the 2-epoch run (constant learning rate)
    vaekit("train", "--out", tmp_path / "cut", "--epochs", 1, "--binarize", "dynamic", *TINY)
    config_path = tmp_path / "cut" / "config.json"
    config = json.loads(config_path.read_text())
    config["training"]["epochs"] = 2
    config_path.write_text(json.dumps(config))
    vaekit("train", "--resume", tmp_path / "cut", "--nproc", 2, "--quiet")
    assert_close(final_parameters(tmp_path / "cut"), one)
