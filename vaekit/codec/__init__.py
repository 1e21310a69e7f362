"""Lossless compression with a trained model: a vectorised rANS coder (`rans`), bits-back coding with the
model (`bitsback`) and the compressed-file format (`container`)."""

from vaekit.codec.bitsback import BitsBackCodec
from vaekit.codec.container import compress, decompress, read_header
from vaekit.codec.rans import CodecError

__all__ = ["BitsBackCodec", "CodecError", "compress", "decompress", "read_header"]
