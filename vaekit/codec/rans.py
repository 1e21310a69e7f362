"""A range asymmetric numeral systems (rANS) coder, vectorised over many lanes with NumPy.

A message is a stack: `push` encodes one symbol per lane under integer frequencies, `pop` decodes the
symbols pushed last. Bits-back coding needs both in any order (it pops a latent before pushing the
data), which is why the coder is a stack rather than a stream.

Each lane keeps a 64-bit state in [2^32, 2^64); a push that would overflow first moves the state's low
32 bits onto a tail shared by all lanes, and a pop that leaves a state below 2^32 takes them back. The
lanes that move words are the same ones, in the same order, on the way in and on the way out, so one
flat tail serves every lane. Frequencies are integers summing to 2^precision (precision <= 24), so every
step is exact integer arithmetic and a decoder reproduces the encoder bit for bit.

Popping more than was pushed reads zero words from below the tail: the initial bits of bits-back
coding. A decoder that runs every step in reverse pushes those zeros back, so nothing is lost.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vaekit.errors import VaekitError

LOWER = np.uint64(1 << 32)  # each lane's state stays in [LOWER, 2^64) between steps
WORD_MASK = np.uint64(0xFFFFFFFF)
MAX_PRECISION = 24


class CodecError(VaekitError):
    """Data cannot be coded, or a compressed message is not valid."""


class Message:
    """The coder's state: one 64-bit head per lane and a tail of 32-bit words shared by all lanes."""

    def __init__(self, lanes: int, may_borrow: bool = True):
        if lanes < 1:
            raise CodecError(f"a message needs at least one lane, got {lanes}")
        self.head = np.full(lanes, LOWER, dtype=np.uint64)
        self._tail = np.zeros(1024, dtype=np.uint32)
        self._size = 0
        self.underflow = 0  # zero words popped from below the tail (the initial bits)
        # An encoder starts empty and borrows zero words; a decoder retraces it and never needs to, so a read
        # message that runs dry is corrupt, and this bounds the work any file can cause
        self.may_borrow = may_borrow

    @property
    def lanes(self) -> int:
        return len(self.head)

    @property
    def tail(self) -> np.ndarray:
        return self._tail[: self._size]

    def _push_words(self, words: np.ndarray) -> None:
        end = self._size + len(words)
        if end > len(self._tail):
            grown = np.zeros(max(end, 2 * len(self._tail)), dtype=np.uint32)
            grown[: self._size] = self.tail
            self._tail = grown
        self._tail[self._size : end] = words
        self._size = end

    def _pop_words(self, count: int) -> np.ndarray:
        available = min(count, self._size)
        if available < count and not self.may_borrow:
            raise CodecError("the message ran out before decoding ended: the data are corrupt or not of this model")
        words = np.zeros(count, dtype=np.uint32)
        words[count - available :] = self._tail[self._size - available : self._size]
        self._size -= available
        self.underflow += count - available
        return words

    def bits(self) -> int:
        """The length of the message in bits, as `to_bytes` writes it."""
        return 8 * len(self.to_bytes())

    def to_bytes(self) -> bytes:
        """Heads then tail, little-endian. The lane count is not stored: the container records it."""
        return self.head.astype("<u8").tobytes() + self.tail.astype("<u4").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, lanes: int) -> Message:
        head_bytes = 8 * lanes
        if len(data) < head_bytes or (len(data) - head_bytes) % 4:
            raise CodecError(f"a message of {lanes} lanes cannot be {len(data)} bytes long")
        message = cls(lanes, may_borrow=False)
        message.head = np.frombuffer(data[:head_bytes], dtype="<u8").astype(np.uint64)
        if (message.head < LOWER).any():
            raise CodecError("the message is corrupt: a lane's state lies below its lower bound")
        message._push_words(np.frombuffer(data[head_bytes:], dtype="<u4").astype(np.uint32))
        return message


def _check_precision(precision: int) -> np.uint64:
    if not 1 <= precision <= MAX_PRECISION:
        raise CodecError(f"precision must lie in 1..{MAX_PRECISION} bits, got {precision}")
    return np.uint64(precision)


def push(message: Message, starts: np.ndarray, freqs: np.ndarray, precision: int, lanes=slice(None)) -> None:
    """Encode one symbol in each of `lanes`: the symbol occupying [start, start + freq) of 2^precision."""
    p = _check_precision(precision)
    starts, freqs = np.asarray(starts, dtype=np.uint64), np.asarray(freqs, dtype=np.uint64)
    if (freqs == 0).any():
        raise CodecError("a symbol with zero frequency cannot be coded")
    head = message.head[lanes]
    overflow = (head >> (np.uint64(64) - p)) >= freqs  # the push would leave [2^32, 2^64)
    message._push_words((head[overflow] & WORD_MASK).astype(np.uint32))
    head = np.where(overflow, head >> np.uint64(32), head)
    message.head[lanes] = ((head // freqs) << p) + head % freqs + starts


Lookup = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def pop(message: Message, lookup: Lookup, precision: int, lanes=slice(None)) -> np.ndarray:
    """Decode one symbol from each of `lanes`. `lookup(slots)` maps each lane's slot in [0, 2^precision)
    to (symbol, start, freq) of the symbol whose interval holds it."""
    p = _check_precision(precision)
    head = message.head[lanes]
    slots = head & np.uint64((1 << int(p)) - 1)
    symbols, starts, freqs = lookup(slots)
    starts, freqs = np.asarray(starts, dtype=np.uint64), np.asarray(freqs, dtype=np.uint64)
    if ((slots < starts) | (slots >= starts + freqs)).any():
        raise CodecError("the message is corrupt: a slot lies outside its symbol's interval")
    head = freqs * (head >> p) + slots - starts
    underflow = head < LOWER
    words = message._pop_words(int(underflow.sum())).astype(np.uint64)
    head[underflow] = (head[underflow] << np.uint64(32)) | words
    message.head[lanes] = head
    return symbols


def _splitmix64(v: np.ndarray) -> np.ndarray:
    """A fixed 64-bit hash (the splitmix64 finaliser): every output bit depends on every input bit."""
    with np.errstate(over="ignore"):
        v = (v ^ (v >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        v = (v ^ (v >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return v ^ (v >> np.uint64(31))


def scramble(message: Message, precision: int, lanes=slice(None)) -> None:
    """XOR the low `precision` bits of each lane's state with a hash of its other bits.

    The next pop reads its slot from those low bits, which after a push hold the symbol just pushed;
    bits-back coding needs that slot to look uniform, whatever was pushed. The high bits are left as
    they are, so the state keeps its size (and the message its length), and scrambling twice restores
    the state: a decoder undoes it by doing it again at the mirrored step.
    """
    p = _check_precision(precision)
    head = message.head[lanes]
    message.head[lanes] = head ^ (_splitmix64(head >> p) & np.uint64((1 << int(p)) - 1))


def categorical_lookup(cdf: np.ndarray) -> Lookup:
    """A lookup for per-lane categorical tables: cdf (lanes, alphabet + 1), from 0 to 2^precision."""
    cdf = np.asarray(cdf, dtype=np.uint64)

    def lookup(slots: np.ndarray):
        symbols = (cdf[:, 1:] <= slots[:, None]).sum(axis=1)
        rows = np.arange(len(cdf))
        return symbols, cdf[rows, symbols], cdf[rows, symbols + 1] - cdf[rows, symbols]

    return lookup
