"""No code runs on load: a malicious pickle planted wherever a careless loader would read one is refused."""

import io
import pickle
import shutil

import numpy as np
import pytest
import torch

import vaekit
from vaekit import codec
from vaekit import data as vdata
from vaekit.errors import VaekitError


class Planted:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def torch_pickle(marker) -> bytes:
    buffer = io.BytesIO()
    torch.save({"weights": Planted(marker)}, buffer)
    return buffer.getvalue()


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "code-ran"


def test_the_planted_payload_does_run_code_when_unpickled(marker):
    pickle.loads(pickle.dumps(Planted(marker)))
    assert marker.exists()  # so the tests below, which see no marker, would see one if anything unpickled


@pytest.mark.parametrize("name", ["model.safetensors", "checkpoint.safetensors", "config.json"])
def test_a_run_file_replaced_by_a_pickle_is_refused(tiny_run, tmp_path, marker, name):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run_dir)
    (run_dir / name).write_bytes(torch_pickle(marker))
    with pytest.raises(VaekitError, match=name.replace(".", r"\.")):
        if name == "checkpoint.safetensors":
            vaekit.resume(run_dir, quiet=True)
        else:
            vaekit.load(run_dir)
    assert not marker.exists()


def test_pickles_beside_a_good_model_are_never_read(tiny_run, tmp_path, marker):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run_dir)
    for name in ("model.pt", "model.pth", "pytorch_model.bin", "checkpoint.pt", "model.pkl", "optimizer.pt"):
        (run_dir / name).write_bytes(torch_pickle(marker))
    vaekit.load(run_dir)
    assert not marker.exists()


def test_a_compressed_file_replaced_by_a_pickle_is_refused(tiny_run, marker):
    with pytest.raises(codec.CodecError, match="not a vaekit compressed file"):
        codec.decompress(tiny_run.model, torch_pickle(marker))
    with pytest.raises(codec.CodecError, match="not a vaekit compressed file"):
        codec.decompress(tiny_run.model, pickle.dumps(Planted(marker)))
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_data_arrays_holding_pickled_objects_are_refused(tmp_path, marker, suffix):
    path = tmp_path / f"objects{suffix}"
    objects = np.array([Planted(marker), Planted(marker)], dtype=object)
    if suffix == ".npy":
        np.save(path, objects, allow_pickle=True)
    else:
        np.savez(path, x=objects)
    with pytest.raises(VaekitError, match="objects"):
        vdata.load(str(path))
    assert not marker.exists()
