"""dfa_engine.lfsr against an independent GF(2)[x] polynomial implementation."""

import numpy as np
import pytest

from _reference import (POLY, X_INV, RefLFSR, mulmod, powmod, ref_draw, ref_fmix32,
                        ref_seed_state, ref_step)
from dfa_engine import lfsr
from dfa_engine.lfsr import LFSR, LFSRBlock, draw, fmix32, seed_state, step

PERIOD = 2 ** 32 - 1
PERIOD_FACTORS = (3, 5, 17, 257, 65537)


def test_reference_polynomial_and_taps():
    assert PERIOD == 3 * 5 * 17 * 257 * 65537
    assert POLY == (1 << 32) | (1 << 22) | 0b111
    assert mulmod(0b10, X_INV) == 1                      # x * x^-1 = 1
    # The tap mask of the right-shift Galois form is x^-1 mod p.
    assert lfsr.TAPS == X_INV == 0x80200003


def test_polynomial_is_primitive():
    """x has order 2^32 - 1 modulo p, so the LFSR's period is 2^32 - 1 from any nonzero state."""
    x = 0b10
    assert powmod(x, PERIOD) == 1
    for q in PERIOD_FACTORS:
        assert powmod(x, PERIOD // q) != 1


def test_step_matches_polynomial_reference():
    rng = np.random.default_rng(1)
    states = [1, 2, 3, 0x80000000, 0xFFFFFFFF, 0x80200003, 0x00400000] + [
        int(s) for s in rng.integers(1, 2 ** 32, 2000)]
    for s in states:
        assert step(s) == ref_step(s)
        assert 0 < step(s) <= 0xFFFFFFFF


def test_step_is_a_bijection_on_nonzero_states():
    # Inverse of the step: multiply by x. Zero is the only fixed point of the linear map.
    rng = np.random.default_rng(2)
    for s in [int(v) for v in rng.integers(1, 2 ** 32, 500)]:
        assert mulmod(step(s), 0b10) == s
    assert step(0) == 0


def test_draw_is_32_steps():
    rng = np.random.default_rng(3)
    assert lfsr.STEPS_PER_DRAW == 32
    for s in [1, 0xFFFFFFFF] + [int(v) for v in rng.integers(1, 2 ** 32, 300)]:
        t = s
        for _ in range(32):
            t = ref_step(t)
        assert draw(s) == t == ref_draw(s)


def test_state_never_zero_and_no_short_cycle():
    # 100 000 draws from a few seeds: never zero, and all distinct (the period is 2^32 - 1).
    for seed in (1, 0xDEADBEEF, seed_state(0, 0)):
        words = LFSRBlock(seed).draws(100_000)
        assert words.min() > 0 and words.max() <= 0xFFFFFFFF
        assert np.unique(words).size == words.size
        assert seed not in set(words.tolist())


def test_leap_by_period_returns_to_start():
    # x^-(2^32 - 1) = 1: stepping a whole period is the identity; half a period is not.
    s = 0x12345678
    assert mulmod(s, powmod(X_INV, PERIOD)) == s
    assert mulmod(s, powmod(X_INV, PERIOD // 3)) != s


@pytest.mark.parametrize("bad", [0, -1, 2 ** 32, 2 ** 40])
def test_invalid_states_rejected(bad):
    with pytest.raises(ValueError, match=rf"^LFSR state must be 1\.\.2\^32-1, not {bad}$"):
        LFSR(bad)
    with pytest.raises(ValueError, match=rf"^LFSR state must be 1\.\.2\^32-1, not {bad}$"):
        LFSRBlock(bad)


def test_lfsr_draw_matches_reference_sequence():
    a, b = LFSR(0xACE1), RefLFSR(0xACE1)
    for _ in range(200):
        assert a.draw() == b.draw()
    assert a.state == b.state


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 9, 31, 32, 33, 64, 100, 127, 1000, 4097])
def test_block_draws_equal_sequential_draws(n):
    seed = 0x9E3779B9 ^ n or 1
    block, seq = LFSRBlock(seed), LFSR(seed)
    words = block.draws(n)
    assert words.dtype == np.int64 and words.shape == (n,)
    assert words.tolist() == [seq.draw() for _ in range(n)]
    assert block.state == seq.state == (words[-1] if n else seed)


def test_block_consecutive_calls_continue_the_sequence():
    sizes = [3, 0, 1, 17, 64, 5, 0, 129, 2, 1000]
    block, seq = LFSRBlock(0x1234), LFSR(0x1234)
    out = np.concatenate([block.draws(n) for n in sizes])
    assert out.tolist() == [seq.draw() for _ in range(sum(sizes))]
    assert block.state == seq.state


def test_block_matches_polynomial_reference():
    words = LFSRBlock(0xCAFEBABE).draws(50)
    assert words.tolist() == RefLFSR(0xCAFEBABE).draws(50)


def test_fmix32_matches_reference():
    rng = np.random.default_rng(4)
    for h in [0, 1, 2, 0xFFFFFFFF, 0x80000000, 2 ** 40 + 5] + [int(v) for v in rng.integers(0, 2 ** 32, 2000)]:
        assert fmix32(h) == ref_fmix32(h)
    assert fmix32(0) == 0


def test_seed_state_matches_reference_and_differs_across_streams():
    for seed in (0, 1, 7, 0xFFFFFFFF, 2 ** 32 + 3, 123456789):
        states = [seed_state(seed, stream) for stream in range(3000)]
        assert states == [ref_seed_state(seed, stream) for stream in range(3000)]
        assert len(set(states)) == len(states)
        assert all(0 < s <= 0xFFFFFFFF for s in states)
    # Different seeds, same stream: different states.
    assert len({seed_state(seed, 5) for seed in range(2000)}) == 2000


def test_seed_state_never_returns_zero():
    # fmix32 is a bijection with fmix32(0) = 0, so this seed makes the mixed value 0.
    stream = 5
    seed = ref_fmix32(stream + 0x9E3779B9)
    assert ref_fmix32(seed ^ ref_fmix32(stream + 0x9E3779B9)) == 0
    assert seed_state(seed, stream) == 1


def test_known_answers():
    """Values computed by the reference implementation in tests/_reference.py, pinned."""
    assert ref_step(1) == 0x80200003
    assert step(1) == 0x80200003
    assert step(2) == 1
    # x^31 * x^-32 = x^-1: a draw from 0x80000000 lands on the tap mask.
    assert [draw(1), draw(0x80000000)] == [ref_draw(1), ref_draw(0x80000000)] == [0x8A0F3DB5, 0x80200003]
    assert LFSRBlock(1).draws(4).tolist() == RefLFSR(1).draws(4) == KNOWN_DRAWS_FROM_1
    assert [fmix32(v) for v in (1, 2, 0xFFFFFFFF)] == [ref_fmix32(v) for v in (1, 2, 0xFFFFFFFF)] == KNOWN_FMIX
    assert [seed_state(0, s) for s in range(3)] == [ref_seed_state(0, s) for s in range(3)] == KNOWN_SEED0
    assert [seed_state(7, 1000 + s) for s in range(2)] == [ref_seed_state(7, 1000 + s) for s in range(2)] == KNOWN_SEED7


KNOWN_DRAWS_FROM_1 = [0x8A0F3DB5, 0x90BD2FA6, 0x44C38D95, 0x972542A4]
KNOWN_FMIX = [0x514E28B7, 0x30F4C306, 0x81F16F39]     # murmur3 fmix32(1) = 0x514E28B7
KNOWN_SEED0 = [0xAA3E5B61, 0x70F6C6D8, 0xC1A705D0]
KNOWN_SEED7 = [0x62DE8F31, 0xF4A0D706]


@pytest.mark.parametrize("sizes", [[0], [1], [5], [3, 0, 7, 64, 1]])
def test_bank_draws_equal_per_stream_sequential_draws(sizes):
    from dfa_engine.lfsr import LFSRBank

    seeds = [1, 0xFFFFFFFF, 0x12345678, 99, 0x80000000]
    bank, seqs = LFSRBank(seeds), [RefLFSR(s) for s in seeds]
    for n in sizes:
        out = bank.draws(n)
        assert out.dtype == np.int64 and out.shape == (len(seeds), n)
        assert out.tolist() == [r.draws(n) for r in seqs]
    assert bank.states.tolist() == [r.state for r in seqs]
    with pytest.raises(ValueError):
        LFSRBank([3, 0])


def test_row_streams_start_at_documented_states():
    from dfa_engine.lfsr import row_streams

    bank = row_streams(7, 1, 4)            # layer 2 (0-based 1): streams 2 * 65536 + i
    assert bank.states.tolist() == [ref_seed_state(7, 2 * 65536 + i) for i in range(4)]
