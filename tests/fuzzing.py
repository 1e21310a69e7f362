"""Fuzz targets, shared by the tests (a few hundred inputs) and `benchmarks/fuzz.py` (100,000 and more).

Two readers take untrusted bytes: the compressed-file decoder and the run-folder loader (config.json beside
good weights). For any input each must give a result or a VaekitError, within TIME_LIMIT seconds. Inputs are
random bytes and mutations of a valid seed; half the mutated files get their checksum recomputed, so that
the mutation reaches the header parser and the decoder behind the checksum.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

import vaekit
from vaekit import codec, data
from vaekit.codec.container import FORMAT_VERSION, HASH_BYTES, MAGIC
from vaekit.errors import VaekitError

TIME_LIMIT = 2.0  # seconds per input; the seeds decode in milliseconds


class Hang(Exception):
    """An input took longer than TIME_LIMIT."""


@contextlib.contextmanager
def time_limit(seconds: float = TIME_LIMIT) -> Iterator[None]:
    def interrupt(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    # and again every 0.1 s: an exception raised inside a callback that swallows it (a gc hook) must not end the watch
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.1)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def seed_file(model, items: int = 3) -> bytes:
    """A valid compressed file of the first test images of `digits`."""
    test = data.load("digits", "test", spec=model.spec)
    return codec.compress(model, test.x[:items].numpy())


# --- inputs -------------------------------------------------------------------------------------------------


@st.composite
def mutated(draw, seed: bytes, reseal: bool = True) -> bytes:
    """A few random edits of `seed`: flipped or overwritten bytes, header integers, truncation, insertion."""
    blob = bytearray(seed)
    where = draw(st.randoms(use_true_random=False))  # uniform positions: hypothesis' integers favour the first bytes
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(st.sampled_from(["flip", "overwrite", "integer", "truncate", "insert", "delete"]))
        at = where.randrange(max(1, len(blob)))
        if edit == "flip" and blob:
            blob[at] ^= draw(st.integers(1, 255))
        elif edit == "overwrite":
            blob[at : at + 8] = draw(st.binary(min_size=1, max_size=8))
        elif edit == "integer":  # a header field set to an extreme or random value
            width = draw(st.sampled_from([1, 2, 4, 8]))
            value = draw(st.one_of(st.integers(0, 2 ** (8 * width) - 1), st.sampled_from([0, 2 ** (8 * width) - 1])))
            blob[at : at + width] = value.to_bytes(width, "little")
        elif edit == "truncate":
            del blob[at:]
        elif edit == "insert":
            blob[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif edit == "delete":
            del blob[at : at + draw(st.integers(1, 16))]
    if reseal and draw(st.booleans()) and len(blob) > HASH_BYTES:
        body = bytes(blob[:-HASH_BYTES])
        blob[-HASH_BYTES:] = hashlib.sha256(body).digest()[:HASH_BYTES]
    return bytes(blob)


def compressed_files(seed: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(
        mutated(seed),
        mutated(seed),
        mutated(seed),  # mostly edits of a valid file: they get past the magic
        st.binary(max_size=512),
        st.binary(max_size=512).map(lambda tail: MAGIC + struct.pack("<HHB", FORMAT_VERSION, 1, 12) + tail),
    )


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def _paths(node, prefix=()) -> list[tuple]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*prefix, i))
    return found


@st.composite
def edited_config(draw, seed: dict) -> bytes:
    """The seed config with one to three values replaced, removed or added."""
    config = json.loads(json.dumps(seed))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(config)))
        if not path:
            config = draw(JSON_VALUES)
            continue
        parent = config
        try:
            for key in path[:-1]:
                parent = parent[key]
            edit = draw(st.sampled_from(["replace", "remove", "add"]))
            if edit == "replace":
                parent[path[-1]] = draw(JSON_VALUES)
            elif edit == "remove":
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[draw(st.text(max_size=8))] = draw(JSON_VALUES)
        except (KeyError, IndexError, TypeError):  # an earlier edit changed the tree under this path
            pass
    return json.dumps(config).encode()


def config_files(seed: dict) -> st.SearchStrategy[bytes]:
    text = json.dumps(seed, indent=2).encode()
    return st.one_of(edited_config(seed), edited_config(seed), mutated(text, reseal=False), st.binary(max_size=256))


# --- targets ------------------------------------------------------------------------------------------------


REASONS = {  # where in the reader an input was refused, from its message: a sign of how deep the fuzzing gets
    "no VAEKITZ header": "magic", "format version": "version", "checksum": "checksum", "header": "header",
    "another model": "model fingerprint", "items of shape": "item shape", "latent_bits": "coder settings",
    "lane": "coder settings", "ran out": "decoder: message ran dry", "slot lies outside": "decoder: bad slot",
    "did not end": "decoder: wrong end state", "original's checksum": "decoded data hash",
}  # fmt: skip


def decode(model, blob: bytes) -> str:
    """'decoded', or the error class and where it was raised; anything else (or a hang) propagates."""
    try:
        with time_limit():
            items = codec.decompress(model, blob)
    except VaekitError as error:
        reason = next((label for key, label in REASONS.items() if key in str(error)), "other")
        return f"{type(error).__name__} ({reason})"
    assert isinstance(items, np.ndarray)
    return "decoded"


CONFIG_REASONS = {
    "corrupt JSON": "JSON", "not a vaekit run configuration": "format", "invalid model section": "model section",
    "weights do not match": "weights against config",
}  # fmt: skip


def load_config(run_dir: Path, text: bytes) -> str:
    """'loaded', or the name of the VaekitError, for a run folder whose config.json holds `text`."""
    (run_dir / "config.json").write_bytes(text)
    try:
        with time_limit():
            vaekit.load(run_dir)
    except VaekitError as error:
        reason = next((label for key, label in CONFIG_REASONS.items() if key in str(error)), "other")
        return f"{type(error).__name__} ({reason})"
    return "loaded"
