/* Port of firmware_model/controller.py: periphery (DAC -> crossbar MVM -> ADC), update scheduling, calibration,
 * counters. Operation order follows the Python source literally. */
#include "el_kernels.h"

static inline int32_t *pulses_at(int32_t *device_pulses, int64_t device_set, int64_t rows, int64_t cols, int64_t i,
                                 int64_t j) {
    return device_pulses + (size_t)(((device_set * rows + i) * cols + j) * 2);
}

static inline void count(int64_t *counters, int index, int64_t n) {
    counters[index] = el_add64(counters[index], n);
}

double el_round_half_away(double value) {
    double magnitude = el_fabs(value);
    double whole = el_floor(magnitude);
    if (magnitude - whole >= 0.5) {
        whole += 1.0;
    }
    return value >= 0.0 ? whole : -whole;
}

void el_analog_mvm(const double *state, const double *ref_state, int64_t rows, int64_t cols, bool use_ref,
                   const double *u, bool transpose, double *y) {
    if (transpose) {
        for (int64_t j = 0; j < cols; j++) {
            y[j] = 0.0;
        }
        for (int64_t i = 0; i < rows; i++) {
            double ui = u[i];
            const double *s = state + (size_t)(i * cols);
            const double *r = ref_state + (size_t)(i * cols);
            if (use_ref) {
                for (int64_t j = 0; j < cols; j++) {
                    y[j] += (s[j] - r[j]) * ui;
                }
            } else {
                for (int64_t j = 0; j < cols; j++) {
                    y[j] += s[j] * ui;
                }
            }
        }
    } else {
        for (int64_t i = 0; i < rows; i++) {
            const double *s = state + (size_t)(i * cols);
            const double *r = ref_state + (size_t)(i * cols);
            double acc = 0.0;
            if (use_ref) {
                for (int64_t j = 0; j < cols; j++) {
                    acc += (s[j] - r[j]) * u[j];
                }
            } else {
                for (int64_t j = 0; j < cols; j++) {
                    acc += s[j] * u[j];
                }
            }
            y[i] = acc;
        }
    }
}

double el_mvm(const double *state, const double *ref_state, int64_t rows, int64_t cols, bool use_ref,
              const double *vec, bool transpose, int64_t dac_bits, double inp_bound, int64_t adc_bits,
              double out_bound, double out_noise, int64_t noise_management, bool bound_management,
              int64_t max_bm_rounds, uint64_t *rng, const double *normal_table, int32_t *codes, int64_t *counters,
              double *u, double *y) {
    int64_t n_in = transpose ? rows : cols;
    int64_t n_out = transpose ? cols : rows;
    int64_t dac_max = ((int64_t)1 << (dac_bits - 1)) - 1;
    int64_t adc_max = ((int64_t)1 << (adc_bits - 1)) - 1;
    double out_step = out_bound / (double)adc_max;
    double nm = 1.0;
    if (noise_management == EL_NM_ABS_MAX) {
        double vmax = 0.0;
        for (int64_t k = 0; k < n_in; k++) {
            vmax = el_fmax(vmax, el_fabs(vec[k]));
        }
        if (vmax == 0.0) {
            for (int64_t k = 0; k < n_out; k++) {
                codes[k] = 0;
            }
            return 0.0;
        }
        nm = vmax / inp_bound;
    }
    double f = 1.0;
    int64_t rounds = 0;
    for (;;) {
        double per_code = inp_bound / (double)dac_max;
        double to_code = (double)dac_max / (nm * f * inp_bound);
        for (int64_t k = 0; k < n_in; k++) {
            double c = el_round_half_away(vec[k] * to_code);
            u[k] = el_fmin(el_fmax(c, (double)(-dac_max)), (double)dac_max) * per_code;
        }
        el_analog_mvm(state, ref_state, rows, cols, use_ref, u, transpose, y);
        count(counters, transpose ? EL_C_MVM_BACKWARD : EL_C_MVM_FORWARD, 1);
        count(counters, EL_C_CELL_READS, el_mul64(rows, cols));
        count(counters, EL_C_DAC, n_in);
        bool exceeded = false;
        if (out_noise > 0.0) {
            for (int64_t k = 0; k < n_out; k++) {
                y[k] += out_noise * el_rng_normal_inline(rng, normal_table);
            }
            count(counters, EL_C_RNG_DRAWS, n_out);
        }
        for (int64_t k = 0; k < n_out; k++) {
            if (el_fabs(y[k]) > out_bound) {
                exceeded = true;
            }
        }
        if (exceeded && bound_management && rounds < max_bm_rounds) {
            f *= 2.0;
            rounds += 1;
            count(counters, EL_C_BM_REPEATS, 1);
            continue;
        }
        break;
    }
    for (int64_t k = 0; k < n_out; k++) {
        double c = el_round_half_away(y[k] / out_step);
        codes[k] = (int32_t)el_fmin(el_fmax(c, (double)(-adc_max)), (double)adc_max);
    }
    count(counters, EL_C_ADC, n_out);
    return out_step * nm * f;
}

void el_mvm_batch(const double *state, const double *ref_state, int64_t rows, int64_t cols, bool use_ref,
                  const double *vecs, int64_t batch, bool transpose, int64_t dac_bits, double inp_bound,
                  int64_t adc_bits, double out_bound, double out_noise, int64_t noise_management,
                  bool bound_management, int64_t max_bm_rounds, uint64_t *rng, const double *normal_table,
                  int32_t *codes, double *scales, int64_t *counters, double *u, double *y) {
    int64_t n_in = transpose ? rows : cols;
    int64_t n_out = transpose ? cols : rows;
    for (int64_t b = 0; b < batch; b++) {
        scales[b] = el_mvm(state, ref_state, rows, cols, use_ref, vecs + (size_t)(b * n_in), transpose, dac_bits,
                           inp_bound, adc_bits, out_bound, out_noise, noise_management, bound_management,
                           max_bm_rounds, rng, normal_table, codes + (size_t)(b * n_out), counters, u, y);
    }
}

void el_train_bits(const double *values, int64_t n, double prob_scale, int64_t bl, uint64_t *rng, uint32_t *bits) {
    for (int64_t i = 0; i < n; i++) {
        double p = prob_scale * el_fabs(values[i]);
        uint64_t threshold = (uint64_t)(4294967296.0 * el_fmin(p, 1.0));
        uint64_t word = 0; /* numba widens the uint32 word to uint64; the store keeps the low 32 bits */
        for (int64_t k = 0; k < bl; k++) {
            if (el_rng_u32_inline(rng) < threshold) {
                word |= (uint64_t)1 << (uint64_t)k;
            }
        }
        bits[i] = (uint32_t)word;
    }
}

int64_t el_train_length(double lr, double x_max, double d_max, double dw_min, int64_t bl_max) {
    double bl = el_ceil(lr * x_max * d_max / dw_min);
    if (bl >= (double)bl_max) {
        return bl_max;
    }
    if (bl <= 1.0) {
        return 1;
    }
    return (int64_t)bl;
}

int64_t el_coincidence_pulses(double *state, const double *params, int64_t rows, int64_t cols,
                              const double *table_up, int64_t n_up, const double *table_down, int64_t n_down,
                              double c2c_std, const double *x, const double *d, const uint32_t *x_bits,
                              const uint32_t *d_bits, uint64_t *rng, const double *normal_table, int32_t *pulses,
                              int64_t *n_down_out) {
    int64_t total = 0;
    int64_t n_down_total = 0;
    for (int64_t i = 0; i < rows; i++) {
        uint64_t word = d_bits[i];
        if (word == 0) {
            continue;
        }
        bool d_pos = d[i] > 0.0;
        for (int64_t base = 0; base < cols; base += 64) {
            int64_t end = el_imin(base + 64, cols);
            uint64_t mask = 0;
            for (int64_t j = base; j < end; j++) {
                uint64_t hit = (word & x_bits[j]) != 0 ? 1 : 0;
                mask |= hit << (uint64_t)(j - base);
            }
            while (mask != 0) {
                int64_t j = base + el_lowest_set_bit(mask);
                mask &= mask - 1;
                int64_t n = el_popcount32(word & x_bits[j]);
                bool down = d_pos == (x[j] > 0.0);
                size_t cell = (size_t)(i * cols + j);
                /* numba inlines pulse_device here by hand (its call form was slower there); C just calls it */
                el_pulse_device(state, params, rows, cols, i, j, n, down ? EL_POLARITY_DOWN : EL_POLARITY_UP,
                                table_up, n_up, table_down, n_down, c2c_std, rng, normal_table);
                el_add_i32(&pulses[cell * 2 + (down ? 1 : 0)], n);
                total += n;
                n_down_total += down ? n : 0;
            }
        }
    }
    *n_down_out = n_down_total;
    return total;
}

int64_t el_stochastic_update(double *state, const double *params, int64_t rows, int64_t cols, const double *table_up,
                             int64_t n_up, const double *table_down, int64_t n_down, double c2c_std, const double *x,
                             const double *d, double lr, double dw_min, int64_t bl_max, bool update_management,
                             uint64_t *rng, const double *normal_table, int32_t *device_pulses, int64_t *counters,
                             uint32_t *x_bits, uint32_t *d_bits) {
    count(counters, EL_C_UPDATES, 1);
    double x_max = 0.0;
    for (int64_t j = 0; j < cols; j++) {
        x_max = el_fmax(x_max, el_fabs(x[j]));
    }
    double d_max = 0.0;
    for (int64_t i = 0; i < rows; i++) {
        d_max = el_fmax(d_max, el_fabs(d[i]));
    }
    if (x_max == 0.0 || d_max == 0.0 || lr == 0.0) {
        return 0;
    }
    int64_t bl = el_train_length(lr, x_max, d_max, dw_min, bl_max);
    double a = __builtin_sqrt(lr / (dw_min * (double)bl));
    double b = a;
    if (update_management) {
        a *= __builtin_sqrt(x_max / d_max);
        b *= __builtin_sqrt(d_max / x_max);
    }
    el_train_bits(x, cols, b, bl, rng, x_bits);
    el_train_bits(d, rows, a, bl, rng, d_bits);
    count(counters, EL_C_RNG_DRAWS, el_mul64(bl, rows + cols));
    int64_t n_down_pulses = 0;
    int64_t total = el_coincidence_pulses(state, params, rows, cols, table_up, n_up, table_down, n_down, c2c_std, x, d,
                                          x_bits, d_bits, rng, normal_table, device_pulses, &n_down_pulses);
    count(counters, EL_C_PULSES_UP, total - n_down_pulses);
    count(counters, EL_C_PULSES_DOWN, n_down_pulses);
    count(counters, EL_C_COINCIDENCES, total);
    return total;
}

int64_t el_stochastic_update_batch(double *state, const double *params, int64_t rows, int64_t cols,
                                   const double *table_up, int64_t n_up, const double *table_down, int64_t n_down,
                                   double c2c_std, const double *xs, const double *ds, int64_t batch, double lr,
                                   double dw_min, int64_t bl_max, bool update_management, uint64_t *rng,
                                   const double *normal_table, int32_t *device_pulses, int64_t *counters,
                                   uint32_t *x_bits, uint32_t *d_bits) {
    int64_t total = 0;
    for (int64_t b = 0; b < batch; b++) {
        total += el_stochastic_update(state, params, rows, cols, table_up, n_up, table_down, n_down, c2c_std,
                                      xs + (size_t)(b * cols), ds + (size_t)(b * rows), lr, dw_min, bl_max,
                                      update_management, rng, normal_table, device_pulses, counters, x_bits, d_bits);
    }
    return total;
}

int64_t el_deterministic_update_batch(double *state, const double *params, int64_t rows, int64_t cols,
                                      const double *table_up, int64_t n_up, const double *table_down,
                                      int64_t n_down, double c2c_std, const double *xs, const double *ds,
                                      int64_t batch, double lr, double dw_min, int64_t max_pulses, uint64_t *rng,
                                      const double *normal_table, int32_t *device_pulses, int64_t *counters,
                                      double *g) {
    count(counters, EL_C_UPDATES, 1);
    count(counters, EL_C_MACS, el_mul64(el_mul64(batch, rows), cols));
    int64_t total = 0;
    int64_t n_down_pulses = 0;
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t j = 0; j < cols; j++) {
            g[j] = 0.0;
        }
        for (int64_t b = 0; b < batch; b++) {
            double di = ds[b * rows + i];
            const double *xb = xs + (size_t)(b * cols);
            for (int64_t j = 0; j < cols; j++) {
                g[j] += di * xb[j];
            }
        }
        for (int64_t j = 0; j < cols; j++) {
            double gij = g[j];
            int64_t n = (int64_t)el_fmin(el_round_half_away(lr * el_fabs(gij) / dw_min), (double)max_pulses);
            if (n == 0) {
                continue;
            }
            bool down = gij > 0.0;
            el_pulse_device(state, params, rows, cols, i, j, n, down ? EL_POLARITY_DOWN : EL_POLARITY_UP, table_up,
                            n_up, table_down, n_down, c2c_std, rng, normal_table);
            el_add_i32(pulses_at(device_pulses, 0, rows, cols, i, j) + (down ? 1 : 0), n);
            total += n;
            n_down_pulses += down ? n : 0;
        }
    }
    count(counters, EL_C_PULSES_UP, total - n_down_pulses);
    count(counters, EL_C_PULSES_DOWN, n_down_pulses);
    return total;
}

/* numba's float ** int (int_power_impl): exponentiation by squaring, 1 / r for a negative exponent */
static double power_int(double a, int64_t b) {
    double r = 1.0;
    bool invert = b < 0;
    uint64_t e = invert ? (uint64_t)0 - (uint64_t)b : (uint64_t)b;
    while (e != 0) {
        if (e & 1) {
            r *= a;
        }
        e >>= 1;
        a *= a;
    }
    return invert ? 1.0 / r : r;
}

void el_chi_increments(const double *x, int64_t n_x, const double *d, int64_t n_d, double lr, int64_t chi_frac_bits,
                       int32_t *x_q, int32_t *row_mult) {
    double x_max = 0.0;
    for (int64_t j = 0; j < n_x; j++) {
        x_max = el_fmax(x_max, el_fabs(x[j]));
    }
    if (x_max == 0.0) {
        for (int64_t j = 0; j < n_x; j++) {
            x_q[j] = 0;
        }
        for (int64_t i = 0; i < n_d; i++) {
            row_mult[i] = 0;
        }
        return;
    }
    for (int64_t j = 0; j < n_x; j++) {
        x_q[j] = (int32_t)el_round_half_away(x[j] / x_max * 32767.0);
    }
    double unit = power_int(2.0, chi_frac_bits);
    for (int64_t i = 0; i < n_d; i++) {
        double v = el_fmin(el_fmax(el_round_half_away(-lr * d[i] * x_max * unit), -2147483648.0), 2147483647.0);
        row_mult[i] = (int32_t)v;
    }
}

/* The threshold-and-fire step of mixed precision for one cell (mp_update and mp_update_dense): chi = c, and when
 * c reaches a threshold n = trunc(c / eps) pulses (capped at max_pulses when > 0) leave chi and go to device (i, j).
 * The numba kernels repeat this block inline (a shared helper made those loops 10x slower under numba); a C compiler
 * inlines the function, so it is written once here, with the numba source's operations in its order. */
static inline void fire_cell(int64_t c, int64_t eps_up, int64_t eps_down, int64_t max_pulses, int32_t *chi_cell,
                             double *state, const double *params, int64_t rows, int64_t cols, int64_t i, int64_t j,
                             const double *table_up, int64_t n_up, const double *table_down, int64_t n_down,
                             double c2c_std, uint64_t *rng, const double *normal_table, int32_t *device_pulses,
                             int64_t *total, int64_t *net_up) {
    if (el_sub64(0, eps_down) < c && c < eps_up) {
        *chi_cell = (int32_t)c;
        return;
    }
    int64_t eps = c > 0 ? eps_up : eps_down;
    int64_t n = el_div_trunc_inline(c, eps);
    if (max_pulses > 0) {
        n = el_imin(el_imax(n, -max_pulses), max_pulses);
    }
    *chi_cell = el_i32_of(el_sub64(c, el_mul64(n, eps)));
    if (n == 0) {
        return;
    }
    bool down = n < 0;
    int64_t cnt = down ? -n : n;
    el_pulse_device(state, params, rows, cols, i, j, cnt, down ? EL_POLARITY_DOWN : EL_POLARITY_UP, table_up, n_up,
                    table_down, n_down, c2c_std, rng, normal_table);
    el_add_i32(pulses_at(device_pulses, 0, rows, cols, i, j) + (down ? 1 : 0), cnt);
    *total += cnt;
    *net_up += n;
}

int64_t el_mp_update(double *state, const double *params, int64_t rows, int64_t cols, const double *table_up,
                     int64_t n_up, const double *table_down, int64_t n_down, double c2c_std, int32_t *chi,
                     const int32_t *x_q, const int32_t *row_mult, int64_t eps_up_q, int64_t eps_down_q,
                     int64_t max_pulses, uint64_t *rng, const double *normal_table, int32_t *device_pulses,
                     int64_t *counters) {
    count(counters, EL_C_UPDATES, 1);
    int64_t eps_up = eps_up_q;
    int64_t eps_down = eps_down_q;
    int64_t total = 0;
    int64_t net_up = 0;
    for (int64_t i = 0; i < rows; i++) {
        int64_t m = row_mult[i];
        for (int64_t j = 0; j < cols; j++) {
            size_t cell = (size_t)(i * cols + j);
            int64_t acc = el_add64((int64_t)chi[cell], el_shift_round_inline(el_mul64(m, (int64_t)x_q[j]), 15));
            int64_t c = el_sat_i32_inline(acc);
            fire_cell(c, eps_up, eps_down, max_pulses, chi + cell, state, params, rows, cols, i, j, table_up, n_up,
                      table_down, n_down, c2c_std, rng, normal_table, device_pulses, &total, &net_up);
        }
    }
    count(counters, EL_C_PULSES_UP, el_floordiv64(total + net_up, 2));
    count(counters, EL_C_PULSES_DOWN, el_floordiv64(total - net_up, 2));
    count(counters, EL_C_MACS, el_mul64(rows, cols));
    count(counters, EL_C_ACC_UPDATES, el_mul64(rows, cols));
    return total;
}

int64_t el_mp_update_dense(double *state, const double *params, int64_t rows, int64_t cols, const double *table_up,
                           int64_t n_up, const double *table_down, int64_t n_down, double c2c_std, int32_t *chi,
                           const double *gradient, double scale, int64_t eps_up_q, int64_t eps_down_q,
                           int64_t max_pulses, uint64_t *rng, const double *normal_table, int32_t *device_pulses,
                           int64_t *counters) {
    count(counters, EL_C_UPDATES, 1);
    int64_t eps_up = eps_up_q;
    int64_t eps_down = eps_down_q;
    int64_t total = 0;
    int64_t net_up = 0;
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t j = 0; j < cols; j++) {
            size_t cell = (size_t)(i * cols + j);
            double v = el_fmin(el_fmax(el_round_half_away(scale * gradient[cell]), -2147483648.0), 2147483647.0);
            int64_t c = el_sat_i32_inline(el_add64((int64_t)chi[cell], (int64_t)v));
            fire_cell(c, eps_up, eps_down, max_pulses, chi + cell, state, params, rows, cols, i, j, table_up, n_up,
                      table_down, n_down, c2c_std, rng, normal_table, device_pulses, &total, &net_up);
        }
    }
    count(counters, EL_C_PULSES_UP, el_floordiv64(total + net_up, 2));
    count(counters, EL_C_PULSES_DOWN, el_floordiv64(total - net_up, 2));
    count(counters, EL_C_ACC_UPDATES, el_mul64(rows, cols));
    return total;
}

void el_symmetry_search(double *state, const double *params, int64_t rows, int64_t cols, const double *table_up,
                        int64_t n_up, const double *table_down, int64_t n_down, double c2c_std, int64_t device_set,
                        int64_t window, int64_t max_pairs, double tolerance, uint64_t *rng,
                        const double *normal_table, double *settled, int64_t *pairs_used, int32_t *device_pulses,
                        int64_t *counters) {
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t j = 0; j < cols; j++) {
            size_t cell = (size_t)(i * cols + j);
            double previous = __builtin_inf();
            double mean = state[cell];
            int64_t pairs = 0;
            while (pairs < max_pairs) {
                double total = 0.0;
                for (int64_t k = 0; k < window; k++) {
                    el_pulse_device(state, params, rows, cols, i, j, 1, EL_POLARITY_UP, table_up, n_up, table_down,
                                    n_down, c2c_std, rng, normal_table);
                    total += state[cell];
                    el_pulse_device(state, params, rows, cols, i, j, 1, EL_POLARITY_DOWN, table_up, n_up, table_down,
                                    n_down, c2c_std, rng, normal_table);
                    total += state[cell];
                    pairs += 1;
                }
                mean = total / (double)(2 * window);
                if (el_fabs(mean - previous) < tolerance) {
                    break;
                }
                previous = mean;
            }
            settled[cell] = mean;
            pairs_used[cell] = pairs;
            int32_t *slot = pulses_at(device_pulses, device_set, rows, cols, i, j);
            el_add_i32(slot + 0, (int64_t)el_i32_of(pairs));
            el_add_i32(slot + 1, (int64_t)el_i32_of(pairs));
            count(counters, EL_C_CAL_PULSES_UP, pairs);
            count(counters, EL_C_CAL_PULSES_DOWN, pairs);
            count(counters, EL_C_DEVICE_READS, el_mul64(2, pairs));
        }
    }
}

int64_t el_program_to(double *state, const double *params, int64_t rows, int64_t cols, const double *table_up,
                      int64_t n_up, const double *table_down, int64_t n_down, double c2c_std, int64_t device_set,
                      const double *target, double tolerance, int64_t max_pulses, uint64_t *rng,
                      const double *normal_table, int32_t *device_pulses, int64_t *counters) {
    int64_t missed = 0;
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t j = 0; j < cols; j++) {
            size_t cell = (size_t)(i * cols + j);
            int64_t n = 0;
            count(counters, EL_C_DEVICE_READS, 1);
            while (el_fabs(state[cell] - target[cell]) > tolerance && n < max_pulses) {
                bool up = state[cell] < target[cell];
                el_pulse_device(state, params, rows, cols, i, j, 1, up ? EL_POLARITY_UP : EL_POLARITY_DOWN, table_up,
                                n_up, table_down, n_down, c2c_std, rng, normal_table);
                el_add_i32(pulses_at(device_pulses, device_set, rows, cols, i, j) + (up ? 0 : 1), 1);
                count(counters, up ? EL_C_CAL_PULSES_UP : EL_C_CAL_PULSES_DOWN, 1);
                count(counters, EL_C_DEVICE_READS, 1);
                n += 1;
            }
            if (el_fabs(state[cell] - target[cell]) > tolerance) {
                missed += 1;
            }
        }
    }
    return missed;
}

int64_t el_apply_counts(double *state, const double *params, int64_t rows, int64_t cols, const double *table_up,
                        int64_t n_up, const double *table_down, int64_t n_down, double c2c_std, const int32_t *counts,
                        uint64_t *rng, const double *normal_table, int32_t *device_pulses, int64_t *counters) {
    count(counters, EL_C_UPDATES, 1);
    int64_t total = 0;
    int64_t net_up = 0;
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t j = 0; j < cols; j++) {
            int64_t n = counts[i * cols + j];
            if (n == 0) {
                continue;
            }
            bool down = n < 0;
            int64_t cnt = down ? -n : n;
            el_pulse_device(state, params, rows, cols, i, j, cnt, down ? EL_POLARITY_DOWN : EL_POLARITY_UP, table_up,
                            n_up, table_down, n_down, c2c_std, rng, normal_table);
            el_add_i32(pulses_at(device_pulses, 0, rows, cols, i, j) + (down ? 1 : 0), cnt);
            total += cnt;
            net_up += n;
        }
    }
    count(counters, EL_C_PULSES_UP, el_floordiv64(total + net_up, 2));
    count(counters, EL_C_PULSES_DOWN, el_floordiv64(total - net_up, 2));
    return total;
}
