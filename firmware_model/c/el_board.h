/* The test board's firmware: a portable C11 port of firmware_model/board.py, byte-exact with it.
 *
 * el_board is the protocol v2 command interpreter (docs/protocol.md; board.BoardFirmware): a request payload (CRC
 * already checked) in, the response payload out, no I/O. It keeps the session (owner, lease, last request time), the
 * per-session duplicate cache with stale-request refusal, the busy refusal, the configured pulse, the counters of
 * executed / duplicate / stale / busy requests, and answers every command with the Python's statuses and texts
 * (error texts included, formatted here without printf). It drives the array through a small hardware-abstraction
 * layer, el_board_hal (board.EmulatedCrossbar's operations). el_hal_emulated (el_hal_emulated.c) is the host's HAL
 * over plain arrays and the C kernels of el_kernels.h; a board port implements the same five functions on hardware.
 *
 * Freestanding: only <stdint.h>, <stddef.h>, <stdbool.h>; no heap, no libc calls in el_board.c. Every buffer is
 * inside the structs or passed in by the caller.
 *
 * Memory. The duplicate cache holds EL_BOARD_CACHE_DEPTH full (request, response) pairs, about 1 MiB at the host
 * defaults (32 x (EL_BOARD_MAX_REQUEST + EL_BOARD_MAX_RESPONSE)); that is fine on the host. A small MCU build sets
 * smaller values before including this header (-DEL_BOARD_CACHE_DEPTH=4 -DEL_BOARD_MAX_REQUEST=1024
 * -DEL_BOARD_MAX_DIM=64 ...): requests longer than EL_BOARD_MAX_REQUEST are then dropped unanswered (a host's
 * resends get no further), and EL_BOARD_MAX_DIM must keep MVM answers within EL_BOARD_MAX_RESPONSE. At the defaults
 * nothing a frame decoder can deliver is dropped.
 *
 * Differences from the Python, by design:
 * - Time is an int64 microsecond clock (`now_us`); the lease is a whole number of milliseconds (IDENTIFY's lease_ms).
 *   "last request X s ago" formats the double (now_us - seen_us) / 1e6 exactly as Python's {:.1f}, and the lease as
 *   Python's {:g} of lease_ms / 1000. With times that are exact in both clocks (e.g. multiples of 1/64 s) every
 *   comparison and every text equals the Python's.
 * - Requests longer than EL_BOARD_MAX_REQUEST (at the default, longer than any payload the frame decoder delivers)
 *   are dropped (0 returned) instead of answered: the cache could not hold them.
 * - The Python answers any exception with E_INTERNAL; here inputs are validated, and the only E_INTERNAL is what a
 *   HAL reports (the emulated HAL: the amplitude factor's OverflowError / ZeroDivisionError, as math.exp and float
 *   division raise them). el_board_init refuses configurations the Python could not IDENTIFY (fields that do not fit
 *   their wire types) or that exceed the buffers here.
 */
#ifndef EL_BOARD_H
#define EL_BOARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "el_protocol.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------------ sizes */
#ifndef EL_BOARD_CACHE_DEPTH
#define EL_BOARD_CACHE_DEPTH 32 /* answers kept per session for repeated requests (board.CACHE_DEPTH) */
#endif
#ifndef EL_BOARD_MAX_REQUEST
#define EL_BOARD_MAX_REQUEST EL_DECODER_MAX_PAYLOAD /* longest request payload answered (and cached) */
#endif
#define EL_BOARD_MAX_RESPONSE EL_MAX_PAYLOAD /* the `cap` el_board_handle needs */
#ifndef EL_BOARD_MAX_DIM
#define EL_BOARD_MAX_DIM 4096 /* rows, cols each: an MVM answer (17 + 2 x n_out bytes) always fits one payload */
#endif
#ifndef EL_BOARD_MAX_WIDTHS
#define EL_BOARD_MAX_WIDTHS 16 /* pulse widths per array */
#endif
#define EL_BOARD_READ_BITS 16
#define EL_BOARD_N_COUNTERS 16
#define EL_BOARD_MAX_TEXT 255                          /* a protocol text: u8 length + at most 255 UTF-8 bytes */
#define EL_BOARD_MAX_READ ((EL_MAX_PAYLOAD - 32) / 2)   /* most devices one READ returns (n x 2 + 32 <= MAX_PAYLOAD) */
#define EL_BOARD_DEFAULT_LEASE_MS 10000u
#define EL_BOARD_DEFAULT_MAX_PULSES (1u << 24)

/* el_board_init errors */
#define EL_BOARD_ERR_ARGUMENT (-1)

/* ------------------------------------------------------------------------------------------------ the HAL */

/* What the interpreter asks of the array. Regions are row0..row0+nrows-1 x col0..col0+ncols-1, already checked to
 * lie inside the array; arrays over a region are row-major, nrows x ncols. */
typedef struct {
    void *ctx;
    /* Signed pulse counts (> 0 up, < 0 down) on a region at the configured width and amplitude (|amplitude|, in the
     * width's range), device by device in row-major order; counts == NULL: every device gets `uniform`. Returns the
     * pulses applied (>= 0), or -1 when the pulse could not be made, *error then pointing to a static NUL-terminated
     * text (the E_INTERNAL answer) and no device having been touched. */
    int64_t (*pulse)(void *ctx, uint32_t width_ns, int32_t amplitude_mv, uint32_t row0, uint32_t nrows, uint32_t col0,
                     uint32_t ncols, const int32_t *counts, int32_t uniform, const char **error);
    /* The devices' normalised states w of a region into w_out[nrows x ncols]; counts one device read each. */
    void (*read)(void *ctx, uint32_t row0, uint32_t nrows, uint32_t col0, uint32_t ncols, double *w_out);
    /* One array pass through DAC and ADC (controller.mvm): vec[n_in] (ncols forward, nrows transposed) ->
     * codes_out[n_out]; returns the code scale. */
    double (*mvm)(void *ctx, uint32_t row0, uint32_t nrows, uint32_t col0, uint32_t ncols, const double *vec,
                  bool transpose, int32_t *codes_out);
    void (*read_counters)(void *ctx, int64_t out[EL_BOARD_N_COUNTERS]);
    /* Zero the counters and the per-device pulse counts. */
    void (*reset_counters)(void *ctx);
} el_board_hal;

/* ------------------------------------------------------------------------------------------------ the interpreter */

typedef struct {
    uint32_t width_ns;
    int16_t amplitude_low_mv;
    int16_t amplitude_high_mv;
} el_board_width;

typedef struct {
    uint16_t seq;
    uint16_t request_len;  /* <= EL_BOARD_MAX_REQUEST */
    uint16_t response_len; /* <= EL_BOARD_MAX_RESPONSE */
    uint8_t request[EL_BOARD_MAX_REQUEST];
    uint8_t response[EL_BOARD_MAX_RESPONSE];
} el_board_cache_entry;

typedef struct {
    /* identify info */
    uint16_t rows, cols;
    uint8_t dac_bits, adc_bits;
    double inp_bound;
    double read_offset_s, read_scale_s;
    double w_per_code; /* READ_SPAN_W / (2^READ_BITS - 1) */
    uint32_t lease_ms;
    uint32_t max_pulses;
    uint8_t n_widths;
    el_board_width widths[EL_BOARD_MAX_WIDTHS];
    uint8_t firmware_len, device_id_len;
    uint8_t firmware[EL_BOARD_MAX_TEXT];
    uint8_t device_id[EL_BOARD_MAX_TEXT];
    el_board_hal hal;

    /* the configured pulse */
    bool configured;
    uint32_t configured_width_ns;
    int32_t configured_amplitude_mv;

    /* the session */
    int32_t owner;    /* the session that holds the board, -1: free */
    int64_t owner_seen_us;
    int32_t high_seq; /* the owner's last executed seq, -1: none */
    uint16_t last_session, last_seq; /* the last intact request (what a NAK names) */
    uint64_t executed, duplicates, stale, busy;

    /* the owner's duplicate cache: a FIFO of cache_count entries starting at cache_head */
    uint32_t cache_head, cache_count;
    el_board_cache_entry cache[EL_BOARD_CACHE_DEPTH];

    /* scratch */
    int32_t counts[EL_BOARD_MAX_REQUEST]; /* UPDATE's counts (one byte each in the request) */
    double w[EL_BOARD_MAX_READ];          /* READ's states */
    double vec[EL_BOARD_MAX_DIM];         /* an MVM's input */
    int32_t codes[EL_BOARD_MAX_DIM];      /* an MVM's output */
} el_board;

/* A board over `hal` (copied) with the given identify info; no widths yet (add them with el_board_add_width before
 * the first request). lease_ms = round(lease_s * 1000). Returns 0, or EL_BOARD_ERR_ARGUMENT (rows or cols outside
 * 1..EL_BOARD_MAX_DIM, dac_bits outside 2..63, a text longer than 255 bytes, a HAL function missing). */
int el_board_init(el_board *b, uint16_t rows, uint16_t cols, uint8_t dac_bits, uint8_t adc_bits, double inp_bound,
                  double read_offset_s, double read_scale_s, uint32_t lease_ms, uint32_t max_pulses,
                  const uint8_t *firmware, size_t firmware_len, const uint8_t *device_id, size_t device_id_len,
                  const el_board_hal *hal);
/* One more supported pulse width (IDENTIFY lists them in this order). EL_BOARD_ERR_ARGUMENT for a duplicate width
 * or too many widths. */
int el_board_add_width(el_board *b, uint32_t width_ns, int16_t amplitude_low_mv, int16_t amplitude_high_mv);

/* One request payload -> the response's length in out (0: no response, as the Python's None). cap must be at least
 * EL_BOARD_MAX_RESPONSE (else 0, nothing done). now_us: a monotonic clock in microseconds. */
size_t el_board_handle(el_board *b, const uint8_t *payload, size_t n, int64_t now_us, uint8_t *out, size_t cap);

/* The session's host is gone (CLOSE, or its connection ended): the board is free for another host. */
void el_board_release(el_board *b, uint16_t session);

/* The session state for bindings and tests, into out[12]: executed, duplicates, stale, busy, owner (-1: free),
 * owner_seen_us, high_seq (-1: none), last_session, last_seq, configured (0/1), configured width_ns, configured
 * |amplitude_mv|. */
void el_board_status(const el_board *b, int64_t out[12]);

/* The cache's seqs, oldest first, into out[EL_BOARD_CACHE_DEPTH]; returns how many. */
size_t el_board_cache_seqs(const el_board *b, uint16_t *out);

/* sizeof(el_board) and sizeof(el_board_hal), for bindings that allocate them. */
size_t el_board_size(void);
size_t el_board_hal_size(void);

/* The formatters, for tests: Python's f"{(diff_us / 1e6):.1f}" and f"{(lease_ms / 1000):g}" into out (at least 32
 * bytes); returns the length. */
size_t el_board_format_seconds_1f(int64_t diff_us, uint8_t *out);
size_t el_board_format_lease_g(uint32_t lease_ms, uint8_t *out);

/* ------------------------------------------------------------------------------------------------ the host HAL */

/* el_hal_emulated.c: board.EmulatedCrossbar over plain arrays and the C kernels (el_kernels.h). The arrays are the
 * caller's (row-major, the numpy layouts of the host: state[rows*cols], params[rows*cols*5] per width,
 * device_pulses[2*rows*cols*2], counters[16], rng[1], normal_table[4096], ref_zero[rows*cols]), as is scratch for the
 * region copies the kernels work on (EL_HAL_SCRATCH_* below). */
typedef struct {
    uint32_t width_ns;
    const double *table_up;
    int64_t n_up;
    const double *table_down;
    int64_t n_down;
    const double *params;
    double c2c_std;
    bool has_response;
    double response[6]; /* v0_up, vs_up, ref_up, v0_down, vs_down, ref_down (volts) */
} el_hal_width;

typedef struct {
    int64_t rows, cols;
    double *state;
    const double *ref_zero;
    uint64_t *rng;
    const double *normal_table;
    int64_t *counters;
    int32_t *device_pulses;
    /* periphery: controller.mvm's arguments after `transpose` */
    int64_t dac_bits;
    double inp_bound;
    int64_t adc_bits;
    double out_bound;
    double out_noise;
    int64_t noise_management;
    bool bound_management;
    int64_t max_bm_rounds;
    size_t n_widths;
    el_hal_width widths[EL_BOARD_MAX_WIDTHS];
    /* scratch: region copies */
    double *s_state;    /* rows*cols */
    double *s_params;   /* rows*cols*5 */
    int32_t *s_pulses;  /* 2*rows*cols*2 */
    int32_t *s_counts;  /* rows*cols */
    double *s_u, *s_y;  /* max(rows, cols) each */
    /* the last amplitude's step factors (board.EmulatedCrossbar keeps one amplitude's scaled params) */
    bool f_valid;
    uint32_t f_width_ns;
    int32_t f_amplitude_mv;
    double f_up, f_down;
} el_hal_emulated;

/* scratch sizes in elements */
#define EL_HAL_SCRATCH_STATE(rows, cols) ((rows) * (cols))
#define EL_HAL_SCRATCH_PARAMS(rows, cols) ((rows) * (cols) * 5)
#define EL_HAL_SCRATCH_PULSES(rows, cols) (2 * (rows) * (cols) * 2)
#define EL_HAL_SCRATCH_VECTOR(rows, cols) ((rows) > (cols) ? (rows) : (cols))

/* Returns 0 or EL_BOARD_ERR_ARGUMENT (a NULL array, rows or cols < 1, dac_bits or adc_bits outside 2..62). */
int el_hal_emulated_init(el_hal_emulated *h, int64_t rows, int64_t cols, double *state, const double *ref_zero,
                         uint64_t *rng, const double *normal_table, int64_t *counters, int32_t *device_pulses,
                         int64_t dac_bits, double inp_bound, int64_t adc_bits, double out_bound, double out_noise,
                         int64_t noise_management, bool bound_management, int64_t max_bm_rounds, double *s_state,
                         double *s_params, int32_t *s_pulses, int32_t *s_counts, double *s_u, double *s_y);
/* One pulse width (PulseWidth): tables, per-device params[rows*cols*5], c2c_std, and the amplitude response
 * (response == NULL: none). EL_BOARD_ERR_ARGUMENT for a duplicate width, too many widths or an empty table. */
int el_hal_emulated_add_width(el_hal_emulated *h, uint32_t width_ns, const double *table_up, int64_t n_up,
                              const double *table_down, int64_t n_down, const double *params, double c2c_std,
                              const double *response);
/* The el_board_hal over h. */
void el_hal_emulated_bind(el_hal_emulated *h, el_board_hal *out);
/* PulseWidth.factors: (up, down) step factors at |amplitude_mv| into out[2]; returns NULL, or the Python exception's
 * "Type: message" when math.exp or a division would raise (then out is untouched). */
const char *el_hal_emulated_factors(const el_hal_emulated *h, uint32_t width_ns, int32_t amplitude_mv, double *out);
size_t el_hal_emulated_size(void);

#ifdef __cplusplus
}
#endif

#endif /* EL_BOARD_H */
