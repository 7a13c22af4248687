"""dfa_engine.fixed against an independent reference in Python ints and Fractions."""

from fractions import Fraction

import numpy as np
import pytest

from _reference import fmt_bounds, ref_from_float, ref_round, ref_sat
from dfa_engine.fixed import ROUNDING_MODES, FixedFormat, requantize, saturate, shift_round

RNG_SEED = 20240611


# ---- FixedFormat -----------------------------------------------------------------------

@pytest.mark.parametrize("text, signed, int_bits, frac_bits, width, lo, hi", [
    ("s3.12", True, 3, 12, 16, -32768, 32767),
    ("u0.8", False, 0, 8, 8, 0, 255),
    ("s1.14", True, 1, 14, 16, -32768, 32767),
    ("s5.10", True, 5, 10, 16, -32768, 32767),
    ("u0.16", False, 0, 16, 16, 0, 65535),
    ("u2.6", False, 2, 6, 8, 0, 255),
    ("s0.0", True, 0, 0, 1, -1, 0),
    ("u0.1", False, 0, 1, 1, 0, 1),
    ("u1.0", False, 1, 0, 1, 0, 1),
    ("s7.0", True, 7, 0, 8, -128, 127),
    ("s0.7", True, 0, 7, 8, -128, 127),
    ("s1.46", True, 1, 46, 48, -(2 ** 47), 2 ** 47 - 1),
    ("u48.0", False, 48, 0, 48, 0, 2 ** 48 - 1),
    ("u0.48", False, 0, 48, 48, 0, 2 ** 48 - 1),
])
def test_parse_str_width_bounds(text, signed, int_bits, frac_bits, width, lo, hi):
    f = FixedFormat.parse(text)
    assert (f.signed, f.int_bits, f.frac_bits) == (signed, int_bits, frac_bits)
    assert f == FixedFormat(signed, int_bits, frac_bits)
    assert str(f) == text
    assert FixedFormat.parse(str(f)) == f
    assert f.width == width
    assert (f.min_raw, f.max_raw) == (lo, hi) == fmt_bounds(signed, int_bits, frac_bits)
    assert type(f.min_raw) is int and type(f.max_raw) is int
    assert Fraction(f.max_value) == Fraction(hi, 2 ** frac_bits)
    assert Fraction(f.min_value) == Fraction(lo, 2 ** frac_bits)
    assert Fraction(f.lsb) == Fraction(1, 2 ** frac_bits)


def test_parse_strips_surrounding_whitespace():
    assert FixedFormat.parse("  s3.12 ") == FixedFormat(True, 3, 12)


@pytest.mark.parametrize("text", [
    "", "s3", "s3.", "s.12", "3.12", "x3.12", "S3.12", "U0.8", "s3.12.1", "s3,12", "s-1.2",
    "s1.-2", "s 3.12", "s3. 12", "s+3.12", "sign3.12", "s3.12u", "s0x1.2",
])
def test_parse_rejects_malformed_strings(text):
    with pytest.raises(ValueError) as exc:
        FixedFormat.parse(text)
    assert str(exc.value) == (f"{text!r} is not a format; write s<int>.<frac> or u<int>.<frac>, "
                              "e.g. 's3.12'")


@pytest.mark.parametrize("text, width", [("u0.0", 0), ("s40.10", 51), ("u49.0", 49), ("s0.48", 49)])
def test_parse_rejects_bad_widths(text, width):
    with pytest.raises(ValueError) as exc:
        FixedFormat.parse(text)
    assert str(exc.value) == f"format width must be 1..48 bits, not {width} ({text})"


@pytest.mark.parametrize("value", [3.12, 312, None, b"s3.12"])
def test_parse_rejects_non_strings(value):
    with pytest.raises(TypeError) as exc:
        FixedFormat.parse(value)
    assert str(exc.value) == f"a format is a string like 's3.12', not {value!r}"


def test_constructor_checks_fields():
    with pytest.raises(ValueError, match=r"^int_bits must be a non-negative integer, not -1$"):
        FixedFormat(True, -1, 3)
    with pytest.raises(ValueError, match=r"^frac_bits must be a non-negative integer, not True$"):
        FixedFormat(True, 1, True)
    with pytest.raises(TypeError, match=r"^signed must be a bool, not 1$"):
        FixedFormat(1, 1, 3)


FLOAT_FORMATS = ["s3.12", "u0.8", "s1.14", "s0.0", "u2.6", "s1.46", "u0.16"]


@pytest.mark.parametrize("text", FLOAT_FORMATS)
def test_from_float_matches_reference(text):
    f = FixedFormat.parse(text)
    rng = np.random.default_rng(RNG_SEED)
    span = max(abs(f.min_value), f.max_value, 1.0)
    values = list(rng.uniform(-1.5 * span, 1.5 * span, 400))
    lsb = Fraction(1, 2 ** f.frac_bits)
    # Exact ties (k + 1/2) lsb for positive and negative k, values next to the ties,
    # the bounds, just beyond them, zero and the classic floor(x + 0.5) trap.
    for k in (-3, -2, -1, 0, 1, 2, 5):
        tie = float((k + Fraction(1, 2)) * lsb)
        values += [tie, np.nextafter(tie, -np.inf), np.nextafter(tie, np.inf)]
    values += [f.max_value, f.min_value, f.max_value + f.lsb / 2, f.max_value + f.lsb,
               f.min_value - f.lsb / 2, f.min_value - f.lsb, 0.0, -0.0, 1e300, -1e300,
               0.49999999999999994 * f.lsb, -0.49999999999999994 * f.lsb]
    with np.errstate(over="ignore"):                   # 1e300 * 2^frac overflows to inf: saturates
        got = f.from_float(np.array(values))
    assert got.dtype == np.int64
    want = [ref_from_float(float(v), f.signed, f.int_bits, f.frac_bits) for v in values]
    assert got.tolist() == want
    # Scalar input gives a 0-d result with the same value.
    assert int(f.from_float(values[0])) == want[0]


def test_from_float_largest_double_below_half_rounds_down():
    # floor(v + 0.5) in float64 turns 0.49999999999999994 into 1; the exact rule gives 0.
    f = FixedFormat.parse("s3.0")
    assert int(f.from_float(0.49999999999999994)) == 0
    assert int(f.from_float(0.5)) == 1
    assert int(f.from_float(-0.5)) == 0
    assert int(f.from_float(-1.5)) == -1


def test_to_float_is_exact():
    f = FixedFormat.parse("s1.46")
    raws = [f.min_raw, f.max_raw, 0, 1, -1, 12345678901]
    assert [Fraction(v) for v in f.to_float(raws)] == [Fraction(r, 2 ** 46) for r in raws]


# ---- shift_round ------------------------------------------------------------------------

def _random_cases(rng, n, max_bits=61):
    bits = rng.integers(0, max_bits, n)
    mags = np.array([int(rng.integers(0, 2 ** int(b))) if b else 0 for b in bits], dtype=np.int64)
    signs = rng.choice([-1, 1], n)
    return mags * signs


def _edge_values(s):
    vals = [0, 1, -1, 2 ** 47 - 1, -(2 ** 47), 2 ** 40, -(2 ** 40), 2 ** 60 - 1, -(2 ** 60)]
    if s > 0:
        for k in (-5, -2, -1, 0, 1, 2, 7):
            tie = k * 2 ** s + 2 ** (s - 1)          # exact halfway points
            vals += [tie, tie - 1, tie + 1, k * 2 ** s, k * 2 ** s - 1]
    return vals


@pytest.mark.parametrize("mode", ["trunc", "nearest"])
@pytest.mark.parametrize("s", [-5, -1, 0, 1, 2, 3, 7, 14, 15, 31, 32, 33, 40])
def test_shift_round_deterministic_modes(mode, s):
    rng = np.random.default_rng(RNG_SEED + s)
    limit = 61 if s >= 0 else 61 + s  # keep x << -s below 2^62
    x = np.concatenate([_random_cases(rng, 300, limit),
                        np.array([v for v in _edge_values(s) if abs(v) < 2 ** limit], dtype=np.int64)])
    got = shift_round(x, s, mode)
    assert got.dtype == np.int64
    assert got.tolist() == [ref_round(int(v), s, mode) for v in x]


@pytest.mark.parametrize("s", [1, 2, 3, 5, 8, 15, 16, 24, 31, 32])
def test_shift_round_stochastic(s):
    rng = np.random.default_rng(RNG_SEED + 100 + s)
    x = np.concatenate([_random_cases(rng, 300, 60), np.array(_edge_values(s), dtype=np.int64)])
    r = rng.integers(0, 2 ** 32, x.size, dtype=np.int64)
    got = shift_round(x, s, "stochastic", r)
    assert got.tolist() == [ref_round(int(v), s, "stochastic", int(w)) for v, w in zip(x, r)]


def test_shift_round_ties_go_up_for_both_signs():
    # x = k * 2^s + 2^(s-1): nearest gives k + 1 (towards +inf), also for k < 0.
    s = 4
    for k in range(-6, 7):
        x = k * 16 + 8
        assert int(shift_round(x, s, "nearest")) == k + 1
        assert int(shift_round(x, s, "trunc")) == k
    assert int(shift_round(-8, 4, "nearest")) == 0
    assert int(shift_round(-9, 4, "nearest")) == -1
    assert int(shift_round(-1, 4, "trunc")) == -1


def test_shift_round_nonpositive_shift_is_exact_left_shift():
    x = np.array([0, 1, -1, 12345, -(2 ** 40)], dtype=np.int64)
    for mode in ROUNDING_MODES:
        assert shift_round(x, 0, mode, rand=np.zeros(5)).tolist() == x.tolist()
        assert shift_round(x, -3, mode, rand=np.zeros(5)).tolist() == [int(v) * 8 for v in x]


def test_shift_round_stochastic_uses_only_low_bits_of_rand():
    s = 5
    x = np.arange(-100, 100, dtype=np.int64)
    rng = np.random.default_rng(3)
    low = rng.integers(0, 2 ** s, x.size)
    high = rng.integers(0, 2 ** (32 - s), x.size) << s
    assert shift_round(x, s, "stochastic", low).tolist() == shift_round(x, s, "stochastic", low + high).tolist()


@pytest.mark.parametrize("s", [1, 2, 3, 4, 7, 10])
def test_stochastic_rounding_is_exactly_unbiased(s):
    """The mean over all 2^s values of r is exactly x / 2^s."""
    rng = np.random.default_rng(RNG_SEED + 200 + s)
    xs = list(_random_cases(rng, 40, 50)) + [0, 1, -1, 2 ** (s - 1), -(2 ** (s - 1)), 2 ** 47 - 1, -(2 ** 47)]
    r = np.arange(2 ** s, dtype=np.int64)
    for x in xs:
        out = shift_round(np.full(r.size, x, dtype=np.int64), s, "stochastic", r)
        assert Fraction(sum(int(v) for v in out), 2 ** s) == Fraction(int(x), 2 ** s)
        # Only the two neighbouring integers occur, with the right frequencies.
        lo = int(x) // 2 ** s
        assert set(out.tolist()) <= {lo, lo + 1}
        assert int(np.count_nonzero(out == lo + 1)) == int(x) % 2 ** s


def test_shift_round_errors():
    with pytest.raises(ValueError) as exc:
        shift_round(5, 2, "up")
    assert str(exc.value) == "rounding mode must be one of ('trunc', 'nearest', 'stochastic'), not 'up'"
    with pytest.raises(ValueError) as exc:
        shift_round(5, 2, "stochastic")
    assert str(exc.value) == "stochastic rounding needs random words (rand)"
    with pytest.raises(ValueError) as exc:
        shift_round(5, 33, "stochastic", rand=0)
    assert str(exc.value) == "stochastic rounding shift must be <= 32, not 33"


# ---- saturate ---------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["s3.12", "u0.8", "s0.0", "u0.1", "s1.46", "u48.0"])
def test_saturate_boundaries(text):
    f = FixedFormat.parse(text)
    lo, hi = fmt_bounds(f.signed, f.int_bits, f.frac_bits)
    x = [hi, hi + 1, hi + 1000, lo, lo - 1, lo - 1000, 0, (lo + hi) // 2]
    want = [ref_sat(v, lo, hi) for v in x]
    assert want[:6] == [hi, hi, hi, lo, lo, lo]
    stats = {}
    assert saturate(np.array(x, dtype=np.int64), f, stats, "site").tolist() == want
    assert stats == {"site": 4}
    assert f.saturate(np.array(x, dtype=np.int64)).tolist() == want


def test_saturate_counts_accumulate_and_absent_when_nothing_clamps():
    f = FixedFormat.parse("s1.2")        # raw -8 .. 7
    stats = {}
    saturate(np.array([-8, 7, 0]), f, stats, "a1")
    assert stats == {}
    saturate(np.array([-9, 8, 0]), f, stats, "a1")
    saturate(np.array([100]), f, stats, "a1")
    saturate(np.array([100]), f, stats, "b1")
    assert stats == {"a1": 3, "b1": 1}


def test_saturate_random_matches_reference():
    rng = np.random.default_rng(RNG_SEED + 300)
    f = FixedFormat.parse("s2.5")
    x = rng.integers(-400, 400, 2000)
    assert saturate(x, f).tolist() == [ref_sat(int(v), -128, 127) for v in x]


# ---- requantize ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ROUNDING_MODES)
@pytest.mark.parametrize("text, from_frac", [("s1.2", 6), ("s1.14", 22), ("s5.10", 22), ("s0.7", 7),
                                             ("s3.4", 2), ("u0.8", 12)])
def test_requantize_is_round_then_saturate(mode, text, from_frac):
    f = FixedFormat.parse(text)
    lo, hi = fmt_bounds(f.signed, f.int_bits, f.frac_bits)
    s = from_frac - f.frac_bits
    rng = np.random.default_rng(RNG_SEED + 400 + from_frac)
    span = (hi - lo + 1) * 2 ** max(s, 0)
    x = rng.integers(-2 * span, 2 * span, 500)
    edges = [hi * 2 ** max(s, 0) + d for d in (-1, 0, 1, 2 ** max(s - 1, 0), 2 ** max(s, 0))]
    edges += [lo * 2 ** max(s, 0) + d for d in (-2 ** max(s, 0) - 1, -1, 0, 1)]
    x = np.concatenate([x, np.array(edges, dtype=np.int64)])
    r = rng.integers(0, 2 ** 32, x.size)
    stats = {}
    got = requantize(x, from_frac, f, mode, rand=r if mode == "stochastic" else None, stats=stats, name="q")
    want = [ref_round(int(v), s, mode, int(w)) for v, w in zip(x, r)]
    clamped = sum(not lo <= v <= hi for v in want)
    assert got.tolist() == [ref_sat(v, lo, hi) for v in want]
    assert stats == ({"q": clamped} if clamped else {})


def test_requantize_order_matters():
    """Round first, saturate second: clamping the raw value first gives another result."""
    f = FixedFormat.parse("s1.2")    # raw -8 .. 7
    # 1000 / 2^4 = 62.5 -> 63 -> 7; clamping first: 1000 -> 7 -> round(7 / 16) = 0.
    assert int(requantize(1000, 6, f, "nearest")) == 7
    assert int(shift_round(saturate(1000, f), 4, "nearest")) == 0
    # Negative side: -1000 / 16 = -62.5 -> -62 -> -8; clamping first: -8 / 16 -> 0.
    assert int(requantize(-1000, 6, f, "nearest")) == -8
    assert int(shift_round(saturate(-1000, f), 4, "nearest")) == 0
    # A value that only rounds past the bound (7.5 lsb -> 8) is clamped and counted.
    stats = {}
    assert int(requantize(120, 6, f, "nearest", stats=stats, name="q")) == 7
    assert stats == {"q": 1}


def test_parse_rejects_non_ascii_digits():
    # "\u0663" is ARABIC-INDIC DIGIT THREE: int() would accept it, a format must not.
    with pytest.raises(ValueError, match="is not a format"):
        FixedFormat.parse("s\u0663.4")
