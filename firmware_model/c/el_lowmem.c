/* Port of firmware_model/lowmem.py: mixed precision on a narrow (int8 / int16) accumulator and the transfer buffer,
 * both with stochastic rounding. Operation order follows the Python source literally; the element width is a
 * compile-time constant of each exported function (the shared bodies are inlined and specialised). */
#include "el_lowmem.h"

#define LM_TWO63 9223372036854775808.0
#define LM_TWO64 18446744073709551616.0

static inline void count(int64_t *counters, int index, int64_t n) {
    counters[index] = el_add64(counters[index], n);
}

/* double -> int64 as numba's conversion runs on x86-64 (cvttsd2si): truncation, and INT64_MIN for NaN or a value
 * outside the int64 range (C leaves those undefined; only degenerate inputs reach them) */
static inline int64_t lm_f2i64(double d) {
    if (d >= -LM_TWO63 && d < LM_TWO63) {
        return (int64_t)d;
    }
    return INT64_MIN;
}

/* double -> uint64 for stochastic_round's threshold: the value is in [0, 2^32] (-0.0 included); NaN, the only other
 * input (x NaN), gives UINT64_MAX as numba's conversion does on x86-64 */
static inline uint64_t lm_f2u64(double d) {
    if (d > -1.0 && d < LM_TWO64) {
        return (uint64_t)d;
    }
    return UINT64_MAX;
}

/* narrow array element load / store; a store keeps the low bits (numba stores an int64 into int8/16/32 so) */
static inline int64_t lm_load(const void *a, size_t k, int width) {
    switch (width) {
    case 8:
        return ((const int8_t *)a)[k];
    case 16:
        return ((const int16_t *)a)[k];
    default:
        return ((const int32_t *)a)[k];
    }
}

static inline void lm_store(void *a, size_t k, int width, int64_t v) {
    uint64_t u = (uint64_t)v;
    switch (width) {
    case 8: {
        uint8_t b = (uint8_t)u;
        ((int8_t *)a)[k] = b <= 127u ? (int8_t)b : (int8_t)((int)b - 256);
        break;
    }
    case 16: {
        uint16_t b = (uint16_t)u;
        ((int16_t *)a)[k] = b <= 32767u ? (int16_t)b : (int16_t)((int32_t)b - 65536);
        break;
    }
    default:
        ((int32_t *)a)[k] = el_i32_of(v);
        break;
    }
}

static inline int64_t stochastic_round(double x, uint64_t *rng) {
    x = el_fmin(el_fmax(x, -EL_LOWMEM_LIMIT), EL_LOWMEM_LIMIT);
    int64_t fl = lm_f2i64(el_floor_inline(x));
    uint64_t threshold = lm_f2u64((x - (double)fl) * EL_LOWMEM_TWO32); /* in [0, 2^32] */
    int64_t up = el_rng_u32_inline(rng) < threshold ? 1 : 0;
    return el_add64(fl, up);
}

int64_t el_stochastic_round(double x, uint64_t *rng) { return stochastic_round(x, rng); }

static inline int64_t mp_update_dense_q(double *state, const double *params, int64_t rows, int64_t cols,
                                        const double *table_up, int64_t n_up, const double *table_down,
                                        int64_t n_down, double c2c_std, void *chi, int width, const double *gradient,
                                        double scale, int64_t eps_up_q, int64_t eps_down_q, int64_t chi_min,
                                        int64_t chi_max, int64_t max_pulses, uint64_t *rng,
                                        const double *normal_table, int32_t *device_pulses, int64_t *counters) {
    count(counters, EL_C_UPDATES, 1);
    int64_t eps_up = eps_up_q;
    int64_t eps_down = eps_down_q;
    int64_t lo = chi_min;
    int64_t hi = chi_max;
    int64_t total = 0;
    int64_t net_up = 0;
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t j = 0; j < cols; j++) {
            size_t cell = (size_t)(i * cols + j);
            int64_t c = el_add64(lm_load(chi, cell, width), stochastic_round(scale * gradient[cell], rng));
            c = el_imin(el_imax(c, lo), hi);
            if (el_sub64(0, eps_down) < c && c < eps_up) {
                lm_store(chi, cell, width, c);
                continue;
            }
            int64_t eps = c > 0 ? eps_up : eps_down;
            int64_t n = el_div_trunc_inline(c, eps);
            if (max_pulses > 0) {
                n = el_imin(el_imax(n, el_sub64(0, max_pulses)), max_pulses);
            }
            lm_store(chi, cell, width, el_sub64(c, el_mul64(n, eps)));
            bool down = n < 0;
            int64_t cnt = down ? el_sub64(0, n) : n;
            el_pulse_device(state, params, rows, cols, i, j, cnt, down ? EL_POLARITY_DOWN : EL_POLARITY_UP, table_up,
                            n_up, table_down, n_down, c2c_std, rng, normal_table);
            el_add_i32(device_pulses + cell * 2 + (down ? 1 : 0), (int64_t)el_i32_of(cnt));
            total = el_add64(total, cnt);
            net_up = el_add64(net_up, n);
        }
    }
    count(counters, EL_C_PULSES_UP, el_floordiv64(el_add64(total, net_up), 2));
    count(counters, EL_C_PULSES_DOWN, el_floordiv64(el_sub64(total, net_up), 2));
    count(counters, EL_C_ACC_UPDATES, el_mul64(rows, cols));
    count(counters, EL_C_RNG_DRAWS, el_mul64(rows, cols));
    return total;
}

int64_t el_mp_update_dense_q_i8(double *state, const double *params, int64_t rows, int64_t cols,
                                const double *table_up, int64_t n_up, const double *table_down, int64_t n_down,
                                double c2c_std, int8_t *chi, const double *gradient, double scale, int64_t eps_up_q,
                                int64_t eps_down_q, int64_t chi_min, int64_t chi_max, int64_t max_pulses,
                                uint64_t *rng, const double *normal_table, int32_t *device_pulses, int64_t *counters) {
    return mp_update_dense_q(state, params, rows, cols, table_up, n_up, table_down, n_down, c2c_std, chi, 8, gradient,
                             scale, eps_up_q, eps_down_q, chi_min, chi_max, max_pulses, rng, normal_table,
                             device_pulses, counters);
}

int64_t el_mp_update_dense_q_i16(double *state, const double *params, int64_t rows, int64_t cols,
                                 const double *table_up, int64_t n_up, const double *table_down, int64_t n_down,
                                 double c2c_std, int16_t *chi, const double *gradient, double scale, int64_t eps_up_q,
                                 int64_t eps_down_q, int64_t chi_min, int64_t chi_max, int64_t max_pulses,
                                 uint64_t *rng, const double *normal_table, int32_t *device_pulses,
                                 int64_t *counters) {
    return mp_update_dense_q(state, params, rows, cols, table_up, n_up, table_down, n_down, c2c_std, chi, 16,
                             gradient, scale, eps_up_q, eps_down_q, chi_min, chi_max, max_pulses, rng, normal_table,
                             device_pulses, counters);
}

static inline int64_t buffer_transfer(void *h, int width, int64_t rows, int64_t cols, int64_t col,
                                      const double *signal, double gain, int64_t h_min, int64_t h_max, int64_t unit,
                                      double momentum, bool forget, int64_t max_steps, uint64_t *rng, int64_t *counts,
                                      int64_t *counters) {
    int64_t u = unit;
    int64_t lo = h_min;
    int64_t hi = h_max;
    int64_t fired = 0;
    for (int64_t i = 0; i < rows; i++) {
        size_t cell = (size_t)(i * cols + col);
        int64_t v = el_add64(lm_load(h, cell, width), stochastic_round(gain * signal[i], rng));
        v = el_imin(el_imax(v, lo), hi);
        int64_t n = el_div_trunc_inline(v, u);
        if (max_steps > 0) {
            n = el_imin(el_imax(n, el_sub64(0, max_steps)), max_steps);
        }
        counts[i] = n;
        if (n != 0) {
            fired += 1;
            double kept;
            if (forget) {
                kept = momentum * (double)v;
            } else {
                kept = (double)v - (1.0 - momentum) * (double)n * (double)u;
            }
            int64_t r = lm_f2i64(el_floor_inline(el_fabs(kept) + 0.5));
            v = kept >= 0.0 ? r : el_sub64(0, r);
        }
        lm_store(h, cell, width, v);
    }
    count(counters, EL_C_ACC_UPDATES, rows);
    count(counters, EL_C_RNG_DRAWS, rows);
    return fired;
}

int64_t el_buffer_transfer_i8(int8_t *h, int64_t rows, int64_t cols, int64_t col, const double *signal, double gain,
                              int64_t h_min, int64_t h_max, int64_t unit, double momentum, bool forget,
                              int64_t max_steps, uint64_t *rng, int64_t *counts, int64_t *counters) {
    return buffer_transfer(h, 8, rows, cols, col, signal, gain, h_min, h_max, unit, momentum, forget, max_steps, rng,
                           counts, counters);
}

int64_t el_buffer_transfer_i16(int16_t *h, int64_t rows, int64_t cols, int64_t col, const double *signal,
                               double gain, int64_t h_min, int64_t h_max, int64_t unit, double momentum, bool forget,
                               int64_t max_steps, uint64_t *rng, int64_t *counts, int64_t *counters) {
    return buffer_transfer(h, 16, rows, cols, col, signal, gain, h_min, h_max, unit, momentum, forget, max_steps, rng,
                           counts, counters);
}

int64_t el_buffer_transfer_i32(int32_t *h, int64_t rows, int64_t cols, int64_t col, const double *signal,
                               double gain, int64_t h_min, int64_t h_max, int64_t unit, double momentum, bool forget,
                               int64_t max_steps, uint64_t *rng, int64_t *counts, int64_t *counters) {
    return buffer_transfer(h, 32, rows, cols, col, signal, gain, h_min, h_max, unit, momentum, forget, max_steps, rng,
                           counts, counters);
}
