/* The host's crossbar HAL: firmware_model/board.py's EmulatedCrossbar over plain arrays and the C kernels
 * (el_kernels.h), bit-exact with the numba one (see el_board.h).
 *
 * The numba kernels run on numpy views of a region (state[rs, cs], params[rs, cs], device_pulses[:, rs, cs, :]); the C
 * kernels take contiguous row-major arrays, so a region is copied into the caller's scratch, the kernel runs on the
 * copy (same devices in the same row-major order, same generator), and what the kernel writes is copied back.
 *
 * Amplitude-aware widths scale each device's step scales by PulseWidth.factors: A(|V|) / A(reference) per direction,
 * A(v) = 1 / (1 + exp(-(v - v0) / vs)). exp is the C library's (__builtin_exp), the same function CPython's
 * math.exp calls, so the factors equal the Python's bit for bit on the host (tests/test_firmware_c_board.py checks
 * this); where math.exp raises OverflowError or the division ZeroDivisionError, the pulse fails with that text (the
 * interpreter's E_INTERNAL), as the Python's does. This file is the host's HAL and is not part of a board build.
 */
#include "el_board.h"
#include "el_kernels.h"

static const char OVERFLOW_TEXT[] = "OverflowError: math range error";
static const char ZERO_DIVISION_TEXT[] = "ZeroDivisionError: float division by zero";

int el_hal_emulated_init(el_hal_emulated *h, int64_t rows, int64_t cols, double *state, const double *ref_zero,
                         uint64_t *rng, const double *normal_table, int64_t *counters, int32_t *device_pulses,
                         int64_t dac_bits, double inp_bound, int64_t adc_bits, double out_bound, double out_noise,
                         int64_t noise_management, bool bound_management, int64_t max_bm_rounds, double *s_state,
                         double *s_params, int32_t *s_pulses, int32_t *s_counts, double *s_u, double *s_y) {
    if (h == NULL || rows < 1 || cols < 1 || state == NULL || ref_zero == NULL || rng == NULL ||
        normal_table == NULL || counters == NULL || device_pulses == NULL || s_state == NULL || s_params == NULL ||
        s_pulses == NULL || s_counts == NULL || s_u == NULL || s_y == NULL || dac_bits < 2 || dac_bits > 62 ||
        adc_bits < 2 || adc_bits > 62) {
        return EL_BOARD_ERR_ARGUMENT;
    }
    h->rows = rows;
    h->cols = cols;
    h->state = state;
    h->ref_zero = ref_zero;
    h->rng = rng;
    h->normal_table = normal_table;
    h->counters = counters;
    h->device_pulses = device_pulses;
    h->dac_bits = dac_bits;
    h->inp_bound = inp_bound;
    h->adc_bits = adc_bits;
    h->out_bound = out_bound;
    h->out_noise = out_noise;
    h->noise_management = noise_management;
    h->bound_management = bound_management;
    h->max_bm_rounds = max_bm_rounds;
    h->n_widths = 0;
    h->s_state = s_state;
    h->s_params = s_params;
    h->s_pulses = s_pulses;
    h->s_counts = s_counts;
    h->s_u = s_u;
    h->s_y = s_y;
    h->f_valid = false;
    return 0;
}

static const el_hal_width *find(const el_hal_emulated *h, uint32_t width_ns) {
    for (size_t k = 0; k < h->n_widths; k++) {
        if (h->widths[k].width_ns == width_ns) {
            return &h->widths[k];
        }
    }
    return NULL;
}

int el_hal_emulated_add_width(el_hal_emulated *h, uint32_t width_ns, const double *table_up, int64_t n_up,
                              const double *table_down, int64_t n_down, const double *params, double c2c_std,
                              const double *response) {
    if (h == NULL || h->n_widths >= EL_BOARD_MAX_WIDTHS || find(h, width_ns) != NULL || table_up == NULL ||
        table_down == NULL || params == NULL || n_up < 1 || n_down < 1) {
        return EL_BOARD_ERR_ARGUMENT;
    }
    el_hal_width *w = &h->widths[h->n_widths++];
    w->width_ns = width_ns;
    w->table_up = table_up;
    w->n_up = n_up;
    w->table_down = table_down;
    w->n_down = n_down;
    w->params = params;
    w->c2c_std = c2c_std;
    w->has_response = response != NULL;
    for (int k = 0; k < 6; k++) {
        w->response[k] = response != NULL ? response[k] : 0.0;
    }
    return 0;
}

size_t el_hal_emulated_size(void) { return sizeof(el_hal_emulated); }

/* PulseWidth.factors' a(x, v0, vs) = 1.0 / (1.0 + math.exp(-(x - v0) / vs)), raising as Python does */
static const char *sigmoid(double x, double v0, double vs, double *out) {
    if (vs == 0.0) {
        return ZERO_DIVISION_TEXT;
    }
    double arg = -(x - v0) / vs;
    double e = __builtin_exp(arg);
    if (__builtin_isinf(e) && !__builtin_isinf(arg)) { /* CPython: a finite argument with an infinite result */
        return OVERFLOW_TEXT;
    }
    *out = 1.0 / (1.0 + e);
    return NULL;
}

static const char *ratio(double x, double v0, double vs, double ref, double *out) {
    double a_x, a_ref;
    const char *err = sigmoid(x, v0, vs, &a_x);
    if (err == NULL) {
        err = sigmoid(ref, v0, vs, &a_ref);
    }
    if (err != NULL) {
        return err;
    }
    if (a_ref == 0.0) {
        return ZERO_DIVISION_TEXT;
    }
    *out = a_x / a_ref;
    return NULL;
}

static const char *factors(const el_hal_width *w, int32_t amplitude_mv, double *out) {
    if (!w->has_response) {
        out[0] = 1.0;
        out[1] = 1.0;
        return NULL;
    }
    double v = (double)(amplitude_mv < 0 ? -amplitude_mv : amplitude_mv) / 1000.0;
    const double *r = w->response;
    double up, down;
    const char *err = ratio(v, r[0], r[1], r[2], &up);
    if (err == NULL) {
        err = ratio(v, r[3], r[4], r[5], &down);
    }
    if (err != NULL) {
        return err;
    }
    out[0] = up;
    out[1] = down;
    return NULL;
}

const char *el_hal_emulated_factors(const el_hal_emulated *h, uint32_t width_ns, int32_t amplitude_mv, double *out) {
    const el_hal_width *w = find(h, width_ns);
    if (w == NULL) {
        return "KeyError: width";
    }
    return factors(w, amplitude_mv, out);
}

/* ------------------------------------------------------------------------------------------------ the HAL */

static int64_t hal_pulse(void *ctx, uint32_t width_ns, int32_t amplitude_mv, uint32_t row0, uint32_t nrows,
                         uint32_t col0, uint32_t ncols, const int32_t *counts, int32_t uniform, const char **error) {
    el_hal_emulated *h = (el_hal_emulated *)ctx;
    const el_hal_width *w = find(h, width_ns);
    if (w == NULL) { /* the interpreter configures only widths it was given: a set-up mismatch */
        *error = "KeyError: pulse width not in the array";
        return -1;
    }
    double up = 1.0, down = 1.0;
    if (w->has_response) {
        if (!(h->f_valid && h->f_width_ns == width_ns && h->f_amplitude_mv == amplitude_mv)) {
            double f[2];
            const char *err = factors(w, amplitude_mv, f);
            if (err != NULL) {
                *error = err;
                return -1;
            }
            h->f_valid = true;
            h->f_width_ns = width_ns;
            h->f_amplitude_mv = amplitude_mv;
            h->f_up = f[0];
            h->f_down = f[1];
        }
        up = h->f_up;
        down = h->f_down;
    }
    int64_t nr = nrows, nc = ncols, cols = h->cols, rows = h->rows;
    /* the region's copies: state, params (scaled as EmulatedCrossbar's `scaled`), both pulse sets, counts */
    for (int64_t i = 0; i < nr; i++) {
        for (int64_t j = 0; j < nc; j++) {
            int64_t src = (row0 + i) * cols + (col0 + j), dst = i * nc + j;
            h->s_state[dst] = h->state[src];
            for (int64_t k = 0; k < EL_N_PARAMS; k++) {
                h->s_params[dst * EL_N_PARAMS + k] = w->params[src * EL_N_PARAMS + k];
            }
            if (w->has_response) {
                h->s_params[dst * EL_N_PARAMS + EL_P_SCALE_UP] *= up;
                h->s_params[dst * EL_N_PARAMS + EL_P_SCALE_DOWN] *= down;
            }
            for (int64_t s = 0; s < 2; s++) {
                for (int64_t d = 0; d < 2; d++) {
                    h->s_pulses[((s * nr + i) * nc + j) * 2 + d] = h->device_pulses[((s * rows + row0 + i) * cols +
                                                                                     col0 + j) * 2 + d];
                }
            }
            h->s_counts[dst] = counts != NULL ? counts[dst] : uniform;
        }
    }
    int64_t total = el_apply_counts(h->s_state, h->s_params, nr, nc, w->table_up, w->n_up, w->table_down, w->n_down,
                                    w->c2c_std, h->s_counts, h->rng, h->normal_table, h->s_pulses, h->counters);
    for (int64_t i = 0; i < nr; i++) {
        for (int64_t j = 0; j < nc; j++) {
            h->state[(row0 + i) * cols + (col0 + j)] = h->s_state[i * nc + j];
            for (int64_t s = 0; s < 2; s++) {
                for (int64_t d = 0; d < 2; d++) {
                    h->device_pulses[((s * rows + row0 + i) * cols + col0 + j) * 2 + d] =
                        h->s_pulses[((s * nr + i) * nc + j) * 2 + d];
                }
            }
        }
    }
    return total;
}

static void hal_read(void *ctx, uint32_t row0, uint32_t nrows, uint32_t col0, uint32_t ncols, double *w_out) {
    el_hal_emulated *h = (el_hal_emulated *)ctx;
    for (int64_t i = 0; i < (int64_t)nrows; i++) {
        for (int64_t j = 0; j < (int64_t)ncols; j++) {
            w_out[i * ncols + j] = h->state[(row0 + i) * h->cols + (col0 + j)];
        }
    }
    h->counters[EL_C_DEVICE_READS] = el_add64(h->counters[EL_C_DEVICE_READS], (int64_t)nrows * (int64_t)ncols);
}

static double hal_mvm(void *ctx, uint32_t row0, uint32_t nrows, uint32_t col0, uint32_t ncols, const double *vec,
                      bool transpose, int32_t *codes_out) {
    el_hal_emulated *h = (el_hal_emulated *)ctx;
    int64_t nr = nrows, nc = ncols;
    for (int64_t i = 0; i < nr; i++) {
        for (int64_t j = 0; j < nc; j++) {
            h->s_state[i * nc + j] = h->state[(row0 + i) * h->cols + (col0 + j)];
        }
    }
    /* ref_zero[rs, cs] is all zeros and unread (use_ref false): its first nr x nc entries stand for it */
    return el_mvm(h->s_state, h->ref_zero, nr, nc, false, vec, transpose, h->dac_bits, h->inp_bound, h->adc_bits,
                  h->out_bound, h->out_noise, h->noise_management, h->bound_management, h->max_bm_rounds, h->rng,
                  h->normal_table, codes_out, h->counters, h->s_u, h->s_y);
}

static void hal_read_counters(void *ctx, int64_t out[EL_BOARD_N_COUNTERS]) {
    el_hal_emulated *h = (el_hal_emulated *)ctx;
    for (int k = 0; k < EL_BOARD_N_COUNTERS; k++) {
        out[k] = h->counters[k];
    }
}

static void hal_reset_counters(void *ctx) {
    el_hal_emulated *h = (el_hal_emulated *)ctx;
    for (int k = 0; k < EL_N_COUNTERS; k++) {
        h->counters[k] = 0;
    }
    for (int64_t k = 0; k < 2 * h->rows * h->cols * 2; k++) {
        h->device_pulses[k] = 0;
    }
}

void el_hal_emulated_bind(el_hal_emulated *h, el_board_hal *out) {
    out->ctx = h;
    out->pulse = hal_pulse;
    out->read = hal_read;
    out->mvm = hal_mvm;
    out->read_counters = hal_read_counters;
    out->reset_counters = hal_reset_counters;
}
