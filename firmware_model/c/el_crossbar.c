/* Port of firmware_model/crossbar.py: how the ferroelectric devices answer programming pulses. */
#include "el_kernels.h"

double el_relative_step(double w, const double *table, int64_t n_nodes, double w_min, double inv_span) {
    int64_t n_sections = n_nodes - 1;
    double position = (w - w_min) * inv_span;
    if (position <= 0.0) {
        return table[0];
    }
    if (position >= (double)n_sections) {
        return table[n_sections];
    }
    int64_t index = (int64_t)position;
    double t = position - (double)index;
    return table[index] + t * (table[index + 1] - table[index]);
}

double el_step_state(double w, int64_t polarity, const double *table_up, int64_t n_up, const double *table_down,
                     int64_t n_down, double scale_up, double scale_down, double w_min, double w_max, double inv_span,
                     double noise) {
    if (polarity > 0) {
        w = w - scale_down * el_relative_step(w, table_down, n_down, w_min, inv_span) * (1.0 + noise);
    } else {
        w = w + scale_up * el_relative_step(w, table_up, n_up, w_min, inv_span) * (1.0 + noise);
    }
    if (w < w_min) {
        return w_min;
    }
    if (w > w_max) {
        return w_max;
    }
    return w;
}

double el_apply_pulse(double w, int64_t polarity, const double *table_up, int64_t n_up, const double *table_down,
                      int64_t n_down, double scale_up, double scale_down, double w_min, double w_max, double noise) {
    double inv_span = (double)(n_up - 1) / (w_max - w_min);
    return el_step_state(w, polarity, table_up, n_up, table_down, n_down, scale_up, scale_down, w_min, w_max,
                         inv_span, noise);
}

void el_pulse_device(double *state, const double *params, int64_t rows, int64_t cols, int64_t i, int64_t j,
                     int64_t n, int64_t polarity, const double *table_up, int64_t n_up, const double *table_down,
                     int64_t n_down, double c2c_std, uint64_t *rng, const double *normal_table) {
    (void)rows;
    size_t cell = (size_t)(i * cols + j);
    const double *p = params + cell * EL_N_PARAMS;
    double w = state[cell];
    double scale_up = p[EL_P_SCALE_UP];
    double scale_down = p[EL_P_SCALE_DOWN];
    double w_min = p[EL_P_W_MIN];
    double w_max = p[EL_P_W_MAX];
    double inv_span = p[EL_P_INV_SPAN];
    if (c2c_std > 0.0) {
        for (int64_t k = 0; k < n; k++) {
            double noise = c2c_std * el_rng_normal_inline(rng, normal_table);
            w = el_step_state(w, polarity, table_up, n_up, table_down, n_down, scale_up, scale_down, w_min, w_max,
                              inv_span, noise);
        }
    } else {
        for (int64_t k = 0; k < n; k++) {
            w = el_step_state(w, polarity, table_up, n_up, table_down, n_down, scale_up, scale_down, w_min, w_max,
                              inv_span, 0.0);
        }
    }
    state[cell] = w;
}

void el_replay(double w_start, const int64_t *polarities, const bool *restart, const double *restart_w, int64_t n,
               const double *table_up, int64_t n_up, const double *table_down, int64_t n_down, double scale_up,
               double scale_down, double w_min, double w_max, double *out) {
    double inv_span = (double)(n_up - 1) / (w_max - w_min);
    double w = w_start;
    for (int64_t k = 0; k < n; k++) {
        if (k == 0) {
            w = w_start;
        } else if (restart[k]) {
            w = restart_w[k];
        } else {
            w = el_step_state(w, polarities[k], table_up, n_up, table_down, n_down, scale_up, scale_down, w_min,
                              w_max, inv_span, 0.0);
        }
        out[k] = w;
    }
}

double el_alternate_until_settled(double w_start, const double *table_up, int64_t n_up, const double *table_down,
                                  int64_t n_down, double scale_up, double scale_down, double w_min, double w_max,
                                  int64_t max_pairs, double tolerance, int64_t *pairs_out) {
    double inv_span = (double)(n_up - 1) / (w_max - w_min);
    double w = w_start;
    double previous = w_start;
    double mean = w_start;
    for (int64_t pair = 0; pair < max_pairs; pair++) {
        w = el_step_state(w, EL_POLARITY_UP, table_up, n_up, table_down, n_down, scale_up, scale_down, w_min, w_max,
                          inv_span, 0.0);
        double w_after_up = w;
        w = el_step_state(w, EL_POLARITY_DOWN, table_up, n_up, table_down, n_down, scale_up, scale_down, w_min,
                          w_max, inv_span, 0.0);
        mean = 0.5 * (w_after_up + w);
        if (pair > 0 && el_fabs(mean - previous) < tolerance) {
            *pairs_out = pair + 1;
            return mean;
        }
        previous = mean;
    }
    *pairs_out = max_pairs;
    return mean;
}

int64_t el_pulses_to_cross(double w_from, double w_to, int64_t polarity, const double *table_up, int64_t n_up,
                           const double *table_down, int64_t n_down, double scale_up, double scale_down, double w_min,
                           double w_max, int64_t max_pulses) {
    double inv_span = (double)(n_up - 1) / (w_max - w_min);
    double w = w_from;
    for (int64_t k = 0; k < max_pulses; k++) {
        w = el_step_state(w, polarity, table_up, n_up, table_down, n_down, scale_up, scale_down, w_min, w_max,
                          inv_span, 0.0);
        if (polarity > 0 && w <= w_to) {
            return k + 1;
        }
        if (polarity < 0 && w >= w_to) {
            return k + 1;
        }
    }
    return max_pulses;
}
