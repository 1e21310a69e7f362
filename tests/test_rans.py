"""The vectorised rANS coder: against a scalar reference, round trips, code lengths, bad messages."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaekit.codec import rans


def random_cdfs(rng, lanes, alphabet, precision):
    """Per-lane integer tables: every symbol at least frequency 1, summing to 2^precision."""
    total = 1 << precision
    weights = rng.random((lanes, alphabet)) + 0.05
    freqs = np.maximum(1, np.floor(weights / weights.sum(1, keepdims=True) * (total - alphabet))).astype(np.int64)
    freqs[:, -1] += total - freqs.sum(1)
    return np.concatenate([np.zeros((lanes, 1), np.int64), np.cumsum(freqs, 1)], 1)


def push_symbols(message, cdf, symbols, precision):
    rows = np.arange(len(cdf))
    rans.push(message, cdf[rows, symbols], cdf[rows, symbols + 1] - cdf[rows, symbols], precision)


def scalar_reference(symbols, cdf, precision):
    """One lane, Python integers: the textbook rANS encoder with 32-bit renormalisation."""
    x, words = 1 << 32, []
    for s in symbols:
        start, freq = int(cdf[s]), int(cdf[s + 1] - cdf[s])
        if x >= freq << (64 - precision):
            words.append(x & 0xFFFFFFFF)
            x >>= 32
        x = (x // freq << precision) + x % freq + start
    return x, words


def test_one_lane_matches_the_scalar_reference_word_for_word():
    rng = np.random.default_rng(0)
    precision = 12
    cdf = random_cdfs(rng, 1, 5, precision)
    symbols = rng.integers(0, 5, 2000)
    message = rans.Message(1)
    for s in symbols:
        push_symbols(message, cdf, np.array([s]), precision)
    head, words = scalar_reference(symbols, cdf[0], precision)
    assert int(message.head[0]) == head
    assert message.tail.tolist() == words


def test_many_lanes_round_trip_and_leave_the_initial_message():
    rng = np.random.default_rng(1)
    lanes, precision, steps = 64, 16, 300
    tables = [random_cdfs(rng, lanes, 7, precision) for _ in range(steps)]
    symbols = [rng.integers(0, 7, lanes) for _ in range(steps)]
    message = rans.Message(lanes)
    for cdf, s in zip(tables, symbols, strict=True):
        push_symbols(message, cdf, s, precision)
    restored = rans.Message.from_bytes(message.to_bytes(), lanes)
    for cdf, s in zip(reversed(tables), reversed(symbols), strict=True):
        assert np.array_equal(rans.pop(restored, rans.categorical_lookup(cdf), precision), s)
    assert (restored.head == rans.LOWER).all() and len(restored.tail) == 0 and restored.underflow == 0


def test_code_length_is_the_information_content_plus_the_fixed_head():
    rng = np.random.default_rng(2)
    lanes, precision, steps = 16, 16, 2000
    cdf = random_cdfs(rng, lanes, 4, precision)
    rows = np.arange(lanes)
    message, information = rans.Message(lanes), 0.0
    for _ in range(steps):
        s = rng.integers(0, 4, lanes)
        push_symbols(message, cdf, s, precision)
        information -= np.log2((cdf[rows, s + 1] - cdf[rows, s]) / 2**precision).sum()
    # each lane's head holds at most 64 bits, of which 32 are its fixed starting bound
    assert information <= message.bits() - 32 * lanes <= information + 32 * lanes + 32


def test_push_and_pop_on_a_subset_of_lanes():
    rng = np.random.default_rng(3)
    cdf = random_cdfs(rng, 3, 5, 10)
    message = rans.Message(8)
    picked = np.array([1, 4, 6])
    s = rng.integers(0, 5, 3)
    rows = np.arange(3)
    rans.push(message, cdf[rows, s], cdf[rows, s + 1] - cdf[rows, s], 10, lanes=picked)
    untouched = np.setdiff1d(np.arange(8), picked)
    assert (message.head[untouched] == rans.LOWER).all()
    assert np.array_equal(rans.pop(message, rans.categorical_lookup(cdf), 10, lanes=picked), s)


def test_popping_an_empty_message_reads_zeros_that_pushing_back_restores():
    rng = np.random.default_rng(4)
    lanes, precision = 5, 8
    cdfs = [random_cdfs(rng, lanes, 200, precision) for _ in range(40)]
    message = rans.Message(lanes)
    popped = [rans.pop(message, rans.categorical_lookup(c), precision) for c in cdfs]
    assert message.underflow > 0
    for cdf, s in zip(reversed(cdfs), reversed(popped), strict=True):
        push_symbols(message, cdf, s, precision)
    assert (message.head == rans.LOWER).all()
    assert not message.tail.any() and len(message.tail) == message.underflow  # the zeros, pushed back


def test_bad_messages_and_tables_are_refused():
    message = rans.Message(2)
    with pytest.raises(rans.CodecError, match="zero frequency"):
        rans.push(message, np.array([0, 0]), np.array([1, 0]), 4)
    with pytest.raises(rans.CodecError, match="precision"):
        rans.push(message, np.array([0, 0]), np.array([1, 1]), 30)
    with pytest.raises(rans.CodecError, match="cannot be 9 bytes"):
        rans.Message.from_bytes(b"\0" * 9, 1)
    with pytest.raises(rans.CodecError, match="lower bound"):
        rans.Message.from_bytes(b"\0" * 8, 1)
    with pytest.raises(rans.CodecError, match="at least one lane"):
        rans.Message(0)


@settings(max_examples=60, deadline=None)
@given(
    lanes=st.integers(1, 6),
    alphabet=st.integers(1, 9),
    precision=st.integers(4, 24),
    steps=st.integers(1, 60),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_tables_and_symbols_round_trip(lanes, alphabet, precision, steps, seed):
    if alphabet > 1 << precision:
        return
    rng = np.random.default_rng(seed)
    tables = [random_cdfs(rng, lanes, alphabet, precision) for _ in range(steps)]
    symbols = [rng.integers(0, alphabet, lanes) for _ in range(steps)]
    message = rans.Message(lanes)
    for cdf, s in zip(tables, symbols, strict=True):
        push_symbols(message, cdf, s, precision)
    restored = rans.Message.from_bytes(message.to_bytes(), lanes)
    decoded = [rans.pop(restored, rans.categorical_lookup(cdf), precision) for cdf in reversed(tables)]
    assert all(np.array_equal(a, b) for a, b in zip(decoded, reversed(symbols), strict=True))
    assert restored.underflow == 0 and len(restored.tail) == 0
    assert (restored.head == rans.LOWER).all()
