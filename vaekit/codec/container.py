"""The compressed file: what `compress` writes and `decompress` reads back, byte for byte.

All integers little-endian; about 100 bytes besides the payload, since on small data sets every
byte of overhead shows in the bits per value.

    magic         8 bytes   b"VAEKITZ\\0"
    version       u16       FORMAT_VERSION
    lanes         u16       the rANS coder's lanes
    latent bits   u8        buckets per latent dimension: 2^latent bits
    dtype         u8 length, then the NumPy dtype string of the items (an integer type)
    shape         u8 count, then u64 each: the items' shape, count first
    borrowed      u64       zero words the first pops took from below the message (the decoder returns them)
    model         16 bytes  SHA-256 (first half) of the model's configuration and weights
    data          16 bytes  SHA-256 (first half) of the items' dtype, shape and bytes
    payload                 the rANS message
    checksum      16 bytes  SHA-256 (first half) of everything before it

The checksum catches a truncated or altered file before any decoding starts; the model fingerprint
catches the wrong model; the data hash checks the decoded items, so a mismatch is an error, never
wrong output. Nothing in the file is executed or unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct

import numpy as np
import torch

from vaekit.codec import rans
from vaekit.codec.bitsback import BitsBackCodec, lanes_for
from vaekit.codec.rans import CodecError
from vaekit.models import LatentVariableModel

MAGIC = b"VAEKITZ\0"
FORMAT_VERSION = 2  # 2: items in interleaved chains, one per lane
HASH_BYTES = 16  # half a SHA-256: collisions stay out of reach, and 48 bytes fewer per file
_FIXED = struct.Struct("<8sHHB")  # magic, version, lanes, latent bits


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


def compress(model: LatentVariableModel, items: np.ndarray) -> bytes:
    """Items (n, *item shape) of integer symbols the model codes (0/1 for a Bernoulli model, levels
    0..levels-1 for a discretised one) as the bytes of a compressed file."""
    items = np.asarray(items)
    if items.dtype.kind not in "iub":
        raise CodecError(f"only integer data can be compressed losslessly, got {items.dtype}")
    if items.ndim < 1:
        raise CodecError("compress takes an array of items, not a single number")
    if items.size != len(items) * model.spec.dim:
        raise CodecError(f"items of shape {items.shape[1:]} do not fit this model's {tuple(model.spec.shape)}")
    codec = BitsBackCodec(model, lanes=lanes_for(items.size))
    message = codec.encode(torch.as_tensor(items.astype(np.float32)).reshape(len(items), *model.spec.shape))
    dtype = items.dtype.str.encode()
    body = b"".join([
        _FIXED.pack(MAGIC, FORMAT_VERSION, codec.lanes, codec.latent_bits),
        struct.pack("<B", len(dtype)), dtype,
        struct.pack(f"<B{items.ndim}Q", items.ndim, *items.shape),
        struct.pack("<Q", message.underflow),
        model_fingerprint(model), _data_hash(items),
        message.to_bytes(),
    ])  # fmt: skip
    return body + _hash(body)


def read_header(blob: bytes) -> dict:
    """The header fields and payload of a compressed file, after checking its magic, version and checksum."""
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
        dtype = np.dtype(body[at + 1 : at + 1 + length].decode("ascii"))
        at += 1 + length
        (ndim,) = struct.unpack_from("<B", body, at)
        shape = struct.unpack_from(f"<{ndim}Q", body, at + 1)
        at += 1 + 8 * ndim
        (borrowed,) = struct.unpack_from("<Q", body, at)
        at += 8
        model, data = body[at : at + HASH_BYTES], body[at + HASH_BYTES : at + 2 * HASH_BYTES]
        payload = body[at + 2 * HASH_BYTES :]
    except (struct.error, UnicodeDecodeError, TypeError, ValueError) as error:
        raise CodecError(f"the compressed file's header is unreadable ({error})") from None
    if dtype.kind not in "iub" or ndim < 1 or len(data) != HASH_BYTES:
        raise CodecError("the compressed file's header is invalid (dtype, shape or hashes)")
    return {"lanes": lanes, "latent_bits": latent_bits, "dtype": dtype, "shape": shape, "borrowed_words": borrowed,
            "model": model, "data_hash": data, "payload": payload}  # fmt: skip


def decompress(model: LatentVariableModel, blob: bytes) -> np.ndarray:
    """The items a compressed file holds, with their original shape and dtype."""
    header = read_header(blob)
    if header["model"] != model_fingerprint(model):
        raise CodecError("this file was compressed with another model (its fingerprint differs)")
    shape, lanes = header["shape"], int(header["lanes"])
    if math.prod(shape[1:]) != model.spec.dim:
        raise CodecError(f"the file holds items of shape {shape[1:]}, which this model does not code")
    codec = BitsBackCodec(model, lanes=lanes, latent_bits=int(header["latent_bits"]))
    message = rans.Message.from_bytes(header["payload"], lanes)
    x = codec.decode(message, shape[0])
    borrowed = int(header["borrowed_words"])
    if not ((message.head == rans.LOWER).all() and len(message.tail) == borrowed and not message.tail.any()):
        raise CodecError("decoding did not end where encoding began: the file does not fit this model")
    items = x.numpy().reshape(shape).astype(header["dtype"])
    if _data_hash(items) != header["data_hash"]:
        raise CodecError("the decoded data do not match the original's checksum")
    return items
