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
