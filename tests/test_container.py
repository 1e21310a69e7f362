"""The compressed file: round trips, and every way a file can be wrong gives a clear error."""

import struct

import numpy as np
import pytest

import vaekit
from vaekit import data
from vaekit.codec import container
from vaekit.codec.rans import CodecError
from vaekit.errors import OptionError


@pytest.fixture(scope="module")
def model(tiny_run):
    return vaekit.load(tiny_run.run_dir)


@pytest.fixture(scope="module")
def levels(model):
    return data.load("digits", "test", spec=model.spec).x[:40].numpy()


@pytest.fixture(scope="module")
def blob(model, levels):
    return container.compress(model, levels)


@pytest.fixture(scope="module")
def sharded_blob(model, levels):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(container, "SHARD_VALUES", 256)  # 40 items of 64 values: 8 shards
        return container.compress(model, levels, workers=2)


def test_shards_for_is_a_power_of_two_set_by_the_size_alone():
    per = container.SHARD_VALUES
    assert container.shards_for(0, 0) == container.shards_for(10**6, per - 1) == 1
    assert [container.shards_for(10**6, n * per) for n in (2, 3, 4, 7, 8, 100)] == [2, 2, 4, 4, 8, 8]
    assert container.shards_for(3, 100 * per) == 2  # never more shards than items
    assert container.shard_sizes(10, 4) == [3, 3, 2, 2] and container.shard_sizes(0, 1) == [0]


def test_shards_give_the_same_bytes_in_one_process_or_several(model, levels, sharded_blob):
    assert len(container.read_header(sharded_blob)["shards"]) == 8
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(container, "SHARD_VALUES", 256)
        coded = []
        assert container.compress(model, levels, workers=1, progress=coded.append) == sharded_blob
        assert sum(coded) == len(levels)
    for workers in (1, 2):
        decoded = []
        back = container.decompress(model, sharded_blob, workers=workers, progress=decoded.append)
        assert np.array_equal(back, levels) and sum(decoded) == len(levels)
    with pytest.raises(OptionError, match="workers must be >= 1, got 0"):
        container.compress(model, levels, workers=0)


def test_a_worker_s_error_reaches_the_caller(model, levels, sharded_blob):
    header = container.read_header(sharded_blob)
    last = header["shards"][-1][2]
    at = len(sharded_blob) - container.HASH_BYTES - len(last) + 2  # inside the last shard's payload
    body = bytearray(sharded_blob[: -container.HASH_BYTES])
    body[at] ^= 0xFF
    with pytest.raises(CodecError, match="ran out before decoding ended|did not end where|checksum"):
        container.decompress(model, bytes(body) + container._hash(bytes(body)), workers=2)


def test_shards_that_do_not_add_up_are_refused(model, levels, sharded_blob):
    body = bytearray(sharded_blob[: -container.HASH_BYTES])
    count = container._FIXED.size + 1 + len(levels.dtype.str) + 1 + 8 * levels.ndim
    first_size = count + 2 + 8
    for at, format, change in [(first_size, "<Q", 1), (count, "<H", 1), (count, "<H", -8)]:
        edited = body.copy()
        (value,) = struct.unpack_from(format, edited, at)
        struct.pack_into(format, edited, at, value + change)
        with pytest.raises(CodecError, match="shards do not add up"):
            container.decompress(model, bytes(edited) + container._hash(bytes(edited)))


@pytest.mark.parametrize("dtype", ["(2,),i1", "<f8", "O", "i1,i1"])
def test_a_dtype_other_than_an_integer_type_is_refused_before_numpy_parses_it(model, levels, blob, dtype):
    # found by benchmarks/fuzz.py: "(2,),i1" made np.dtype run ast.literal_eval, which raised SyntaxError
    old = levels.dtype.str.encode()
    at = container._FIXED.size
    body = blob[:at] + bytes([len(dtype)]) + dtype.encode() + blob[at + 1 + len(old) : -container.HASH_BYTES]
    with pytest.raises(CodecError, match=r"header is invalid \(dtype"):
        container.decompress(model, body + container._hash(body))


def test_round_trip_keeps_values_shape_and_dtype(model, levels, blob):
    flat = levels.reshape(len(levels), -1).astype(np.int16)
    for items in (levels, flat):
        back = container.decompress(model, container.compress(model, items))
        assert back.dtype == items.dtype and back.shape == items.shape and np.array_equal(back, items)
    assert np.array_equal(container.decompress(model, blob), levels)
    empty = levels[:0]
    assert container.decompress(model, container.compress(model, empty)).shape == empty.shape
    assert len(blob) < levels.size  # smaller than a byte per value


REFUSED = "not a vaekit compressed file|truncated or corrupt|format version"


@pytest.mark.parametrize("name", ["blob", "sharded_blob"])
def test_every_truncation_is_refused(model, name, request):
    blob = request.getfixturevalue(name)
    for length in range(len(blob)):
        with pytest.raises(CodecError, match=REFUSED):
            container.decompress(model, blob[:length])


@pytest.mark.parametrize("name", ["blob", "sharded_blob"])
def test_every_flipped_byte_is_refused(model, name, request):
    blob = request.getfixturevalue(name)
    for position in range(len(blob)):
        corrupt = bytearray(blob)
        corrupt[position] ^= 1 << (position % 8)
        with pytest.raises(CodecError, match=REFUSED):
            container.decompress(model, bytes(corrupt))


def test_another_model_is_refused(tmp_path, blob):
    other = vaekit.train("digits", tmp_path / "other", epochs=1, hidden=(32,), latent_dim=4, seed=5, quiet=True)
    with pytest.raises(CodecError, match="another model"):
        container.decompress(vaekit.load(other.run_dir), blob)


def test_data_the_model_cannot_code_is_refused(model, levels):
    with pytest.raises(CodecError, match="integer data"):
        container.compress(model, levels.astype(np.float32))
    with pytest.raises(CodecError, match="do not fit"):
        container.compress(model, levels[..., :3])
    with pytest.raises(CodecError, match=r"0\.\.16"):
        container.compress(model, levels + 1)


def test_cli_round_trip_and_errors(tiny_run, levels, tmp_path, capsys):
    from vaekit.cli import main

    source, packed, restored = tmp_path / "levels.npy", tmp_path / "levels.vkz", tmp_path / "back.npy"
    np.save(source, levels)
    assert main(["compress", str(tiny_run.run_dir), str(source), "-o", str(packed)]) == 0
    assert main(["decompress", str(tiny_run.run_dir), str(packed), "-o", str(restored)]) == 0
    back = np.load(restored)
    assert back.dtype == levels.dtype and np.array_equal(back, levels)
    packed.write_bytes(packed.read_bytes()[:-5])
    assert main(["decompress", str(tiny_run.run_dir), str(packed), "-o", str(tmp_path / "bad.npy")]) == 1
    assert "truncated or corrupt" in capsys.readouterr().err and not (tmp_path / "bad.npy").exists()
    np.save(source, levels + 1)
    assert main(["compress", str(tiny_run.run_dir), str(source), "-o", str(tmp_path / "x.vkz")]) == 1
    assert "levels.npy: values must be integers in 0..16" in capsys.readouterr().err
    assert not (tmp_path / "x.vkz").exists()


def test_cli_compresses_an_idx_file_and_an_image_folder_as_the_run_reads_them(tmp_path, rng):
    from PIL import Image

    from vaekit.cli import main
    from vaekit.data import idx

    images = rng.integers(0, 256, (24, 8, 8), dtype=np.uint8)
    idx.write_idx(tmp_path / "images-idx3-ubyte.gz", images)
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, image in enumerate(images[:6]):
        Image.fromarray(image).save(folder / f"{i}.png")
    run = vaekit.train(str(tmp_path / "images-idx3-ubyte.gz"), tmp_path / "run", epochs=1, hidden=(16,),
                       latent_dim=2, quiet=True)  # fmt: skip
    assert run.model.spec.levels == 256  # 8-bit files: every byte value is a level, so the round trip is exact
    packed, back = tmp_path / "x.vkz", tmp_path / "back.npy"
    assert main(["compress", str(run.run_dir), str(folder), "-o", str(packed)]) == 0
    assert main(["decompress", str(run.run_dir), str(packed), "-o", str(back)]) == 0
    restored = np.load(back)
    assert restored.dtype == np.uint8 and restored.shape == (6, 1, 8, 8)  # as vaekit reads a folder
    assert np.array_equal(restored[:, 0], images[:6])
    # an IDX file keeps its own shape and dtype: decompressing to IDX gives back the same bytes
    raw = tmp_path / "raw-idx3-ubyte"
    idx.write_idx(raw, images)
    assert main(["compress", str(run.run_dir), str(tmp_path / "images-idx3-ubyte.gz"), "-o", str(packed)]) == 0
    assert main(["decompress", str(run.run_dir), str(packed), "-o", str(tmp_path / "back-idx3-ubyte")]) == 0
    assert (tmp_path / "back-idx3-ubyte").read_bytes() == raw.read_bytes()
    assert main(["decompress", str(run.run_dir), str(packed), "-o", str(back)]) == 0
    assert np.load(back).shape == images.shape


def test_cli_refuses_idx_output_for_a_dtype_idx_cannot_hold(tiny_run, levels, tmp_path, capsys):
    from vaekit.cli import main

    source, packed = tmp_path / "levels.npy", tmp_path / "levels.vkz"
    np.save(source, levels.astype(np.int64))
    assert main(["compress", str(tiny_run.run_dir), str(source), "-o", str(packed)]) == 0
    assert main(["decompress", str(tiny_run.run_dir), str(packed), "-o", str(tmp_path / "y.idx")]) == 1
    assert "y.idx: IDX files hold" in capsys.readouterr().err and not (tmp_path / "y.idx").exists()
    assert main(["decompress", str(tiny_run.run_dir), str(packed), "-o", str(tmp_path / "y.txt")]) == 1
    assert "y.txt: output must end in .npy or be an IDX file" in capsys.readouterr().err
