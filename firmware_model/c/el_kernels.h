/* edgelearn firmware kernels: a portable C11 port of the numba kernels in firmware_model/ (fixed.py, crossbar.py,
 * controller.py, frontend.py), bit-exact with them.
 *
 * Freestanding: only <stdint.h>, <stddef.h>, <stdbool.h>; no heap, no libc, no libm. Build with
 * -ffp-contract=off and without fast-math so that every double operation rounds as numba's do (numba's LLVM does not
 * contract a*b+c into a fused multiply-add outside fastmath functions).
 *
 * Arrays are pointers plus dimensions, row-major, in the layout of the numpy arrays the numba kernels take:
 *   state[rows*cols] double, params[rows*cols*EL_N_PARAMS] double,
 *   device_pulses[2*rows*cols*2] int32 ([set, row, col, direction], direction 0 = up, 1 = down),
 *   counters[EL_N_COUNTERS] int64, the generator state one uint64_t, normal_table[1 << EL_NORMAL_TABLE_BITS] double.
 * Scratch that the numba kernels allocate with np.empty is passed in by the caller (sizes given per function).
 *
 * Integer conventions follow numba: int64 arithmetic wraps (done here in uint64 to avoid C's undefined signed
 * overflow), `//` floors, np.int32(x) of an int64 wraps, float-to-int conversions truncate (the callers keep them in
 * range), builtin max(a, b) is (b > a ? b : a) and min(a, b) is (b < a ? b : a) (Python's and numba's order).
 */
#ifndef EL_KERNELS_H
#define EL_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* fixed.py */
#define EL_INT32_MIN (-2147483647 - 1)
#define EL_INT32_MAX 2147483647
#define EL_NORMAL_TABLE_BITS 12
#define EL_NORMAL_TABLE_SIZE (1 << EL_NORMAL_TABLE_BITS)

/* crossbar.py: polarity and per-device parameter indices */
#define EL_POLARITY_DOWN 1
#define EL_POLARITY_UP (-1)
#define EL_P_SCALE_UP 0
#define EL_P_SCALE_DOWN 1
#define EL_P_W_MIN 2
#define EL_P_W_MAX 3
#define EL_P_INV_SPAN 4
#define EL_N_PARAMS 5

/* controller.py: counter indices and noise management modes */
#define EL_C_PULSES_UP 0
#define EL_C_PULSES_DOWN 1
#define EL_C_CAL_PULSES_UP 2
#define EL_C_CAL_PULSES_DOWN 3
#define EL_C_COINCIDENCES 4
#define EL_C_MVM_FORWARD 5
#define EL_C_MVM_BACKWARD 6
#define EL_C_CELL_READS 7
#define EL_C_DEVICE_READS 8
#define EL_C_DAC 9
#define EL_C_ADC 10
#define EL_C_MACS 11
#define EL_C_ACC_UPDATES 12
#define EL_C_RNG_DRAWS 13
#define EL_C_BM_REPEATS 14
#define EL_C_UPDATES 15
#define EL_N_COUNTERS 16
#define EL_NM_NONE 0
#define EL_NM_ABS_MAX 1

/* frontend.py */
#define EL_N_FEATURES 5
#define EL_Q15_MIN (-32768)
#define EL_Q15_MAX 32767

/* ---- helpers with numba's integer semantics (shared by the .c files) ------------------------------------------ */

/* uint64 -> int64 two's complement, without implementation-defined conversion */
static inline int64_t el_u2i64(uint64_t u) {
    return u <= (uint64_t)INT64_MAX ? (int64_t)u : -(int64_t)(~u) - 1;
}
static inline int64_t el_add64(int64_t a, int64_t b) { return el_u2i64((uint64_t)a + (uint64_t)b); }
static inline int64_t el_sub64(int64_t a, int64_t b) { return el_u2i64((uint64_t)a - (uint64_t)b); }
static inline int64_t el_mul64(int64_t a, int64_t b) { return el_u2i64((uint64_t)a * (uint64_t)b); }
/* numba's `a // b` on int64 (floor), b != 0 */
static inline int64_t el_floordiv64(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) {
        q -= 1;
    }
    return q;
}
/* numba's arithmetic `v >> s` on int64 (floor), 0 <= s < 64, portable for negative v */
static inline int64_t el_asr64(int64_t v, int64_t s) {
    return v >= 0 ? (int64_t)((uint64_t)v >> s) : el_u2i64(~((~(uint64_t)v) >> s));
}
/* np.int32(int64): wrap (the low 32 bits as two's complement) */
static inline int32_t el_i32_of(int64_t v) {
    uint32_t u = (uint32_t)(uint64_t)v;
    return u <= (uint32_t)EL_INT32_MAX ? (int32_t)u : (int32_t)(-(int64_t)(~u) - 1);
}
/* int32 array element += np.int32(n): numba adds in int64 and stores the low 32 bits */
static inline void el_add_i32(int32_t *slot, int64_t n) { *slot = el_i32_of(el_add64((int64_t)*slot, n)); }
/* builtin max / min as numba lowers them: select(v > acc, v, acc) with acc the first argument */
static inline double el_fmax(double a, double b) { return b > a ? b : a; }
static inline double el_fmin(double a, double b) { return b < a ? b : a; }
static inline int64_t el_imax(int64_t a, int64_t b) { return b > a ? b : a; }
static inline int64_t el_imin(int64_t a, int64_t b) { return b < a ? b : a; }
static inline double el_fabs(double v) { return __builtin_fabs(v); }

/* ---- fixed.py's hot helpers, inline: the kernels call these (a call across files per chi cell cost 51 of its 90
 * Cortex-M4 instructions); el_fixed.c exports the same functions for the bindings and tests. */
#define EL_M64 UINT64_C(0x2545F4914F6CDD1D)

static inline int32_t el_wrap_i32_inline(int64_t value) {
    int64_t v = value & INT64_C(0xFFFFFFFF);
    if (v >= INT64_C(0x80000000)) {
        v -= INT64_C(0x100000000);
    }
    return (int32_t)v;
}

static inline int32_t el_sat_i32_inline(int64_t value) {
    if (value > EL_INT32_MAX) {
        return EL_INT32_MAX;
    }
    if (value < EL_INT32_MIN) {
        return EL_INT32_MIN;
    }
    return (int32_t)value;
}

static inline int64_t el_div_trunc_inline(int64_t a, int64_t b) {
    /* q = abs(a) // abs(b): both non-negative, so floor and C truncation agree (|a|, |b| < 2**63) */
    uint64_t ua = a < 0 ? (uint64_t)0 - (uint64_t)a : (uint64_t)a;
    uint64_t ub = b < 0 ? (uint64_t)0 - (uint64_t)b : (uint64_t)b;
    int64_t q = el_u2i64(ua / ub);
    if ((a < 0) != (b < 0)) {
        return el_sub64(0, q);
    }
    return q;
}

static inline int64_t el_shift_round_inline(int64_t value, int64_t shift) {
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

static inline uint64_t el_rng_next_inline(uint64_t *state) {
    uint64_t x = state[0];
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    state[0] = x;
    return x * EL_M64;
}

static inline uint64_t el_rng_u32_inline(uint64_t *state) { return el_rng_next_inline(state) >> 32; }

#define EL_TWO52 4503599627370496.0

/* math.floor of a double, exact for every double (no libm): el_floor, inline for loops that round once per cell */
static inline double el_floor_inline(double v) {
    if (v == 0.0 || !(el_fabs(v) < EL_TWO52)) {
        return v; /* zero (either sign), already integral, infinite or NaN */
    }
    double t = (double)(int64_t)v; /* truncation toward zero, exact below 2**52 */
    if (t > v) {
        t -= 1.0;
    }
    return t;
}

static inline double el_rng_normal_inline(uint64_t *state, const double *normal_table) {
    return normal_table[el_rng_next_inline(state) >> (64 - EL_NORMAL_TABLE_BITS)];
}

/* ---- el_fixed.c: fixed.py -------------------------------------------------------------------------------------- */

int32_t el_wrap_i32(int64_t value);                  /* fixed.wrap_i32 */
int32_t el_sat_i32(int64_t value);                   /* fixed.sat_i32 */
int64_t el_div_trunc(int64_t a, int64_t b);          /* fixed.div_trunc (b != 0) */
int64_t el_shift_round(int64_t value, int64_t shift); /* fixed.shift_round */
uint64_t el_xorshift_advance(uint64_t x);            /* fixed.xorshift_advance */
uint64_t el_rng_next(uint64_t *state);               /* fixed.rng_next */
uint64_t el_rng_u32(uint64_t *state);                /* fixed.rng_u32 (a uint32 value in a uint64, as numba's) */
double el_rng_normal(uint64_t *state, const double *normal_table); /* fixed.rng_normal */
int64_t el_popcount32(uint64_t value);               /* fixed.popcount32 (of the low 32 bits) */
int64_t el_lowest_set_bit(uint64_t mask);            /* fixed.lowest_set_bit (mask != 0) */
double el_floor(double v);                           /* np.floor, exact for every double (no libm) */
double el_ceil(double v);                            /* np.ceil, exact for every double (no libm) */

/* ---- el_crossbar.c: crossbar.py -------------------------------------------------------------------------------- */

/* crossbar.relative_step; n_nodes = table.shape[0] >= 1 */
double el_relative_step(double w, const double *table, int64_t n_nodes, double w_min, double inv_span);
/* crossbar.step_state */
double el_step_state(double w, int64_t polarity, const double *table_up, int64_t n_up, const double *table_down,
                     int64_t n_down, double scale_up, double scale_down, double w_min, double w_max, double inv_span,
                     double noise);
/* crossbar.apply_pulse */
double el_apply_pulse(double w, int64_t polarity, const double *table_up, int64_t n_up, const double *table_down,
                      int64_t n_down, double scale_up, double scale_down, double w_min, double w_max, double noise);
/* crossbar.pulse_device: n pulses of one polarity on device (i, j) of state[rows*cols] (0 <= i < rows, 0 <= j < cols) */
void el_pulse_device(double *state, const double *params, int64_t rows, int64_t cols, int64_t i, int64_t j,
                     int64_t n, int64_t polarity, const double *table_up, int64_t n_up, const double *table_down,
                     int64_t n_down, double c2c_std, uint64_t *rng, const double *normal_table);
/* crossbar.replay: polarities[n], restart[n], restart_w[n] -> out[n] */
void el_replay(double w_start, const int64_t *polarities, const bool *restart, const double *restart_w, int64_t n,
               const double *table_up, int64_t n_up, const double *table_down, int64_t n_down, double scale_up,
               double scale_down, double w_min, double w_max, double *out);
/* crossbar.alternate_until_settled: returns the settled mean, *pairs_out = pairs applied */
double el_alternate_until_settled(double w_start, const double *table_up, int64_t n_up, const double *table_down,
                                  int64_t n_down, double scale_up, double scale_down, double w_min, double w_max,
                                  int64_t max_pairs, double tolerance, int64_t *pairs_out);
/* crossbar.pulses_to_cross */
int64_t el_pulses_to_cross(double w_from, double w_to, int64_t polarity, const double *table_up, int64_t n_up,
                           const double *table_down, int64_t n_down, double scale_up, double scale_down, double w_min,
                           double w_max, int64_t max_pulses);

/* ---- el_controller.c: controller.py ---------------------------------------------------------------------------- */

/* controller.round_half_away */
double el_round_half_away(double value);
/* controller._analog_mvm, summed sequentially in the Python loop order (numba may reassociate: fastmath) */
void el_analog_mvm(const double *state, const double *ref_state, int64_t rows, int64_t cols, bool use_ref,
                   const double *u, bool transpose, double *y);
/* controller.mvm: vec[n_in], codes[n_out]; scratch u[n_in], y[n_out] (n_in = rows if transpose else cols) */
double el_mvm(const double *state, const double *ref_state, int64_t rows, int64_t cols, bool use_ref,
              const double *vec, bool transpose, int64_t dac_bits, double inp_bound, int64_t adc_bits,
              double out_bound, double out_noise, int64_t noise_management, bool bound_management,
              int64_t max_bm_rounds, uint64_t *rng, const double *normal_table, int32_t *codes, int64_t *counters,
              double *u, double *y);
/* controller.mvm_batch: vecs[batch*n_in], codes[batch*n_out], scales[batch]; scratch u[n_in], y[n_out] */
void el_mvm_batch(const double *state, const double *ref_state, int64_t rows, int64_t cols, bool use_ref,
                  const double *vecs, int64_t batch, bool transpose, int64_t dac_bits, double inp_bound,
                  int64_t adc_bits, double out_bound, double out_noise, int64_t noise_management,
                  bool bound_management, int64_t max_bm_rounds, uint64_t *rng, const double *normal_table,
                  int32_t *codes, double *scales, int64_t *counters, double *u, double *y);
/* controller._train_bits: values[n] -> bits[n] */
void el_train_bits(const double *values, int64_t n, double prob_scale, int64_t bl, uint64_t *rng, uint32_t *bits);
/* controller.train_length */
int64_t el_train_length(double lr, double x_max, double d_max, double dw_min, int64_t bl_max);
/* controller._coincidence_pulses: pulses = device_pulses[0] ([rows*cols*2]); returns total, *n_down_out = down */
int64_t el_coincidence_pulses(double *state, const double *params, int64_t rows, int64_t cols,
                              const double *table_up, int64_t n_up, const double *table_down, int64_t n_down,
                              double c2c_std, const double *x, const double *d, const uint32_t *x_bits,
                              const uint32_t *d_bits, uint64_t *rng, const double *normal_table, int32_t *pulses,
                              int64_t *n_down_out);
/* controller.stochastic_update: x[cols], d[rows]; scratch x_bits[cols], d_bits[rows] */
int64_t el_stochastic_update(double *state, const double *params, int64_t rows, int64_t cols, const double *table_up,
                             int64_t n_up, const double *table_down, int64_t n_down, double c2c_std, const double *x,
                             const double *d, double lr, double dw_min, int64_t bl_max, bool update_management,
                             uint64_t *rng, const double *normal_table, int32_t *device_pulses, int64_t *counters,
                             uint32_t *x_bits, uint32_t *d_bits);
/* controller.stochastic_update_batch: xs[batch*cols], ds[batch*rows]; scratch x_bits[cols], d_bits[rows] */
int64_t el_stochastic_update_batch(double *state, const double *params, int64_t rows, int64_t cols,
                                   const double *table_up, int64_t n_up, const double *table_down, int64_t n_down,
                                   double c2c_std, const double *xs, const double *ds, int64_t batch, double lr,
                                   double dw_min, int64_t bl_max, bool update_management, uint64_t *rng,
                                   const double *normal_table, int32_t *device_pulses, int64_t *counters,
                                   uint32_t *x_bits, uint32_t *d_bits);
/* controller.deterministic_update_batch: xs[batch*cols], ds[batch*rows]; scratch g[cols] */
int64_t el_deterministic_update_batch(double *state, const double *params, int64_t rows, int64_t cols,
                                      const double *table_up, int64_t n_up, const double *table_down,
                                      int64_t n_down, double c2c_std, const double *xs, const double *ds,
                                      int64_t batch, double lr, double dw_min, int64_t max_pulses, uint64_t *rng,
                                      const double *normal_table, int32_t *device_pulses, int64_t *counters,
                                      double *g);
/* controller.chi_increments: x[n_x] -> x_q[n_x], d[n_d] -> row_mult[n_d] */
void el_chi_increments(const double *x, int64_t n_x, const double *d, int64_t n_d, double lr, int64_t chi_frac_bits,
                       int32_t *x_q, int32_t *row_mult);
/* controller.mp_update: chi[rows*cols], x_q[cols], row_mult[rows] */
int64_t el_mp_update(double *state, const double *params, int64_t rows, int64_t cols, const double *table_up,
                     int64_t n_up, const double *table_down, int64_t n_down, double c2c_std, int32_t *chi,
                     const int32_t *x_q, const int32_t *row_mult, int64_t eps_up_q, int64_t eps_down_q,
                     int64_t max_pulses, uint64_t *rng, const double *normal_table, int32_t *device_pulses,
                     int64_t *counters);
/* controller.mp_update_dense: chi[rows*cols], gradient[rows*cols] */
int64_t el_mp_update_dense(double *state, const double *params, int64_t rows, int64_t cols, const double *table_up,
                           int64_t n_up, const double *table_down, int64_t n_down, double c2c_std, int32_t *chi,
                           const double *gradient, double scale, int64_t eps_up_q, int64_t eps_down_q,
                           int64_t max_pulses, uint64_t *rng, const double *normal_table, int32_t *device_pulses,
                           int64_t *counters);
/* controller.symmetry_search: device_set in {0, 1}; settled[rows*cols], pairs_used[rows*cols] */
void el_symmetry_search(double *state, const double *params, int64_t rows, int64_t cols, const double *table_up,
                        int64_t n_up, const double *table_down, int64_t n_down, double c2c_std, int64_t device_set,
                        int64_t window, int64_t max_pairs, double tolerance, uint64_t *rng,
                        const double *normal_table, double *settled, int64_t *pairs_used, int32_t *device_pulses,
                        int64_t *counters);
/* controller.program_to: device_set in {0, 1}; target[rows*cols]; returns the devices that missed */
int64_t el_program_to(double *state, const double *params, int64_t rows, int64_t cols, const double *table_up,
                      int64_t n_up, const double *table_down, int64_t n_down, double c2c_std, int64_t device_set,
                      const double *target, double tolerance, int64_t max_pulses, uint64_t *rng,
                      const double *normal_table, int32_t *device_pulses, int64_t *counters);
/* controller.apply_counts: counts[rows*cols] */
int64_t el_apply_counts(double *state, const double *params, int64_t rows, int64_t cols, const double *table_up,
                        int64_t n_up, const double *table_down, int64_t n_down, double c2c_std, const int32_t *counts,
                        uint64_t *rng, const double *normal_table, int32_t *device_pulses, int64_t *counters);

/* ---- el_frontend.c: frontend.py -------------------------------------------------------------------------------- */

int64_t el_isqrt64(int64_t value);                                   /* frontend.isqrt64 */
int64_t el_window_count(int64_t n_samples, int64_t length, int64_t hop); /* frontend.window_count (hop != 0) */
/* frontend.window_features: codes[n*channels] int16; out rows of out_cols int32 (out_cols >= channels*5) */
int64_t el_window_features(const int16_t *codes, int64_t n, int64_t channels, int64_t length, int64_t hop,
                           int32_t *out, int64_t out_cols);
/* frontend.decimate: codes[n*channels]; out rows of out_cols int16 (out_cols >= channels*(length//factor)) */
int64_t el_decimate(const int16_t *codes, int64_t n, int64_t channels, int64_t length, int64_t hop, int64_t factor,
                    int16_t *out, int64_t out_cols);
/* frontend.normalise: features[n_windows*n] int32, offset/multiplier/shift[n] int32, out[n_windows*n] int16 */
int64_t el_normalise(const int32_t *features, int64_t n_windows, int64_t n, const int32_t *offset,
                     const int32_t *multiplier, const int32_t *shift, int16_t *out);

#endif /* EL_KERNELS_H */
