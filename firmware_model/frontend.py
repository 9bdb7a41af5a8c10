"""The controller's sensor front end: sliding windows over integer sensor codes and per-channel features in fixed point.

Semantics of C on a 32-bit MCU with 64-bit multiply-accumulate (SMLAL): samples are int16 codes of the sensor's
ADC; sums, sums of squares and sums of magnitudes accumulate in int64; divisions truncate toward zero; the standard
deviation is the integer square root (floor) of the truncated variance. Features are int32 codes in the sample's
own scale (a mean of 1000 codes is 1000), so the host scales them into the DAC range with one constant.
"""

import numpy as np
from numba import njit

from .fixed import div_trunc

FEATURES = ("mean", "std", "min", "max", "mean_abs")
N_FEATURES = len(FEATURES)


@njit(cache=True, inline="always")
def isqrt64(value):
    """floor(sqrt(value)) of a non-negative int64, exact (Newton's method on integers from a power of two above)."""
    n = np.int64(value)
    if n < 2:
        return n
    bits = 0
    t = n
    while t > 0:
        t >>= np.int64(1)
        bits += 1
    x = np.int64(1) << np.int64((bits + 1) // 2)  # >= sqrt(n)
    while True:
        y = (x + n // x) >> np.int64(1)
        if y >= x:
            return x
        x = y


@njit(cache=True)
def window_count(n_samples, length, hop):
    """Number of complete windows of `length` samples every `hop` samples."""
    if n_samples < length:
        return 0
    return (n_samples - length) // hop + 1


@njit(cache=True)
def window_features(codes, length, hop, out):
    """Features of every complete window: out[w, c * N_FEATURES + f] for channel c and feature f in FEATURES
    (mean, std, min, max, mean |x|). codes is int16 [samples, channels]; out int32 [windows, channels * 5]."""
    n, channels = codes.shape
    windows = window_count(n, length, hop)
    length64 = np.int64(length)
    for w in range(windows):
        start = w * hop
        for c in range(channels):
            total = np.int64(0)
            squares = np.int64(0)
            magnitude = np.int64(0)
            low = np.int64(32767)
            high = np.int64(-32768)
            for k in range(start, start + length):
                v = np.int64(codes[k, c])
                total += v
                squares += v * v
                magnitude += v if v >= 0 else -v
                low = min(low, v)
                high = max(high, v)
            variance = div_trunc(length64 * squares - total * total, length64 * length64)
            base = c * N_FEATURES
            out[w, base + 0] = np.int32(div_trunc(total, length64))
            out[w, base + 1] = np.int32(isqrt64(variance))
            out[w, base + 2] = np.int32(low)
            out[w, base + 3] = np.int32(high)
            out[w, base + 4] = np.int32(div_trunc(magnitude, length64))
    return windows


@njit(cache=True)
def decimate(codes, length, hop, factor, out):
    """Raw-sample alternative to features: every `factor`-th sample of each window (int16 copies),
    out[w, c * (length // factor) + k] = codes[start + k * factor, c]."""
    n, channels = codes.shape
    windows = window_count(n, length, hop)
    per = length // factor
    for w in range(windows):
        start = w * hop
        for c in range(channels):
            for k in range(per):
                out[w, c * per + k] = codes[start + k * factor, c]
    return windows


# Normalisation (issue 13): per-feature offset and scale computed at the factory from the pre-training windows and
# stored in the controller as integers. Q formats:
#   feature   int32, in sensor codes (the output of window_features or decimate; |value| <= 32768)
#   offset    int32, in sensor codes (the rounded pre-training mean of the feature)
#   multiplier int32 >= 0 and shift 0..NORM_MAX_SHIFT: the scale multiplier / 2**shift, i.e. the multiplier is
#             unsigned Q(shift); the factory keeps 15 significant bits (multiplier in [2**14, 2**15]) unless the
#             shift would go negative (then shift 0 and the multiplier is the rounded scale)
#   output    int16, Q1.15: the DAC input code (-32768 .. 32767 means -1 .. 1 - 2**-15 of the DAC range)
# z = sat16(((feature - offset) * multiplier + 2**(shift - 1)) >> shift), the difference and the product in int64
# (SMULL on the MCU; |difference| < 2**17 and multiplier < 2**31 keep the product below 2**48), the shift arithmetic
# (floor), so with the added half the result is rounded half up; shift 0 adds nothing. A multiplier of 0 (a feature
# constant over the pre-training data) gives 0.
NORM_MAX_SHIFT = 47
Q15_MIN = -32768
Q15_MAX = 32767


@njit(cache=True)
def normalise(features, offset, multiplier, shift, out):
    """out[w, f] = sat16(((features[w, f] - offset[f]) * multiplier[f] + round) >> shift[f]) for int32 features
    [windows, n]; offset, multiplier, shift int32 [n]; out int16 [windows, n]. Returns the number of saturated
    outputs."""
    n_windows, n = features.shape
    saturated = 0
    for f in range(n):
        o = np.int64(offset[f])
        m = np.int64(multiplier[f])
        s = np.int64(shift[f])
        half = (np.int64(1) << (s - np.int64(1))) if s > 0 else np.int64(0)
        for w in range(n_windows):
            z = ((np.int64(features[w, f]) - o) * m + half) >> s
            if z > Q15_MAX:
                z = np.int64(Q15_MAX)
                saturated += 1
            elif z < Q15_MIN:
                z = np.int64(Q15_MIN)
                saturated += 1
            out[w, f] = np.int16(z)
    return saturated


def normalise_reference(features, offset, multiplier, shift):
    """The slow reference of `normalise` in Python integers (unbounded, floor shift): (out int16, saturated)."""
    features = np.asarray(features)
    out = np.zeros(features.shape, np.int16)
    saturated = 0
    for w in range(features.shape[0]):
        for f in range(features.shape[1]):
            s = int(shift[f])
            z = ((int(features[w, f]) - int(offset[f])) * int(multiplier[f]) + ((1 << (s - 1)) if s else 0)) >> s
            if z > Q15_MAX or z < Q15_MIN:
                saturated += 1
            out[w, f] = min(max(z, Q15_MIN), Q15_MAX)
    return out, saturated
