"""Every command end to end on a tiny model, and the one-line errors bad input gets."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vaekit.cli import build_parser, main


def run_cli(*args):
    return main([str(a) for a in args])


def test_every_command_has_help_with_an_example(capsys):
    commands = ["train", "sample", "reconstruct", "interpolate", "traverse", "encode", "evaluate"]
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([name, "--help"])
        assert exit_info.value.code == 0
        assert f"example:\n  vaekit {name}" in capsys.readouterr().out


def test_train_command_writes_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("train", "--out", out, "--epochs", 1, "--hidden", "16", "--latent", 2, "--quiet") == 0
    assert (out / "model.safetensors").is_file() and (out / "samples.png").is_file()
    assert "best held-out -ELBO" in capsys.readouterr().out


def test_sample_png_and_npy(tiny_run, tmp_path):
    assert run_cli("sample", tiny_run.run_dir, "-n", 9, "--temperature", 0.7, "-o", tmp_path / "s.png") == 0
    image = Image.open(tmp_path / "s.png")
    assert image.mode == "L" and image.width == image.height
    assert run_cli("sample", tiny_run.run_dir, "-n", 5, "--draw", "-o", tmp_path / "s.npy") == 0
    values = np.load(tmp_path / "s.npy")
    assert values.shape == (5, 1, 8, 8) and values.min() >= 0 and values.max() <= 16
    assert np.array_equal(values, np.round(values))  # drawn items are levels


def test_reconstruct_interpolate_traverse(tiny_run, tmp_path):
    run = tiny_run.run_dir
    assert run_cli("reconstruct", run, "--data", "digits", "-n", 4, "-o", tmp_path / "r.npy") == 0
    assert np.load(tmp_path / "r.npy").shape == (4, 1, 8, 8)
    assert run_cli("reconstruct", run, "-o", tmp_path / "r.png") == 0
    assert (
        run_cli(
            "interpolate",
            run,
            "--data",
            "digits",
            "--from",
            0,
            "--to",
            1,
            "--steps",
            5,
            "--slerp",
            "-o",
            tmp_path / "i.npy",
        )
        == 0
    )
    path = np.load(tmp_path / "i.npy")
    assert path.shape == (5, 1, 8, 8)
    assert (
        run_cli(
            "traverse",
            run,
            "--data",
            "digits",
            "--index",
            2,
            "--dims",
            "0,1",
            "--range",
            2,
            "--steps",
            4,
            "-o",
            tmp_path / "t.npy",
        )
        == 0
    )
    assert np.load(tmp_path / "t.npy").shape == (8, 1, 8, 8)


def test_encode_formats(tiny_run, tmp_path):
    run = tiny_run.run_dir
    assert run_cli("encode", run, "--data", "digits", "-o", tmp_path / "z.npy") == 0
    assert np.load(tmp_path / "z.npy").shape == (300, 4)
    assert (
        run_cli("encode", run, "--data", "digits", "--split", "train", "--logvar", "--labels", "-o", tmp_path / "z.npz")
        == 0
    )
    z = np.load(tmp_path / "z.npz")
    assert z["mean"].shape == z["logvar"].shape == (1497, 4) and z["labels"].shape == (1497,)
    assert run_cli("encode", run, "--data", "digits", "--labels", "-o", tmp_path / "z.csv") == 0
    lines = (tmp_path / "z.csv").read_text().splitlines()
    assert lines[0] == "z0,z1,z2,z3,label" and len(lines) == 301


def test_evaluate_prints_and_writes_json(tiny_run, tmp_path, capsys):
    assert run_cli("evaluate", tiny_run.run_dir, "--data", "digits", "-o", tmp_path / "m.json") == 0
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["examples"] == 300
    assert result["neg_elbo"] == pytest.approx(result["reconstruction"] + result["kl"])
    assert result["bits_per_dim"] == pytest.approx(result["neg_elbo"] / (64 * np.log(2)))
    assert 0 <= result["active_units"] <= 4 and 0.0 <= result["probe_accuracy"] <= 1.0
    assert "bits_per_dim" in capsys.readouterr().out


def test_commands_read_new_input_through_the_runs_spec(tiny_run, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):  # 8-bit images of another size: resized to 8x8 and requantised to 17 levels
        Image.fromarray(np.full((16, 16), 60 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    assert run_cli("encode", tiny_run.run_dir, "--data", folder, "-o", tmp_path / "z.npy") == 0
    assert np.load(tmp_path / "z.npy").shape == (3, 4)


@pytest.mark.parametrize(
    "args,message",
    [
        (["sample", "{tmp}/none", "-o", "{tmp}/o.png"], "no such run folder"),
        (["sample", "{tmp}", "-o", "{tmp}/o.png"], "not a vaekit run folder"),
        (["sample", "{run}", "-o", "{tmp}/o.gif"], "output must end in .png or .npy"),
        (["reconstruct", "{run}", "--data", "{tmp}/missing.npy", "-o", "{tmp}/o.png"], "missing.npy: no such file"),
        (["interpolate", "{run}", "--from", "0", "--to", "5000", "-o", "{tmp}/o.png"], "index 5000 is out of range"),
        (["traverse", "{run}", "--dims", "9", "-o", "{tmp}/o.png"], "latent dimension 9 is out of range"),
        (["evaluate", "{run}", "--data", "{tmp}/nan.npy"], "NaN/inf"),
        (["encode", "{run}", "--data", "{tmp}/empty", "-o", "{tmp}/o.npy"], "holds no image files"),
        (["train", "--data", "{tmp}/bad.csv", "--out", "{tmp}/t"], "is not numeric"),
        (["train", "--data", "{tmp}/mixed", "--out", "{tmp}/t"], "mixed sizes"),
    ],
)
def test_bad_input_one_line_nonzero_exit_no_output(tiny_run, tmp_path, capsys, args, message):
    np.save(tmp_path / "nan.npy", np.array([[0.0, np.nan]]))
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.csv").write_text("a,b\n1,x\n")
    (tmp_path / "mixed").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "mixed" / "a.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "mixed" / "b.png")
    before = set(tmp_path.rglob("*"))
    argv = [a.format(tmp=tmp_path, run=tiny_run.run_dir) for a in args]
    assert run_cli(*argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("vaekit: error: ") and message in err and "\n" not in err
    assert set(tmp_path.rglob("*")) == before  # nothing written, not even a partial file


def test_installed_entry_point_exits_nonzero_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vaekit", "sample", str(tmp_path), "-o", str(tmp_path / "o.png")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"vaekit: error: {tmp_path}: not a vaekit run folder (no config.json)"


def test_tabular_csv_end_to_end(tmp_path, rng):
    x = rng.normal([10.0, -3.0, 0.5], [2.0, 0.1, 1.0], (120, 3))
    rows = "\n".join(f"{a},{b},{c},{'ab'[i % 2]}" for i, (a, b, c) in enumerate(x))
    (tmp_path / "t.csv").write_text("f1,f2,f3,kind\n" + rows + "\n")
    run = tmp_path / "run"
    assert (
        run_cli("train", "--data", tmp_path / "t.csv", "--label", "kind", "--out", run, "--epochs", 3, "--quiet") == 0
    )
    assert {"loss.png", "latents.png"} <= {p.name for p in run.iterdir()}
    assert not (run / "samples.png").exists()  # no image grids for tables
    assert run_cli("sample", run, "-n", 500, "--temperature", 0, "--draw", "-o", tmp_path / "s.npy") == 0
    drawn = np.load(tmp_path / "s.npy")
    assert drawn.shape == (500, 3)
    assert np.allclose(drawn.mean(0), x.mean(0), atol=3 * x.std(0))  # back in the table's own units
    assert run_cli("sample", run, "-o", tmp_path / "s.png") == 1
    assert run_cli("evaluate", run, "-o", tmp_path / "m.json") == 0
    assert json.loads((tmp_path / "m.json").read_text())["likelihood"] == "gaussian"
