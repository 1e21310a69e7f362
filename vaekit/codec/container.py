"""The compressed file: what `compress` writes and `decompress` reads back, byte for byte.

All integers little-endian; about 100 bytes besides the payload, since on small data sets every
byte of overhead shows in the bits per value.

    magic         8 bytes   b"VAEKITZ\\0"
    version       u16       FORMAT_VERSION
    lanes         u16       the rANS coder's lanes in every shard
    latent bits   u8        buckets per latent dimension: 2^latent bits
    dtype         u8 length, then the NumPy dtype string of the items (an integer type)
    shape         u8 count, then u64 each: the items' shape, count first
    shards        u16 count, then per shard two u64: the zero words its first pops took from below
                            its message (the decoder returns them), its payload's bytes
    model         16 bytes  SHA-256 (first half) of the model's configuration and weights
    data          16 bytes  SHA-256 (first half) of the items' dtype, shape and bytes
    payloads                each shard's rANS message, in the items' order
    checksum      16 bytes  SHA-256 (first half) of everything before it

Large data are cut into shards, consecutive runs of items coded as separate messages (as
`shard_sizes` cuts them: the count gives their sizes), so that the cores of a machine code them side
by side, in processes (see `vaekit.parallel`). How many shards depends only on the data's size, never on the
machine, so the same input gives the same file anywhere, and any machine decodes it.

The checksum catches a truncated or altered file before any decoding starts; the model fingerprint
catches the wrong model; the data hash checks the decoded items, so a mismatch is an error, never
wrong output. Nothing in the file is executed or unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Callable

import numpy as np
import torch

from vaekit.codec import rans
from vaekit.codec.bitsback import BitsBackCodec, lanes_for
from vaekit.codec.rans import CodecError
from vaekit.models import LatentVariableModel
from vaekit.parallel import map_shards

MAGIC = b"VAEKITZ\0"
FORMAT_VERSION = 3  # 2: items in interleaved chains, one per lane; 3: in shards
HASH_BYTES = 16  # half a SHA-256: collisions stay out of reach, and 48 bytes fewer per file
_FIXED = struct.Struct("<8sHHB")  # magic, version, lanes, latent bits
_INTEGER_DTYPE = re.compile(r"[<>|=][iub][1248]")  # what `items.dtype.str` gives for integer data
_SHARD = struct.Struct("<2Q")  # borrowed words, payload bytes
SHARD_VALUES = 1 << 19  # values per shard at least: a few seconds of coding, and a negligible 64 lanes' states
MAX_SHARDS = 8  # a power of two, so that 2, 4 or 8 cores share them evenly


def shards_for(items: int, values: int) -> int:
    """How many shards to cut data of this many items and values into: a power of two, from the size alone."""
    most = min(MAX_SHARDS, items, values // SHARD_VALUES)
    return 1 << max(0, most.bit_length() - 1) if most > 1 else 1


def shard_sizes(items: int, shards: int) -> list[int]:
    """Items per shard, in order: as even as can be, the larger ones first (as `torch.tensor_split` cuts)."""
    return [items // shards + (i < items % shards) for i in range(shards)]


def _hash(*parts: bytes) -> bytes:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.digest()[:HASH_BYTES]


def model_fingerprint(model: LatentVariableModel) -> bytes:
    """A hash of the model's configuration and weights: the decoder must use the very same model."""
    parts = [json.dumps(model.config.to_dict(), sort_keys=True).encode()]
    for name, tensor in sorted(model.state_dict().items()):
        parts += [name.encode(), tensor.detach().cpu().contiguous().numpy().tobytes()]
    return _hash(*parts)


def _data_hash(items: np.ndarray) -> bytes:
    return _hash(f"{items.dtype.str}{items.shape}".encode(), np.ascontiguousarray(items).tobytes())


def compress(
    model: LatentVariableModel,
    items: np.ndarray,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> bytes:
    """Items (n, *item shape) of integer symbols the model codes (0/1 for a Bernoulli model, levels
    0..levels-1 for a discretised one) as the bytes of a compressed file. Shards are coded on `workers`
    processes (default: every core this process may use); `progress(n)` hears of every n items coded."""
    items = np.asarray(items)
    if items.dtype.kind not in "iub":
        raise CodecError(f"only integer data can be compressed losslessly, got {items.dtype}")
    if items.ndim < 1:
        raise CodecError("compress takes an array of items, not a single number")
    if items.size != len(items) * model.spec.dim:
        raise CodecError(f"items of shape {items.shape[1:]} do not fit this model's {tuple(model.spec.shape)}")
    x = torch.as_tensor(items.astype(np.float32)).reshape(len(items), *model.spec.shape)
    shards = x.split(shard_sizes(len(items), shards_for(len(items), items.size)))
    codec = BitsBackCodec(model, lanes=lanes_for(shards[0].numel()))
    coded = map_shards(_encode_shard, codec, [(shard,) for shard in shards], workers, progress)
    dtype = items.dtype.str.encode()
    body = b"".join([
        _FIXED.pack(MAGIC, FORMAT_VERSION, codec.lanes, codec.latent_bits),
        struct.pack("<B", len(dtype)), dtype,
        struct.pack(f"<B{items.ndim}Q", items.ndim, *items.shape),
        struct.pack("<H", len(shards)),
        *(_SHARD.pack(borrowed, len(payload)) for borrowed, payload in coded),
        model_fingerprint(model), _data_hash(items),
        *(payload for _, payload in coded),
    ])  # fmt: skip
    return body + _hash(body)


def _encode_shard(
    codec: BitsBackCodec, shard: torch.Tensor, progress: Callable[[int], None] | None = None
) -> tuple[int, bytes]:
    """The zero words the shard's first pops borrowed, and its message's bytes."""
    message = codec.encode(shard, progress=progress)
    return message.underflow, message.to_bytes()


def _decode_shard(
    codec: BitsBackCodec, n: int, borrowed: int, payload: bytes, progress: Callable[[int], None] | None = None
) -> torch.Tensor:
    message = rans.Message.from_bytes(payload, codec.lanes)
    x = codec.decode(message, n, progress=progress)
    if not ((message.head == rans.LOWER).all() and len(message.tail) == borrowed and not message.tail.any()):
        raise CodecError("decoding did not end where encoding began: the file does not fit this model")
    return x


def read_header(blob: bytes) -> dict:
    """The header fields and payloads of a compressed file, after checking its magic, version and checksum."""
    if len(blob) < _FIXED.size + HASH_BYTES or blob[:8] != MAGIC:
        raise CodecError("not a vaekit compressed file (no VAEKITZ header)")
    _, version, lanes, latent_bits = _FIXED.unpack_from(blob)
    if version != FORMAT_VERSION:
        raise CodecError(f"compressed with format version {version}; this vaekit reads version {FORMAT_VERSION}")
    body = blob[:-HASH_BYTES]
    if _hash(body) != blob[-HASH_BYTES:]:
        raise CodecError("the compressed file is truncated or corrupt (its checksum does not match)")
    try:
        at = _FIXED.size
        (length,) = struct.unpack_from("<B", body, at)
        dtype_text = body[at + 1 : at + 1 + length].decode("ascii")
        if not _INTEGER_DTYPE.fullmatch(dtype_text):  # np.dtype would parse (and literal_eval) anything else
            raise CodecError(f"the compressed file's header is invalid (dtype {dtype_text!r})")
        dtype = np.dtype(dtype_text)
        at += 1 + length
        (ndim,) = struct.unpack_from("<B", body, at)
        shape = struct.unpack_from(f"<{ndim}Q", body, at + 1)
        at += 1 + 8 * ndim
        (count,) = struct.unpack_from("<H", body, at)
        table = [_SHARD.unpack_from(body, at + 2 + i * _SHARD.size) for i in range(count)]
        at += 2 + count * _SHARD.size
        model, data = body[at : at + HASH_BYTES], body[at + HASH_BYTES : at + 2 * HASH_BYTES]
        at += 2 * HASH_BYTES
        payloads = []
        for _, size in table:
            payloads.append(body[at : at + size])
            at += size
    except (struct.error, UnicodeDecodeError, TypeError, ValueError) as error:
        raise CodecError(f"the compressed file's header is unreadable ({error})") from None
    if ndim < 1 or len(data) != HASH_BYTES:  # the dtype was checked where it was read
        raise CodecError("the compressed file's header is invalid (shape or hashes)")
    if at != len(body) or not 1 <= count <= max(1, shape[0]):
        raise CodecError("the compressed file's header is invalid (its shards do not add up)")
    sizes = shard_sizes(shape[0], count)
    shards = [(n, borrowed, payload) for n, (borrowed, _), payload in zip(sizes, table, payloads, strict=True)]
    return {"lanes": lanes, "latent_bits": latent_bits, "dtype": dtype, "shape": shape, "model": model,
            "data_hash": data, "shards": shards}  # fmt: skip


def decompress(
    model: LatentVariableModel,
    blob: bytes,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The items a compressed file holds, with their original shape and dtype; shards are decoded on
    `workers` processes (default: every core this process may use)."""
    header = read_header(blob)
    if header["model"] != model_fingerprint(model):
        raise CodecError("this file was compressed with another model (its fingerprint differs)")
    shape, lanes = header["shape"], int(header["lanes"])
    if math.prod(shape[1:]) != model.spec.dim:
        raise CodecError(f"the file holds items of shape {shape[1:]}, which this model does not code")
    codec = BitsBackCodec(model, lanes=lanes, latent_bits=int(header["latent_bits"]))
    parts = map_shards(_decode_shard, codec, header["shards"], workers, progress)
    x = torch.cat(parts) if parts else torch.zeros(0, *model.spec.shape)
    items = x.numpy().reshape(shape).astype(header["dtype"])
    if _data_hash(items) != header["data_hash"]:
        raise CodecError("the decoded data do not match the original's checksum")
    return items
