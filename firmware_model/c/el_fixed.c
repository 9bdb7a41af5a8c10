/* Port of firmware_model/fixed.py: C-semantics integer helpers and the xorshift64* generator. */
#include "el_kernels.h"

#define EL_M64 UINT64_C(0x2545F4914F6CDD1D)
#define EL_TWO52 4503599627370496.0

int32_t el_wrap_i32(int64_t value) {
    int64_t v = value & INT64_C(0xFFFFFFFF);
    if (v >= INT64_C(0x80000000)) {
        v -= INT64_C(0x100000000);
    }
    return (int32_t)v;
}

int32_t el_sat_i32(int64_t value) {
    if (value > EL_INT32_MAX) {
        return EL_INT32_MAX;
    }
    if (value < EL_INT32_MIN) {
        return EL_INT32_MIN;
    }
    return (int32_t)value;
}

int64_t el_div_trunc(int64_t a, int64_t b) {
    /* q = abs(a) // abs(b): both non-negative, so floor and C truncation agree (|a|, |b| < 2**63) */
    uint64_t ua = a < 0 ? (uint64_t)0 - (uint64_t)a : (uint64_t)a;
    uint64_t ub = b < 0 ? (uint64_t)0 - (uint64_t)b : (uint64_t)b;
    int64_t q = el_u2i64(ua / ub);
    if ((a < 0) != (b < 0)) {
        return el_sub64(0, q);
    }
    return q;
}

int64_t el_shift_round(int64_t value, int64_t shift) {
    if (shift == 0) {
        return value;
    }
    uint64_t v = (uint64_t)value;
    uint64_t half = (uint64_t)1 << (uint64_t)(shift - 1);
    uint64_t sign = (uint64_t)0 - (v >> 63); /* 0 or all ones: value >> 63 */
    uint64_t magnitude = (v ^ sign) - sign;
    uint64_t rounded = (magnitude + half) >> (uint64_t)shift; /* magnitude + half < 2**63: a logical shift is exact */
    return el_u2i64((rounded ^ sign) - sign);
}

uint64_t el_xorshift_advance(uint64_t x) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    return x;
}

uint64_t el_rng_next(uint64_t *state) {
    uint64_t x = el_xorshift_advance(state[0]);
    state[0] = x;
    return x * EL_M64;
}

uint64_t el_rng_u32(uint64_t *state) {
    return el_rng_next(state) >> 32;
}

double el_rng_normal(uint64_t *state, const double *normal_table) {
    return normal_table[el_rng_next(state) >> (64 - EL_NORMAL_TABLE_BITS)];
}

int64_t el_popcount32(uint64_t value) {
    return (int64_t)__builtin_popcount((unsigned int)(uint32_t)value);
}

int64_t el_lowest_set_bit(uint64_t mask) {
    return (int64_t)__builtin_ctzll((unsigned long long)mask);
}

double el_floor(double v) {
    if (v == 0.0 || !(el_fabs(v) < EL_TWO52)) {
        return v; /* zero (either sign), already integral, infinite or NaN */
    }
    double t = (double)(int64_t)v; /* truncation toward zero, exact below 2**52 */
    if (t > v) {
        t -= 1.0;
    }
    return t;
}

double el_ceil(double v) {
    if (v == 0.0 || !(el_fabs(v) < EL_TWO52)) {
        return v;
    }
    double t = (double)(int64_t)v;
    if (t < v) {
        t += 1.0;
    }
    if (t == 0.0 && v < 0.0) {
        return -0.0; /* ceil of (-1, 0) is -0.0 */
    }
    return t;
}
