"""Constants and ROM contents of the output-error unit (``docs/numerics.md`` section 4),
shared by the golden model and the RTL."""

from __future__ import annotations

import math

#: Fraction bits of the exp table entries (u1.15: 1.0 is 2**15).
EXP_FRAC_BITS = 15
#: The reciprocal is R = floor(2**RECIP_BITS / S).
RECIP_BITS = 31


def exp_table(cfg) -> list:
    """``E[k] = floor(exp(-k / 2^t) * 2^15 + 1/2)`` for ``k < softmax.table_size``."""
    t = cfg.softmax_table_frac_bits
    return [math.floor(math.exp(-k / (1 << t)) * (1 << EXP_FRAC_BITS) + 0.5)
            for k in range(cfg.softmax_table_size)]
