/* Port of firmware_model/frontend.py: sliding windows over int16 sensor codes, features and normalisation in fixed
 * point (int64 accumulation, C division, floor shifts). */
#include "el_kernels.h"

int64_t el_isqrt64(int64_t value) {
    int64_t n = value;
    if (n < 2) {
        return n;
    }
    int64_t bits = 0;
    int64_t t = n;
    while (t > 0) {
        t >>= 1; /* t > 0: a plain shift */
        bits += 1;
    }
    int64_t x = (int64_t)1 << el_floordiv64(bits + 1, 2); /* >= sqrt(n) */
    for (;;) {
        int64_t y = (x + n / x) >> 1; /* n, x > 0: // is C division; the sum stays below 2**63 */
        if (y >= x) {
            return x;
        }
        x = y;
    }
}

int64_t el_window_count(int64_t n_samples, int64_t length, int64_t hop) {
    if (n_samples < length) {
        return 0;
    }
    return el_floordiv64(n_samples - length, hop) + 1;
}

int64_t el_window_features(const int16_t *codes, int64_t n, int64_t channels, int64_t length, int64_t hop,
                           int32_t *out, int64_t out_cols) {
    int64_t windows = el_window_count(n, length, hop);
    int64_t length64 = length;
    for (int64_t w = 0; w < windows; w++) {
        int64_t start = el_mul64(w, hop);
        int32_t *row = out + (size_t)(w * out_cols);
        for (int64_t c = 0; c < channels; c++) {
            int64_t total = 0;
            int64_t squares = 0;
            int64_t magnitude = 0;
            int64_t low = 32767;
            int64_t high = -32768;
            for (int64_t k = start; k < start + length; k++) {
                int64_t v = codes[k * channels + c];
                total = el_add64(total, v);
                squares = el_add64(squares, v * v);
                magnitude = el_add64(magnitude, v >= 0 ? v : -v);
                low = el_imin(low, v);
                high = el_imax(high, v);
            }
            int64_t variance = el_div_trunc_inline(el_sub64(el_mul64(length64, squares), el_mul64(total, total)),
                                            el_mul64(length64, length64));
            int64_t base = c * EL_N_FEATURES;
            row[base + 0] = el_i32_of(el_div_trunc_inline(total, length64));
            row[base + 1] = el_i32_of(el_isqrt64(variance));
            row[base + 2] = el_i32_of(low);
            row[base + 3] = el_i32_of(high);
            row[base + 4] = el_i32_of(el_div_trunc_inline(magnitude, length64));
        }
    }
    return windows;
}

int64_t el_decimate(const int16_t *codes, int64_t n, int64_t channels, int64_t length, int64_t hop, int64_t factor,
                    int16_t *out, int64_t out_cols) {
    int64_t windows = el_window_count(n, length, hop);
    int64_t per = el_floordiv64(length, factor);
    for (int64_t w = 0; w < windows; w++) {
        int64_t start = w * hop;
        int16_t *row = out + (size_t)(w * out_cols);
        for (int64_t c = 0; c < channels; c++) {
            for (int64_t k = 0; k < per; k++) {
                row[c * per + k] = codes[(start + k * factor) * channels + c];
            }
        }
    }
    return windows;
}

int64_t el_normalise(const int32_t *features, int64_t n_windows, int64_t n, const int32_t *offset,
                     const int32_t *multiplier, const int32_t *shift, int16_t *out) {
    int64_t saturated = 0;
    for (int64_t f = 0; f < n; f++) {
        int64_t o = offset[f];
        int64_t m = multiplier[f];
        int64_t s = shift[f];
        int64_t half = s > 0 ? (int64_t)((uint64_t)1 << (uint64_t)(s - 1)) : 0;
        for (int64_t w = 0; w < n_windows; w++) {
            int64_t z = el_asr64(el_add64(el_mul64((int64_t)features[w * n + f] - o, m), half), s);
            if (z > EL_Q15_MAX) {
                z = EL_Q15_MAX;
                saturated += 1;
            } else if (z < EL_Q15_MIN) {
                z = EL_Q15_MIN;
                saturated += 1;
            }
            out[w * n + f] = (int16_t)z;
        }
    }
    return saturated;
}
