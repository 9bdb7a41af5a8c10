/* Port of firmware_model/fixed.py: C-semantics integer helpers and the xorshift64* generator. */
#include "el_kernels.h"

int32_t el_wrap_i32(int64_t value) { return el_wrap_i32_inline(value); }

int32_t el_sat_i32(int64_t value) { return el_sat_i32_inline(value); }

int64_t el_div_trunc(int64_t a, int64_t b) { return el_div_trunc_inline(a, b); }

int64_t el_shift_round(int64_t value, int64_t shift) { return el_shift_round_inline(value, shift); }

uint64_t el_xorshift_advance(uint64_t x) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    return x;
}

uint64_t el_rng_next(uint64_t *state) { return el_rng_next_inline(state); }

uint64_t el_rng_u32(uint64_t *state) { return el_rng_u32_inline(state); }

double el_rng_normal(uint64_t *state, const double *normal_table) { return el_rng_normal_inline(state, normal_table); }

int64_t el_popcount32(uint64_t value) {
    return (int64_t)__builtin_popcount((unsigned int)(uint32_t)value);
}

int64_t el_lowest_set_bit(uint64_t mask) {
    return (int64_t)__builtin_ctzll((unsigned long long)mask);
}

double el_floor(double v) { return el_floor_inline(v); }

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
