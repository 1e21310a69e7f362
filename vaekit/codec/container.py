"""The compressed file: what `compress` writes and `decompress` reads back, byte for byte.

    magic      8 bytes   b"VAEKITZ\\0"
    version    2 bytes   little-endian, FORMAT_VERSION
    header     4 bytes of length, then JSON: the model's fingerprint, item shape, count and dtype,
               the coder's lanes, latent bits and initial (borrowed) words, and a SHA-256 of the data
    payload    the rANS message
    checksum   32 bytes: SHA-256 of everything before it

The checksum catches a truncated or altered file before any decoding starts; the model fingerprint
catches the wrong model; the data hash checks the decoded items, so a mismatch is an error, never
wrong output. Nothing in the file is executed or unpickled: the header is JSON.
"""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import torch

from vaekit.codec import rans
from vaekit.codec.bitsback import BitsBackCodec, lanes_for
from vaekit.codec.rans import CodecError
from vaekit.models import LatentVariableModel

MAGIC = b"VAEKITZ\0"
FORMAT_VERSION = 1
_DIGEST = 32
_PREFIX = struct.Struct("<8sHI")  # magic, version, header length


def model_fingerprint(model: LatentVariableModel) -> str:
    """SHA-256 of the model's configuration and weights: the decoder must use the very same model."""
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _data_hash(items: np.ndarray) -> str:
    digest = hashlib.sha256(f"{items.dtype.str}{items.shape}".encode())
    digest.update(np.ascontiguousarray(items).tobytes())
    return digest.hexdigest()


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
    header = {
        "model": model_fingerprint(model),
        "shape": list(items.shape),
        "dtype": items.dtype.str,
        "lanes": codec.lanes,
        "latent_bits": codec.latent_bits,
        "borrowed_words": message.underflow,
        "data_sha256": _data_hash(items),
    }
    encoded = json.dumps(header, sort_keys=True).encode()
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(encoded)) + encoded + message.to_bytes()
    return body + hashlib.sha256(body).digest()


def read_header(blob: bytes) -> dict:
    """The header of a compressed file, after checking its magic, version, length and checksum."""
    if len(blob) < _PREFIX.size + _DIGEST or blob[:8] != MAGIC:
        raise CodecError("not a vaekit compressed file (no VAEKITZ header)")
    _, version, header_length = _PREFIX.unpack_from(blob)
    if version != FORMAT_VERSION:
        raise CodecError(f"compressed with format version {version}; this vaekit reads version {FORMAT_VERSION}")
    body, digest = blob[:-_DIGEST], blob[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise CodecError("the compressed file is truncated or corrupt (its checksum does not match)")
    try:
        header = json.loads(body[_PREFIX.size : _PREFIX.size + header_length])
        header["payload"] = body[_PREFIX.size + header_length :]
        header["shape"] = tuple(int(n) for n in header["shape"])
        header["dtype"] = np.dtype(header["dtype"])
    except (ValueError, KeyError, TypeError) as error:
        raise CodecError(f"the compressed file's header is unreadable: {error}") from None
    return header


def decompress(model: LatentVariableModel, blob: bytes) -> np.ndarray:
    """The items a compressed file holds, with their original shape and dtype."""
    header = read_header(blob)
    if header["model"] != model_fingerprint(model):
        raise CodecError("this file was compressed with another model (its fingerprint differs)")
    shape, lanes = header["shape"], int(header["lanes"])
    codec = BitsBackCodec(model, lanes=lanes, latent_bits=int(header["latent_bits"]))
    message = rans.Message.from_bytes(header["payload"], lanes)
    x = codec.decode(message, shape[0])
    borrowed = int(header["borrowed_words"])
    if not ((message.head == rans.LOWER).all() and len(message.tail) == borrowed and not message.tail.any()):
        raise CodecError("decoding did not end where encoding began: the file does not fit this model")
    items = x.numpy().reshape(shape).astype(header["dtype"])
    if _data_hash(items) != header["data_sha256"]:
        raise CodecError("the decoded data do not match the original's checksum")
    return items
