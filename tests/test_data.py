"""Each data source on files the tests write, and the errors bad input gets."""

import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from vaekit import data
from vaekit.data import idx, images
from vaekit.data.dataset import DataSpec
from vaekit.errors import DataError


def write_mnist_like(directory, rng, n_train=30, n_test=10, gz=True):
    ext = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        idx.write_idx(directory / f"{split}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        idx.write_idx(directory / f"{split}-labels-idx1-ubyte{ext}", rng.integers(0, 10, n, dtype=np.uint8))


def test_digits_is_embedded_with_a_fixed_split():
    train, test = data.load("digits", "train"), data.load("digits", "test")
    assert len(train) + len(test) == 1797 and len(test) == data.DIGITS_TEST_SIZE
    assert train.spec == DataSpec("levels", (1, 8, 8), levels=17, classes=tuple("0123456789"))
    assert int(train.x.max()) == 16 and train.x.dtype == torch.uint8
    assert torch.equal(data.load("digits", "test").x, test.x)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip_and_directory(tmp_path, rng, gz):
    write_mnist_like(tmp_path, rng, gz=gz)
    train, test = data.load(str(tmp_path), "train"), data.load(str(tmp_path), "test")
    assert train.x.shape == (30, 1, 28, 28) and test.x.shape == (10, 1, 28, 28)
    assert train.spec.levels == 256 and train.labels is not None
    ext = ".gz" if gz else ""
    raw = idx.read_idx(tmp_path / f"train-images-idx3-ubyte{ext}")
    assert np.array_equal(train.x[:, 0].numpy(), raw)
    fit, heldout = data.load_for_training(str(tmp_path), heldout_fraction=0.2, seed=5)  # the test split stays unseen
    assert len(fit) == 24 and len(heldout) == 6
    assert torch.equal(heldout.x, data.load(str(tmp_path), "heldout", heldout=(0.2, 5)).x)
    rebuilt = torch.cat([fit.x, heldout.x])
    assert sorted(map(bytes, rebuilt.flatten(1).numpy())) == sorted(map(bytes, train.x.flatten(1).numpy()))


def test_idx_errors_name_the_file(tmp_path):
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x00" * 100)
    with pytest.raises(DataError, match="train-images-idx3-ubyte: IDX header says shape"):
        idx.read_idx(bad)
    bad.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(DataError, match="bad magic"):
        idx.read_idx(bad)
    gz = tmp_path / "x-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 40)[:-9])
    with pytest.raises(DataError, match="x-idx3-ubyte.gz"):
        idx.read_idx(gz)
    packed = bytearray(gzip.compress(bytes(range(256)) * 4))
    for position in range(12, len(packed) - 8, 7):  # flipped bytes inside the deflate stream
        corrupt = packed.copy()
        corrupt[position] ^= 0xFF
        gz.write_bytes(bytes(corrupt))
        with pytest.raises(DataError, match="x-idx3-ubyte.gz"):
            idx.read_idx(gz)


def test_named_set_search_order_and_not_found_message(tmp_path, rng, monkeypatch):
    monkeypatch.setenv("VAEKIT_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(idx, "SYSTEM_DIR", tmp_path / "system")
    with pytest.raises(DataError, match=r"mnist not found; looked in .*env.*system.*--download"):
        data.load("mnist", "train")
    (tmp_path / "env" / "mnist").mkdir(parents=True)
    write_mnist_like(tmp_path / "env" / "mnist", rng)
    assert len(data.load("mnist", "train")) == 30
    own = tmp_path / "own"
    own.mkdir()
    write_mnist_like(own, rng, n_train=7)
    assert len(data.load("mnist", "train", data_dir=own)) == 7  # --data-dir comes first
    assert data.load("mnist", "train").label_names == [str(i) for i in range(10)]


def test_download_fetches_the_four_files(tmp_path, rng, monkeypatch):
    server = tmp_path / "server"
    server.mkdir()
    write_mnist_like(server, rng, n_train=12)
    monkeypatch.setitem(idx.DOWNLOAD_URLS, "fashion-mnist", server.as_uri() + "/")
    ds = data.load("fashion-mnist", "train", data_dir=tmp_path / "data", download=True)
    assert len(ds) == 12 and ds.label_names[0] == "T-shirt/top"
    assert sorted(p.name for p in (tmp_path / "data" / "fashion-mnist").iterdir()) == sorted(
        p.name for p in server.iterdir()
    )
    monkeypatch.setitem(idx.DOWNLOAD_URLS, "mnist", (tmp_path / "nowhere").as_uri() + "/")
    with pytest.raises(DataError, match="could not download"):
        data.load("mnist", "train", data_dir=tmp_path / "other", download=True)
    assert not any((tmp_path / "other" / "mnist").glob("*.gz"))  # nothing half-written


def save_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_with_classes_and_resizing(tmp_path, rng):
    for cls in ("cat", "dog"):
        for i in range(3):
            save_png(tmp_path / cls / f"{i}.png", rng.integers(0, 256, (10, 12), dtype=np.uint8))
    ds = data.load(str(tmp_path))
    assert ds.x.shape == (6, 1, 10, 12) and ds.label_names == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    small = data.load(str(tmp_path), size=(5, 6))
    assert small.x.shape == (6, 1, 5, 6)
    rgb_spec = DataSpec("levels", (3, 8, 8), levels=256)
    assert data.load(str(tmp_path), spec=rgb_spec).x.shape == (6, 3, 8, 8)


def test_image_folder_rgb_is_kept(tmp_path, rng):
    save_png(tmp_path / "a.png", rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    save_png(tmp_path / "b.png", rng.integers(0, 256, (6, 6), dtype=np.uint8))
    assert data.load(str(tmp_path)).x.shape == (2, 3, 6, 6)


def test_image_folder_errors(tmp_path, rng):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: the folder holds no image files"):
        data.load(str(tmp_path / "empty"))
    save_png(tmp_path / "mixed" / "a.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    save_png(tmp_path / "mixed" / "b.png", rng.integers(0, 256, (9, 8), dtype=np.uint8))
    with pytest.raises(DataError, match=r"mixed sizes .*--size"):
        data.load(str(tmp_path / "mixed"))
    save_png(tmp_path / "junk" / "a.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    (tmp_path / "junk" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"notes.txt: not an image"):
        data.load(str(tmp_path / "junk"))
    (tmp_path / "broken").mkdir()
    good = tmp_path / "broken" / "a.png"
    save_png(good, rng.integers(0, 256, (8, 8), dtype=np.uint8))
    (tmp_path / "broken" / "b.png").write_bytes(good.read_bytes()[:33] + b"garbage" * 10)
    with pytest.raises(DataError, match=r"b.png: unreadable image"):
        data.load(str(tmp_path / "broken"))


def test_npy_integer_images_keep_their_levels(tmp_path, rng):
    np.save(tmp_path / "x.npy", rng.integers(0, 17, (20, 8, 8)))
    ds = data.load(str(tmp_path / "x.npy"))
    assert ds.spec == DataSpec("levels", (1, 8, 8), levels=17)
    with pytest.raises(DataError, match="no test split"):
        data.load(str(tmp_path / "x.npy"), "test")


def test_npz_with_labels_and_tabular_standardisation(tmp_path, rng):
    x = rng.normal(5.0, 3.0, (200, 4))
    np.savez(tmp_path / "t.npz", x=x, y=rng.integers(0, 3, 200))
    train, heldout = data.load_for_training(str(tmp_path / "t.npz"), heldout_fraction=0.25, seed=1)
    assert len(train) == 150 and len(heldout) == 50 and train.spec.kind == "real"
    assert torch.allclose(train.x.mean(0), torch.zeros(4), atol=1e-5)  # statistics of the training part
    assert torch.allclose(train.x.std(0, unbiased=False), torch.ones(4), atol=1e-3)
    again = data.load(str(tmp_path / "t.npz"), spec=train.spec)  # new input read through the run's spec
    expected = (torch.from_numpy(x) - torch.tensor(train.spec.mean)) / torch.tensor(train.spec.std)
    assert torch.allclose(again.x, expected.float(), atol=1e-5)


def test_csv_with_header_and_label_column(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,kind\n1,2,x\n3,4,y\n5,6,x\n")
    ds = data.load(str(tmp_path / "d.csv"), label="kind")
    assert ds.spec.shape == (2,) and ds.labels.tolist() == [0, 1, 0] and ds.label_names == ["x", "y"]
    assert ds.spec.features == ("a", "b")
    with pytest.raises(DataError, match=r"column 'kind' is not numeric \(value 'x'\)"):
        data.load(str(tmp_path / "d.csv"))
    with pytest.raises(DataError, match="no column named 'nope'"):
        data.load(str(tmp_path / "d.csv"), label="nope")


def test_array_errors(tmp_path):
    x = np.ones((5, 3))
    x[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(DataError, match=r"nan.npy: value nan \(NaN/inf\) at item 2"):
        data.load(str(tmp_path / "nan.npy"))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="obj.npy: not a NumPy array file .*never unpickles"):
        data.load(str(tmp_path / "obj.npy"))
    with pytest.raises(DataError, match="missing.npy: no such file"):
        data.load(str(tmp_path / "missing.npy"))
    (tmp_path / "x.txt").write_text("1,2")
    with pytest.raises(DataError, match="unknown kind of file"):
        data.load(str(tmp_path / "x.txt"))
    np.save(tmp_path / "big.npy", np.full((3, 8, 8), 40))
    with pytest.raises(DataError, match=r"values must be integer levels 0..16, found 40"):
        data.load(str(tmp_path / "big.npy"), spec=DataSpec("levels", (1, 8, 8), levels=17))
    np.save(tmp_path / "shape.npy", np.zeros((3, 7, 7), dtype=np.uint8))
    with pytest.raises(DataError, match=r"items have shape \(1, 7, 7\), the model expects \(1, 8, 8\)"):
        data.load(str(tmp_path / "shape.npy"), spec=DataSpec("levels", (1, 8, 8), levels=17))


def test_image_files_are_requantised_but_array_integers_are_levels(tmp_path):
    spec = DataSpec("levels", (1, 8, 8), levels=17)
    bright, dim = np.full((8, 8), 255, dtype=np.uint8), np.full((8, 8), 10, dtype=np.uint8)
    save_png(tmp_path / "one" / "dim.png", dim)
    save_png(tmp_path / "two" / "a_bright.png", bright)
    save_png(tmp_path / "two" / "b_dim.png", dim)
    alone, together = data.load(str(tmp_path / "one"), spec=spec), data.load(str(tmp_path / "two"), spec=spec)
    assert int(alone.x.max()) == 1 and together.x[:, 0, 0, 0].tolist() == [16, 1]  # 10/255 of 16 levels, either way
    np.save(tmp_path / "levels.npy", np.stack([dim, dim // 2]))
    assert data.load(str(tmp_path / "levels.npy"), spec=spec).x[:, 0, 0, 0].tolist() == [10, 5]
    np.save(tmp_path / "img.npy", bright[None])
    with pytest.raises(DataError, match="values must be integer levels 0..16, found 255"):
        data.load(str(tmp_path / "img.npy"), spec=spec)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    Image.fromarray(np.array([[1000, 30000], [50000, 65535]], dtype=np.uint16)).save(tmp_path / "deep.png")
    ds = data.load(str(tmp_path))
    assert ds.x[0, 0].tolist() == [[3, 117], [195, 255]]


def test_new_tables_are_read_by_column_name_and_class_name(tmp_path):
    (tmp_path / "train.csv").write_text("a,b,kind\n1,10,x\n2,20,y\n3,30,z\n")
    (tmp_path / "new.csv").write_text("b,kind,a\n20,z,2\n")
    spec = data.load(str(tmp_path / "train.csv"), label="kind").spec
    new = data.load(str(tmp_path / "new.csv"), spec=spec, label="kind")
    assert torch.allclose(new.x, torch.tensor([[0.0, 0.0]]), atol=1e-6)  # a=2, b=20: the means
    assert new.labels.tolist() == [2]  # z is class 2 of the run, though the only class here
    (tmp_path / "other.csv").write_text("a,c\n1,2\n")
    with pytest.raises(DataError, match="no column 'b', which the model was trained on"):
        data.load(str(tmp_path / "other.csv"), spec=spec)
    (tmp_path / "unknown.csv").write_text("a,b,kind\n1,2,w\n")
    with pytest.raises(DataError, match="label 'w' is not one of the model's classes"):
        data.load(str(tmp_path / "unknown.csv"), spec=spec, label="kind")


def test_corrupt_npz_is_an_error_not_a_traceback(tmp_path, rng):
    np.savez(tmp_path / "t.npz", x=rng.normal(size=(20, 3)))
    (tmp_path / "t.npz").write_bytes((tmp_path / "t.npz").read_bytes()[:-40])
    with pytest.raises(DataError, match="t.npz"):
        data.load(str(tmp_path / "t.npz"))
    (tmp_path / "text.npy").write_text("just some text")
    with pytest.raises(DataError, match="text.npy: not a NumPy array file"):
        data.load(str(tmp_path / "text.npy"))


def test_image_folders_are_decoded_once_into_a_memory_mapped_cache(tmp_path, rng, monkeypatch):
    monkeypatch.setenv("VAEKIT_CACHE", str(tmp_path / "cache"))
    for i in range(4):
        save_png(tmp_path / "imgs" / f"{i}.png", rng.integers(0, 256, (6, 6), dtype=np.uint8))
    first = data.load(str(tmp_path / "imgs"))
    cached_files = list((tmp_path / "cache").glob("*.npy"))
    assert len(cached_files) == 1

    def no_decoding(path):
        raise AssertionError(f"{path} decoded again")

    monkeypatch.setattr(images, "_decode", no_decoding)
    again = data.load(str(tmp_path / "imgs"))
    assert torch.equal(first.x, again.x)
    save_png(tmp_path / "imgs" / "0.png", np.zeros((6, 6), dtype=np.uint8))  # a changed folder is read anew
    with pytest.raises(AssertionError, match="decoded again"):
        data.load(str(tmp_path / "imgs"))


def test_training_split_of_a_mapped_array_stays_on_disk(tmp_path, rng, monkeypatch):
    monkeypatch.setenv("VAEKIT_CACHE", str(tmp_path / "cache"))
    x = rng.integers(0, 256, (500, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "big.npy", x)
    fit, heldout = data.load_for_training(str(tmp_path / "big.npy"), heldout_fraction=0.2, seed=3)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2  # fit and held-out rows, as maps
    rows = torch.randperm(500, generator=torch.Generator().manual_seed(3))
    expected_heldout = np.sort(rows[:100].numpy())
    assert np.array_equal(heldout.x[:, 0].numpy(), x[expected_heldout])
    assert len(fit) == 400 and not np.isin(expected_heldout, np.sort(rows[100:].numpy())).any()
