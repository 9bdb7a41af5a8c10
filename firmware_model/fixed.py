"""Integer arithmetic with the exact semantics of C on a 32-bit MCU, and the controller's random number generator.

numba widens int32 scalars to int64 in arithmetic, so every helper here computes in int64 and casts back explicitly;
nothing relies on numba's implicit integer types. Conventions:
- `wrap_i32`: two's-complement wrap-around (C unsigned-to-signed conversion on the target);
- `sat_i32`: saturate to [INT32_MIN, INT32_MAX] (the CMSIS __SSAT idiom);
- `div_trunc`: C integer division, rounding toward zero (numba's // floors);
- `shift_round`: arithmetic right shift with round-half-away-from-zero, as firmware requantisation does.

Random numbers: xorshift64* (Vigna 2016) on a one-element uint64 state array the caller owns (no global state);
standard normals come from a 2^12-entry quantile table (32 KB, stays in L1) indexed by the top 12 bits of one draw.
"""

import numpy as np
from numba import njit, types
from llvmlite import ir
from numba.extending import intrinsic

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
NORMAL_TABLE_BITS = 12

_M64 = np.uint64(0x2545F4914F6CDD1D)


@njit(cache=True, inline="always")
def wrap_i32(value):
    """Two's-complement wrap of an integer to int32."""
    v = np.int64(value) & np.int64(0xFFFFFFFF)
    if v >= np.int64(0x80000000):
        v -= np.int64(0x100000000)
    return np.int32(v)


@njit(cache=True, inline="always")
def sat_i32(value):
    """Saturate an integer to int32."""
    v = np.int64(value)
    if v > INT32_MAX:
        return np.int32(INT32_MAX)
    if v < INT32_MIN:
        return np.int32(INT32_MIN)
    return np.int32(v)


@njit(cache=True, inline="always")
def div_trunc(a, b):
    """C integer division a / b (toward zero); b != 0, |a| and |b| < 2**63 (the controller passes int32 values)."""
    a = np.int64(a)
    b = np.int64(b)
    q = abs(a) // abs(b)
    if (a < 0) != (b < 0):
        return -q
    return q


@njit(cache=True, inline="always")
def shift_round(value, shift):
    """value / 2**shift rounded half away from zero, for |value| < 2**62 and 0 <= shift < 63 (the controller's
    products stay below 2**47)."""
    v = np.int64(value)
    if shift == 0:
        return v
    half = np.int64(1) << np.int64(shift - 1)
    sign = v >> np.int64(63)  # 0 or -1; branch-free |v| and sign restore (this runs once per chi cell)
    magnitude = (v ^ sign) - sign
    rounded = (magnitude + half) >> np.int64(shift)
    return (rounded ^ sign) - sign


@njit(cache=True, inline="always")
def xorshift_advance(x):
    """One xorshift64 step of a uint64 state value (hot loops keep the state in a local variable)."""
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    return x


@njit(cache=True, inline="always")
def rng_next(state):
    """xorshift64*: advance state[0] and return a 64-bit draw (uint64)."""
    x = xorshift_advance(state[0])
    state[0] = x
    return x * _M64


@njit(cache=True, inline="always")
def rng_u32(state):
    """Uniform uint32 from the high half of a draw (the good bits of xorshift64*)."""
    return rng_next(state) >> np.uint64(32)


@njit(cache=True, inline="always")
def rng_normal(state, normal_table):
    """Standard normal from the quantile table (top NORMAL_TABLE_BITS bits of one draw pick the entry)."""
    return normal_table[np.int64(rng_next(state) >> np.uint64(64 - NORMAL_TABLE_BITS))]


@njit(cache=True, inline="always")
def normal_of(x, normal_table):
    """rng_normal's value for the advanced state value x (x = xorshift_advance(state[0])): hot loops keep the state
    in a local and store it back once, so a draw's chain is the xorshift alone, not a store and load of state[0]
    (the same stream as rng_normal)."""
    return normal_table[np.int64((x * _M64) >> np.uint64(64 - NORMAL_TABLE_BITS))]


def seed_state(seed: int) -> np.ndarray:
    """A fresh generator state from an integer seed (splitmix64 of the seed; never zero)."""
    z = (int(seed) + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    z ^= z >> 31
    return np.array([z or 1], dtype=np.uint64)


def normal_table() -> np.ndarray:
    """2^NORMAL_TABLE_BITS standard-normal quantiles at (k + 1/2) / 2^bits, rescaled to unit variance (tails end at
    about 3.5 sigma for 12 bits)."""
    from statistics import NormalDist

    n = 1 << NORMAL_TABLE_BITS
    inv_cdf = NormalDist().inv_cdf
    table = np.array([inv_cdf((k + 0.5) / n) for k in range(n)])
    table -= table.mean()
    return table / table.std()


@intrinsic
def _ctpop(typingctx, value):
    """LLVM's ctpop (one POPCNT instruction where the CPU has it) on an unsigned integer."""
    if not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return value(value), codegen


@njit(cache=True, inline="always")
def popcount32(value):
    """Number of set bits of a uint32 (the controller's coincidence counter)."""
    return np.int64(_ctpop(np.uint32(value)))


@intrinsic
def _cttz(typingctx, value):
    """LLVM's cttz (one TZCNT/BSF instruction) on a non-zero unsigned integer."""
    if not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return value(value), codegen


@njit(cache=True, inline="always")
def lowest_set_bit(mask):
    """Index of the lowest set bit of a non-zero uint64 (iterating set bits skips zeros without branching on them)."""
    return np.int64(_cttz(np.uint64(mask)))
