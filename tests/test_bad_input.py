"""The bad-input matrix: every data source, option, run folder and compressed file a user can get wrong.

Each case runs the CLI as a user would. It must exit non-zero with one line, `vaekit: error: ...` (or
argparse's `vaekit COMMAND: error: ...`), that names the file or option and the problem, and it must leave
no file behind. docs/robustness.md shows the line each case prints; `python tests/test_bad_input.py`
rewrites that table from the cases themselves, and a test fails when it is out of date.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaekit import codec
from vaekit._atomic import write_text
from vaekit.cli import main
from vaekit.data import idx

DOCS = Path(__file__).parent.parent / "docs" / "robustness.md"


@dataclasses.dataclass
class Case:
    id: str
    what: str  # the user's mistake, in words
    argv: str  # {tmp}: a fresh folder; {run}: a trained digits run (8x8, 17 levels)
    expect: str  # a regular expression the one line must match
    setup: Callable[[Path], None] = lambda tmp: None


def png(path: Path, shape=(8, 8), mode="L", value=100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*shape, 3) if mode == "RGB" else shape, value, np.uint8), mode).save(path)


def folder(*files: tuple[str, dict]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / "images").mkdir()
        for name, options in files:
            png(tmp / "images" / name, **options)

    return setup


def write(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).write_bytes(content)


def npy(name: str, array) -> Callable[[Path], None]:
    return lambda tmp: np.save(tmp / name, array)


def good_idx(tmp: Path, name="images-idx3-ubyte", n=20) -> Path:
    idx.write_idx(tmp / name, np.random.default_rng(0).integers(0, 256, (n, 8, 8), dtype=np.uint8))
    return tmp / name


def cut_idx(tmp: Path) -> None:
    path = good_idx(tmp)
    path.write_bytes(path.read_bytes()[:-7])


def bad_magic_idx(tmp: Path) -> None:
    path = good_idx(tmp)
    path.write_bytes(b"\x01\x02" + path.read_bytes()[2:])


def float_idx(tmp: Path) -> None:
    idx.write_idx(tmp / "images-idx3-ubyte", np.full((20, 8, 8), np.nan, np.float32))


def corrupt_gzip(tmp: Path) -> None:
    data = gzip.compress(good_idx(tmp).read_bytes())
    (tmp / "images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])


def cut_png(tmp: Path) -> None:
    folder(("a.png", {}), ("b.png", {}))(tmp)
    path = tmp / "images" / "b.png"
    path.write_bytes(path.read_bytes()[:30])


def non_utf8_corrupt(tmp: Path) -> None:
    folder(("a.png", {}))(tmp)
    with open(os.path.join(os.fsencode(tmp / "images"), b"caf\xe9.png"), "wb") as f:
        f.write(b"not an image")


def edit_config(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(tmp: Path) -> None:
        path = tmp / "run" / "config.json"
        config = json.loads(path.read_text())
        edit(config)
        path.write_text(json.dumps(config))

    return damage


def truncate(name: str, keep: int) -> Callable[[Path], None]:
    def damage(tmp: Path) -> None:
        path = tmp / "run" / name
        path.write_bytes(path.read_bytes()[:keep])

    return damage


def other_weights(tmp: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = tmp / "run" / "model.safetensors"
    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name][..., :1].contiguous()
    save_file(tensors, path)


def compressed(tmp: Path) -> bytes:
    from vaekit import data, load

    model = load(tmp / "run")
    return codec.compress(model, data.load("digits", "test", spec=model.spec).x[:4].numpy())


def compressed_then(damage: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    return lambda tmp: (tmp / "x.vkz").write_bytes(damage(compressed(tmp)))


def compressed_by_another_model(tmp: Path) -> None:
    from vaekit import data, train

    other = train("digits", tmp / "other", epochs=1, hidden=(8,), latent_dim=2, quiet=True)
    blob = codec.compress(other.model, data.load("digits", "test", spec=other.model.spec).x[:4].numpy())
    shutil.rmtree(tmp / "other")
    (tmp / "x.vkz").write_bytes(blob)


TRAIN = "train --out {tmp}/out --epochs 1 --data"
# fmt: off
DATA_CASES = [
    # IDX files
    Case("idx-missing", "IDX file that does not exist", f"{TRAIN} {{tmp}}/none-idx3-ubyte",
         r"none-idx3-ubyte: no such"),
    Case("idx-empty", "empty IDX file", f"{TRAIN} {{tmp}}/images-idx3-ubyte", r"images-idx3-ubyte: not an IDX file",
         write("images-idx3-ubyte", b"")),
    Case("idx-truncated", "IDX file cut short", f"{TRAIN} {{tmp}}/images-idx3-ubyte",
         r"images-idx3-ubyte: IDX header says shape \(20, 8, 8\) \(1296 bytes\) but the file has 1289", cut_idx),
    Case("idx-corrupt", "IDX file with a wrong magic number", f"{TRAIN} {{tmp}}/images-idx3-ubyte",
         r"images-idx3-ubyte: not an IDX file", bad_magic_idx),
    Case("idx-gzip-corrupt", "gzipped IDX file cut short", f"{TRAIN} {{tmp}}/images-idx3-ubyte.gz",
         r"images-idx3-ubyte.gz: cannot read IDX file", corrupt_gzip),
    Case("idx-nan", "IDX file of floats holding NaN", f"{TRAIN} {{tmp}}/images-idx3-ubyte",
         r"images-idx3-ubyte.*NaN", float_idx),
    Case("idx-wrong-shape", "IDX file of one dimension", f"{TRAIN} {{tmp}}/images-idx3-ubyte",
         r"images-idx3-ubyte: .*shape \(20,\)",
         lambda tmp: idx.write_idx(tmp / "images-idx3-ubyte", np.zeros(20, np.uint8))),
    # image folders
    Case("folder-missing", "image folder that does not exist", f"{TRAIN} {{tmp}}/photos", r"photos: no such"),
    Case("folder-empty", "folder with no images", f"{TRAIN} {{tmp}}/images", r"images: the folder holds no image files",
         lambda tmp: (tmp / "images").mkdir()),
    Case("folder-truncated", "image file cut short", f"{TRAIN} {{tmp}}/images",
         r"b\.png: not an image, or a damaged one",
         cut_png),
    Case("folder-corrupt", "file named .png that is not an image", f"{TRAIN} {{tmp}}/images",
         r"b\.png: not an image",
         lambda tmp: (folder(("a.png", {}))(tmp), (tmp / "images" / "b.png").write_bytes(b"\x89PNG garbage"))),
    Case("folder-mixed-size", "images of different sizes", f"{TRAIN} {{tmp}}/images", r"images.*mixed sizes",
         folder(("a.png", {}), ("b.png", {"shape": (9, 8)}))),
    Case("folder-non-utf8-name", "corrupt image whose name is not UTF-8", f"{TRAIN} {{tmp}}/images",
         r"caf.*\.png: not an image", non_utf8_corrupt),
    # NumPy and CSV arrays
    Case("npy-missing", ".npy that does not exist", f"{TRAIN} {{tmp}}/none.npy", r"none\.npy: no such file"),
    Case("npy-empty-file", "empty .npy file", f"{TRAIN} {{tmp}}/x.npy", r"x\.npy: not a (readable )?NumPy",
         write("x.npy", b"")),
    Case("npy-no-items", ".npy of zero items", f"{TRAIN} {{tmp}}/x.npy",
         r"x\.npy: holds no items \(shape \(0, 8, 8\)\)",
         npy("x.npy", np.zeros((0, 8, 8), np.uint8))),
    Case("npy-truncated", ".npy cut short", f"{TRAIN} {{tmp}}/x.npy", r"x\.npy: not a readable NumPy file",
         lambda tmp: (np.save(tmp / "x.npy", np.zeros((20, 8, 8), np.uint8)),
                      (tmp / "x.npy").write_bytes((tmp / "x.npy").read_bytes()[:-50]))),
    Case("npy-corrupt", "random bytes named .npy", f"{TRAIN} {{tmp}}/x.npy", r"x\.npy: not a NumPy array file",
         write("x.npy", bytes(range(256)))),
    Case("npy-wrong-dtype", ".npy of strings", f"{TRAIN} {{tmp}}/x.npy", r"x\.npy: .*(dtype|numbers)",
         npy("x.npy", np.array([["a", "b"], ["c", "d"]]))),
    Case("npy-complex", ".npy of complex numbers", f"{TRAIN} {{tmp}}/x.npy", r"x\.npy: .*(dtype|numbers|complex)",
         npy("x.npy", np.ones((20, 4), np.complex64))),
    Case("npy-wrong-shape", "one-dimensional .npy", f"{TRAIN} {{tmp}}/x.npy", r"x\.npy: .*shape",
         npy("x.npy", np.arange(20))),
    Case("npy-too-many-dims", "five-dimensional .npy", f"{TRAIN} {{tmp}}/x.npy", r"x\.npy: .*shape",
         npy("x.npy", np.zeros((4, 2, 2, 2, 2), np.uint8))),
    Case("npy-nan", ".npy holding NaN", f"{TRAIN} {{tmp}}/x.npy", r"x\.npy: .*NaN",
         npy("x.npy", np.where(np.eye(8)[None] > 0, np.nan, 0.5).repeat(20, 0))),
    Case("npy-inf", ".npy holding inf", f"{TRAIN} {{tmp}}/x.npy", r"x\.npy: .*(inf|NaN)",
         npy("x.npy", np.full((20, 3), np.inf))),
    Case("npy-huge-integers", "integer images with values beyond 16 bits", f"{TRAIN} {{tmp}}/x.npy",
         r"x\.npy: integer images hold values up to 1000000000",
         npy("x.npy", np.full((20, 8, 8), 10**9, np.int64))),
    Case("npy-huge-floats", "table with values near the float limit", f"{TRAIN} {{tmp}}/x.npy",
         r"x\.npy: .*(too large|overflow|finite)", npy("x.npy", np.full((20, 3), 1e308) * [[1, -1, 1]])),
    Case("npy-negative-levels", "integer images with negative values", f"{TRAIN} {{tmp}}/x.npy",
         r"x\.npy: integer images must hold levels >= 0", npy("x.npy", -np.ones((20, 8, 8), np.int16))),
    Case("npz-no-arrays", ".npz with no arrays", f"{TRAIN} {{tmp}}/x.npz", r"x\.npz: the \.npz file holds no arrays",
         lambda tmp: np.savez(tmp / "x.npz")),
    Case("npz-missing-label", ".npz without the named label array", f"{TRAIN} {{tmp}}/x.npz --label y",
         r"x\.npz: no array named 'y'", lambda tmp: np.savez(tmp / "x.npz", x=np.zeros((20, 8, 8), np.uint8))),
    Case("npz-label-count", ".npz with fewer labels than items", f"{TRAIN} {{tmp}}/x.npz --label y",
         r"x\.npz: labels must be 20 integers or strings",
         lambda tmp: np.savez(tmp / "x.npz", x=np.zeros((20, 8, 8), np.uint8), y=np.zeros(3, np.int64))),
    Case("npz-nan", ".npz holding NaN", f"{TRAIN} {{tmp}}/x.npz", r"x\.npz: .*NaN",
         lambda tmp: np.savez(tmp / "x.npz", x=np.full((20, 3), np.nan))),
    Case("npz-corrupt", ".npz cut short", f"{TRAIN} {{tmp}}/x.npz", r"x\.npz: not a readable NumPy file",
         lambda tmp: (np.savez(tmp / "x.npz", x=np.zeros((20, 8, 8), np.uint8)),
                      (tmp / "x.npz").write_bytes((tmp / "x.npz").read_bytes()[:100]))),
    Case("csv-empty", "empty .csv", f"{TRAIN} {{tmp}}/x.csv", r"x\.csv: .*(empty|no rows)", write("x.csv", b"")),
    Case("csv-header-only", ".csv with a header and no rows", f"{TRAIN} {{tmp}}/x.csv", r"x\.csv: .*(empty|no rows)",
         write("x.csv", b"a,b\n")),
    Case("csv-not-numeric", ".csv with a word among numbers", f"{TRAIN} {{tmp}}/x.csv", r"x\.csv.*is not numeric",
         write("x.csv", b"a,b\n1,2\n3,x\n")),
    Case("csv-ragged", ".csv rows of different lengths", f"{TRAIN} {{tmp}}/x.csv",
         r"x\.csv: row 3 has 3 fields, expected 2",
         write("x.csv", b"a,b\n1,2\n3,4,5\n")),
    Case("csv-nan", ".csv holding nan", f"{TRAIN} {{tmp}}/x.csv", r"x\.csv: .*NaN",
         write("x.csv", b"a,b\n1,2\n3,nan\n4,5\n")),
    Case("csv-huge", ".csv of values near the float limit", f"{TRAIN} {{tmp}}/x.csv",
         r"x\.csv: column 'b' holds values too large", write("x.csv", b"a,b\n1,1e308\n2,-1e308\n3,1e308\n")),
    Case("csv-not-utf8", ".csv that is not UTF-8 text", f"{TRAIN} {{tmp}}/x.csv",
         r"x\.csv: not UTF-8 text \(byte 0xff at offset 6\)",
         write("x.csv", b"a,b\n1,\xff\xfe\n")),
    Case("csv-missing-label", ".csv without the named label column", f"{TRAIN} {{tmp}}/x.csv --label y",
         r"x\.csv.*'y'", write("x.csv", b"a,b\n1,2\n3,4\n")),
    Case("csv-context", "--context for a table", f"{TRAIN} {{tmp}}/x.csv --context 1",
         r"a pixel context needs images", write("x.csv", b"a,b\n1,2\n3,4\n5,6\n")),
]

# new data given to a trained run (digits: 8x8 grey images of 17 levels)
ENCODE = "encode {run} --data {tmp}/x.npy -o {tmp}/z.npy"
RUN_DATA_CASES = [
    Case("run-data-wrong-shape", "images of another size than the run's", ENCODE,
         r"x\.npy.*shape", npy("x.npy", np.zeros((5, 9, 9), np.uint8))),
    Case("run-data-wrong-channels", "three-channel array for a grey-image run", ENCODE,
         r"x\.npy: items have shape \(3, 8, 8\), the model expects \(1, 8, 8\)",
         npy("x.npy", np.zeros((5, 3, 8, 8), np.uint8))),
    Case("run-data-beyond-levels", "levels beyond the run's 17", "evaluate {run} --data {tmp}/x.npy",
         r"x\.npy.*(levels|0\.\.16)", npy("x.npy", np.full((5, 8, 8), 200, np.int64))),
    Case("run-data-table-for-images", "a table for an image run", "evaluate {run} --data {tmp}/x.csv",
         r"x\.csv.*(shape|features|image)", write("x.csv", b"a,b\n1,2\n3,4\n")),
]

T = "--data digits --out {tmp}/o"
OPTION_CASES = [
    Case(f"option-{command}-{flag.strip('-')}-{value.split('/')[-1]}", f"{command} {flag} {value.split('/')[-1]}",
         f"{command} {args} {flag} {value}", expect)
    for command, args, flag, value, expect in [
        ("train", T, "--epochs", "0", r"--epochs: must be >= 1, got 0"),
        ("train", T, "--batch-size", "0", r"--batch-size: must be >= 1, got 0"),
        ("train", T, "--lr", "-1", r"learning rate must be > 0, got -1"),
        ("train", T, "--lr", "nan", r"--lr: must be a finite number, got nan"),
        ("train", T, "--lr-decay", "2", r"decay fraction must lie in \[0, 1\], got 2"),
        ("train", T, "--lr-warmup", "-5", r"warm-up must be >= 0 steps, got -5"),
        ("train", T, "--beta", "-1", r"beta must be >= 0, got -1"),
        ("train", T, "--warmup", "-1", r"warm-up must be >= 0 epochs, got -1"),
        ("train", T, "--free-bits", "-1", r"free bits must be >= 0, got -1"),
        ("train", T, "--clip-grad", "0", r"gradient clip must be > 0, got 0"),
        ("train", T, "--weight-decay", "-1", r"weight decay must be >= 0, got -1"),
        ("train", T, "--skip-threshold", "-1", r"threshold must be > 0, got -1"),
        ("train", T, "--skip-factor", "1", r"skipping factor must be > 1 \(times the median gradient norm\), got 1"),
        ("train", T, "--patience", "-1", r"patience must be >= (0|1), got -1"),
        ("train", T, "--k", "0", r"--k: must be >= 1, got 0"),
        ("train", T, "--latent", "0", r"--latent: must be >= 1, got 0"),
        ("train", T, "--hidden", "0", r"hidden layer sizes must be .* >= 1, got \[0\]"),
        ("train", T, "--hidden", "a,b", r"--hidden: expected comma-separated integers"),
        ("train", T, "--layers", "4,0", r"latent layer sizes must be >= 1, got \[4, 0\]"),
        ("train", T, "--pseudo-inputs", "0", r"--pseudo-inputs: must be >= 1, got 0"),
        ("train", T, "--context", "4", r"the context radius must lie in 0\.\.3, got 4"),
        ("train", T, "--context-hidden", "8", r"hidden units for the pixel context need a context radius"),
        ("train", T, "--mixture", "9", r"a logistic mixture has 1\.\.5 components, got 9"),
        ("train", T, "--heldout", "1.5", r"held-out fraction must lie in \(0, 1\), got 1.5"),
        ("train", T, "--time-budget", "0", r"--time-budget: must be a positive duration"),
        ("train", T, "--time-budget", "soon", r"--time-budget: expected a duration"),
        ("train", T, "--size", "0x8", r"--size: expected a positive HxW"),
        ("train", T, "--nproc", "0", r"--nproc: must be >= 1, got 0"),
        ("train", T, "--seed", "100000000000000000000", r"--seed: must lie in 0\.\.9223372036854775807"),
        ("sample", "{run} -o {tmp}/s.png", "--seed", "-1", r"--seed: must lie in 0\.\."),
        ("sample", "{run} -o {tmp}/s.png", "-n", "0", r"-n: must be >= 1, got 0"),
        ("sample", "{run} -o {tmp}/s.png", "--temperature", "-1", r"temperature must be >= 0, got -1"),
        ("sample", "{run} -o {tmp}/s.png", "--temperature", "inf", r"--temperature: must be a finite number"),
        ("sample", "{run} -o {tmp}/s.png", "--label", "3", r"--label: this model is not conditional"),
        ("reconstruct", "{run} -o {tmp}/r.png", "-n", "0", r"-n: must be >= 1, got 0"),
        ("interpolate", "{run} -o {tmp}/i.png --from 0 --to 1", "--steps", "1", r"steps must be >= 2, got 1"),
        ("interpolate", "{run} -o {tmp}/i.png --to 1", "--from", "-5000", r"index -5000 is out of range"),
        ("interpolate", "{run} -o {tmp}/i.png --from 0", "--to", "99999", r"index 99999 is out of range"),
        ("traverse", "{run} -o {tmp}/t.png", "--steps", "1", r"steps >= 2 and range > 0, got steps=1"),
        ("reconstruct", "{run} -o {tmp}/r.png", "--size", "8x", r"--size: expected"),
        ("traverse", "{run} -o {tmp}/t.png", "--range", "0", r"range > 0, got steps=9, range=0.0"),
        ("traverse", "{run} -o {tmp}/t.png", "--index", "99999", r"index 99999 is out of range"),
        ("traverse", "{run} -o {tmp}/t.png", "--dims", "-1", r"latent dimension -1 is out of range"),
        ("evaluate", "{run}", "--k", "0", r"--k: must be >= 1, got 0"),
        ("encode", "{run}", "-o", "{tmp}/z.gif", r"z\.gif: output must end in"),
        ("compress", "{run} {tmp}/x.npy -o {tmp}/x.vkz", "--workers", "0", r"--workers: must be >= 1, got 0"),
    ]
]

RUN_CASES = [
    Case("run-missing", "run folder that does not exist", "sample {tmp}/nothing -o {tmp}/s.png",
         r"nothing: no such run folder"),
    Case("run-no-config", "folder without config.json", "sample {tmp}/run -o {tmp}/s.png",
         r"run: not a vaekit run folder \(no config.json\)", lambda tmp: (tmp / "run" / "config.json").unlink()),
    Case("run-corrupt-config", "config.json that is not JSON", "sample {tmp}/run -o {tmp}/s.png",
         r"config.json: corrupt JSON", truncate("config.json", 40)),
    Case("run-foreign-config", "config.json of another program", "sample {tmp}/run -o {tmp}/s.png",
         r"config.json: not a vaekit run configuration",
         lambda tmp: (tmp / "run" / "config.json").write_text('{"model_type": "bert"}')),
    Case("run-invalid-model", "config.json with a nonsense layer size", "sample {tmp}/run -o {tmp}/s.png",
         r"config.json: invalid model section \(hidden must be",
         edit_config(lambda c: c["model"].update(hidden=[-3]))),
    Case("run-huge-model", "config.json asking for an enormous model", "sample {tmp}/run -o {tmp}/s.png",
         r"config.json: invalid model section \(hidden must be",
         edit_config(lambda c: c["model"].update(hidden=[10**12]))),
    Case("run-invalid-context", "config.json with a context radius beyond 3", "sample {tmp}/run -o {tmp}/s.png",
         r"config.json: invalid model section \(the context radius must lie in 0\.\.3, got 9",
         edit_config(lambda c: c["model"].update(context=9))),
    Case("run-invalid-spec", "config.json with impossible data levels", "sample {tmp}/run -o {tmp}/s.png",
         r"config.json: invalid model section \(spec.levels must be",
         edit_config(lambda c: c["model"]["spec"].update(levels=1))),
    Case("run-no-weights", "model.safetensors missing", "sample {tmp}/run -o {tmp}/s.png",
         r"model.safetensors: missing", lambda tmp: (tmp / "run" / "model.safetensors").unlink()),
    Case("run-truncated-weights", "model.safetensors cut short", "sample {tmp}/run -o {tmp}/s.png",
         r"model.safetensors: corrupt safetensors file", truncate("model.safetensors", 200)),
    Case("run-mismatched-weights", "weights of another shape than the config says", "sample {tmp}/run -o {tmp}/s.png",
         r"model.safetensors: weights do not match the config", other_weights),
    Case("run-corrupt-checkpoint", "checkpoint cut short, then --resume", "train --resume {tmp}/run",
         r"checkpoint.safetensors: corrupt safetensors file", truncate("checkpoint.safetensors", 100)),
    Case("run-corrupt-metrics", "metrics.csv mangled, then --resume", "train --resume {tmp}/run",
         r"metrics.csv", lambda tmp: (tmp / "run" / "metrics.csv").write_bytes(b"epoch,step\n1,\xff\n")),
]

COMPRESSED_CASES = [
    Case("vkz-missing", "compressed file that does not exist", "decompress {tmp}/run {tmp}/none.vkz -o {tmp}/y.npy",
         r"none\.vkz: cannot read \(no such file or directory\)"),
    Case("vkz-not-vaekit", "a file of another format", "decompress {tmp}/run {tmp}/x.vkz -o {tmp}/y.npy",
         r"x.vkz: not a vaekit compressed file", write("x.vkz", b"PK\x03\x04 a zip file")),
    Case("vkz-truncated", "compressed file cut short (every length: test_every_truncation_is_refused)",
         "decompress {tmp}/run {tmp}/x.vkz -o {tmp}/y.npy", r"x.vkz: .*truncated or corrupt",
         compressed_then(lambda b: b[:-9])),
    Case("vkz-flipped", "one flipped byte (every byte: test_every_flipped_byte_is_refused)",
         "decompress {tmp}/run {tmp}/x.vkz -o {tmp}/y.npy", r"x.vkz: .*truncated or corrupt",
         compressed_then(lambda b: b[:60] + bytes([b[60] ^ 4]) + b[61:])),
    Case("vkz-other-model", "decompressed with another model", "decompress {tmp}/run {tmp}/x.vkz -o {tmp}/y.npy",
         r"x.vkz: this file was compressed with another model", compressed_by_another_model),
    Case("vkz-uncodable-data", "compressing values the model cannot code",
         "compress {tmp}/run {tmp}/x.npy -o {tmp}/y.vkz", r"x.npy.*(levels|0\.\.16)",
         npy("x.npy", np.full((3, 8, 8), 40, np.int64))),
]
# fmt: on

CASES = DATA_CASES + RUN_DATA_CASES + OPTION_CASES + RUN_CASES + COMPRESSED_CASES


def outcome(case: Case, tmp: Path, run_dir: Path) -> tuple[int, str, set[Path], set[Path]]:
    """Exit code, what went to stderr, and the files before and after, for one case."""
    shutil.copytree(run_dir, tmp / "run")
    case.setup(tmp)
    before = set(tmp.rglob("*"))
    argv = [a.format(tmp=tmp, run=tmp / "run") for a in case.argv.split()]
    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            code = main(argv)
        except SystemExit as exit_info:  # argparse's own refusals
            code = exit_info.code
    return code, err.getvalue().strip(), before, set(tmp.rglob("*"))


def shown(err: str, tmp: Path) -> str:
    """The line as the docs show it: the test's temporary folder written as `...`, and a name that is not
    UTF-8 escaped as the terminal's stderr shows it."""
    return err.replace(str(tmp), "...").encode("utf-8", "backslashreplace").decode("utf-8")


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def docs_rows() -> dict[str, str]:
    rows = {}
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0] != "`case`":
            rows[cells[0].strip("`")] = cells[2][1:-1]
    return rows


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_clear_line_and_leaves_nothing(case, tiny_run, tmp_path):
    code, err, before, after = outcome(case, tmp_path, tiny_run.run_dir)
    assert code not in (0, None), f"{case.id}: exit code {code}"
    assert re.match(r"vaekit( \w+)?: error: ", err) and "\n" not in err, err
    assert "Traceback" not in err
    assert re.search(case.expect, err), f"{case.id}: {err!r} does not match {case.expect!r}"
    assert after == before, f"{case.id} left {sorted(map(str, after - before))}"
    assert docs_rows().get(case.id) == cell(shown(err, tmp_path)), (
        f"docs/robustness.md is out of date for {case.id}: run python tests/test_bad_input.py"
    )


def write_docs() -> None:
    """Rewrite the matrix table in docs/robustness.md from what each case prints now."""
    import vaekit

    with tempfile.TemporaryDirectory() as base:
        run = vaekit.train("digits", Path(base) / "tiny", epochs=2, hidden=(32,), latent_dim=4, quiet=True)
        lines = ["| `case` | the user's mistake | what the user sees |", "| --- | --- | --- |"]
        for case in CASES:
            tmp = Path(tempfile.mkdtemp(dir=base))
            try:
                _, err, _, _ = outcome(case, tmp, run.run_dir)
            except Exception as error:  # shown in the table, and the case's test fails
                err = f"CRASH {type(error).__name__}: {error}"
            lines.append(f"| `{case.id}` | {case.what} | `{cell(shown(err, tmp))}` |")
    text = DOCS.read_text(encoding="utf-8")
    start, end = text.index("<!-- matrix -->") + len("<!-- matrix -->"), text.index("<!-- /matrix -->")
    write_text(DOCS, text[:start] + "\n" + "\n".join(lines) + "\n" + text[end:])


def test_a_non_utf8_file_name_is_just_a_name(tmp_path):
    images = os.fsencode(tmp_path / "images")
    os.mkdir(images)
    for name in (b"caf\xe9.png", b"\xff\xfe.png", b"plain.png"):
        Image.fromarray(np.full((8, 8), 90, np.uint8)).save(os.path.join(images, name).decode(errors="surrogateescape"))
    assert main(["train", "--data", str(tmp_path / "images"), "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--quiet"]) == 0  # fmt: skip
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_grey_and_colour_images_are_read_as_colour_and_a_grey_run_reads_colour_as_grey(tiny_run, tmp_path):
    folder(("a.png", {"value": 80}), ("b.png", {"mode": "RGB", "value": 160}))(tmp_path)
    assert main(["train", "--data", str(tmp_path / "images"), "--out", str(tmp_path / "mixed"), "--epochs", "1",
                 "--quiet"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "mixed" / "config.json").read_text())["model"]["spec"]["shape"] == [3, 8, 8]
    assert (
        main(["encode", str(tiny_run.run_dir), "--data", str(tmp_path / "images"), "-o", str(tmp_path / "z.npy")]) == 0
    )
    assert np.load(tmp_path / "z.npy").shape == (2, 4)


if __name__ == "__main__":
    write_docs()
