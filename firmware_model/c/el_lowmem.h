/* edgelearn firmware: the memory-light training kernels, a portable C11 port of firmware_model/lowmem.py, bit-exact
 * with the numba kernels (random streams included).
 *
 * Freestanding like the rest of firmware_model/c (only <stdint.h>, <stddef.h>, <stdbool.h> through el_kernels.h; no
 * heap, no libc, no libm). Conventions are el_kernels.h's: row-major arrays as pointer plus dimensions, int64
 * arithmetic wrapping, builtin max / min in numba's order, the generator one uint64_t.
 *
 * Preconditions the callers (and the host bindings, firmware_model/clowmem.py) guarantee, where numba would raise
 * ZeroDivisionError or index out of bounds instead: eps_up_q > 0, eps_down_q > 0, unit > 0, 0 <= col < cols.
 * Narrow stores wrap (the low 8 / 16 / 32 bits, as numba stores an int64 into a narrow array), so chi_min / chi_max
 * and h_min / h_max beyond the element type behave as in numba.
 */
#ifndef EL_LOWMEM_H
#define EL_LOWMEM_H

#include "el_kernels.h"

#define EL_LOWMEM_TWO32 4294967296.0
#define EL_LOWMEM_LIMIT 1099511627776.0 /* 2^40 */

/* lowmem.stochastic_round: floor(x) + 1 with probability frac(x) (one rng_u32 draw), x first limited to +-2^40.
 * A NaN x gives INT64_MIN + 1 after its draw, as the numba kernel does on x86-64 (its float-to-int conversions give
 * INT64_MIN and UINT64_MAX there). */
int64_t el_stochastic_round(double x, uint64_t *rng);

/* lowmem.mp_update_dense_q on an int8 / int16 accumulator: chi[rows*cols], gradient[rows*cols]; device_pulses and
 * counters as in el_kernels.h. Returns the pulses applied. */
int64_t el_mp_update_dense_q_i8(double *state, const double *params, int64_t rows, int64_t cols,
                                const double *table_up, int64_t n_up, const double *table_down, int64_t n_down,
                                double c2c_std, int8_t *chi, const double *gradient, double scale, int64_t eps_up_q,
                                int64_t eps_down_q, int64_t chi_min, int64_t chi_max, int64_t max_pulses,
                                uint64_t *rng, const double *normal_table, int32_t *device_pulses, int64_t *counters);
int64_t el_mp_update_dense_q_i16(double *state, const double *params, int64_t rows, int64_t cols,
                                 const double *table_up, int64_t n_up, const double *table_down, int64_t n_down,
                                 double c2c_std, int16_t *chi, const double *gradient, double scale, int64_t eps_up_q,
                                 int64_t eps_down_q, int64_t chi_min, int64_t chi_max, int64_t max_pulses,
                                 uint64_t *rng, const double *normal_table, int32_t *device_pulses,
                                 int64_t *counters);

/* lowmem.buffer_transfer on column col of an int8 / int16 / int32 buffer h[rows*cols]: signal[rows] -> counts[rows].
 * Returns the number of devices that fire. */
int64_t el_buffer_transfer_i8(int8_t *h, int64_t rows, int64_t cols, int64_t col, const double *signal, double gain,
                              int64_t h_min, int64_t h_max, int64_t unit, double momentum, bool forget,
                              int64_t max_steps, uint64_t *rng, int64_t *counts, int64_t *counters);
int64_t el_buffer_transfer_i16(int16_t *h, int64_t rows, int64_t cols, int64_t col, const double *signal,
                               double gain, int64_t h_min, int64_t h_max, int64_t unit, double momentum, bool forget,
                               int64_t max_steps, uint64_t *rng, int64_t *counts, int64_t *counters);
int64_t el_buffer_transfer_i32(int32_t *h, int64_t rows, int64_t cols, int64_t col, const double *signal,
                               double gain, int64_t h_min, int64_t h_max, int64_t unit, double momentum, bool forget,
                               int64_t max_steps, uint64_t *rng, int64_t *counts, int64_t *counters);

#endif /* EL_LOWMEM_H */
