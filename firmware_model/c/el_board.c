/* The board firmware's command interpreter: firmware_model/board.py's BoardFirmware in C (see el_board.h). */
#include "el_board.h"

#if EL_BOARD_CACHE_DEPTH < 1
#error "EL_BOARD_CACHE_DEPTH must be at least 1"
#endif
#if EL_BOARD_MAX_REQUEST > 65535 || EL_BOARD_MAX_RESPONSE > 65535
#error "cache entries keep lengths in 16 bits"
#endif
#if EL_BOARD_MAX_REQUEST < EL_HEADER_SIZE || EL_BOARD_MAX_RESPONSE < 300
#error "EL_BOARD_MAX_REQUEST / EL_BOARD_MAX_RESPONSE too small"
#endif

#define READ_SPAN_W 4.0 /* read codes cover w in [-2, 2] */

/* ------------------------------------------------------------------------------------------------ bytes */

static void put_u16(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)((v >> 8) & 0xFFu);
}
static void put_u32(uint8_t *p, uint32_t v) {
    for (int k = 0; k < 4; k++) {
        p[k] = (uint8_t)((v >> (8 * k)) & 0xFFu);
    }
}
static void put_u64(uint8_t *p, uint64_t v) {
    for (int k = 0; k < 8; k++) {
        p[k] = (uint8_t)((v >> (8 * k)) & 0xFFu);
    }
}
static uint64_t bits_of(double d) {
    union {
        double d;
        uint64_t u;
    } c;
    c.d = d;
    return c.u;
}
static void put_f64(uint8_t *p, double v) { put_u64(p, bits_of(v)); }
static uint32_t get_u16(const uint8_t *p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8); }
static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static int32_t get_i16(const uint8_t *p) {
    uint32_t u = get_u16(p);
    return u < 0x8000u ? (int32_t)u : (int32_t)u - 0x10000;
}
static int32_t get_i8(uint8_t v) { return v < 0x80u ? (int32_t)v : (int32_t)v - 0x100; }
static void copy_bytes(uint8_t *dst, const uint8_t *src, size_t n) {
    for (size_t k = 0; k < n; k++) {
        dst[k] = src[k];
    }
}
static bool same_bytes(const uint8_t *a, const uint8_t *b, size_t n) {
    for (size_t k = 0; k < n; k++) {
        if (a[k] != b[k]) {
            return false;
        }
    }
    return true;
}
/* int64 a - b with wrap-around (no undefined overflow) */
static int64_t sub64(int64_t a, int64_t b) {
    uint64_t u = (uint64_t)a - (uint64_t)b;
    return u <= (uint64_t)INT64_MAX ? (int64_t)u : -(int64_t)(~u) - 1;
}

/* ------------------------------------------------------------------------------------------------ texts */

/* protocol.text: u8 length, then at most 255 bytes (longer texts are cut, as value.encode()[:255]) */
typedef struct {
    uint8_t *dst; /* dst[0] is the length byte */
    size_t n;
} el_text;

static void t_begin(el_text *t, uint8_t *dst) {
    t->dst = dst;
    t->n = 0;
}
static void t_byte(el_text *t, uint8_t c) {
    if (t->n < EL_BOARD_MAX_TEXT) {
        t->dst[1 + t->n] = c;
        t->n++;
    }
}
static void t_str(el_text *t, const char *s) {
    while (*s != '\0') {
        t_byte(t, (uint8_t)*s);
        s++;
    }
}
static void t_bytes(el_text *t, const uint8_t *s, size_t n) {
    for (size_t k = 0; k < n; k++) {
        t_byte(t, s[k]);
    }
}
static void t_u64(el_text *t, uint64_t v) {
    char d[20];
    int k = 0;
    do {
        d[k++] = (char)('0' + (int)(v % 10u));
        v /= 10u;
    } while (v != 0);
    while (k > 0) {
        t_byte(t, (uint8_t)d[--k]);
    }
}
static void t_i64(el_text *t, int64_t v) {
    if (v < 0) {
        t_byte(t, '-');
        t_u64(t, (uint64_t)0 - (uint64_t)v);
    } else {
        t_u64(t, (uint64_t)v);
    }
}
/* {:0<width>x} */
static void t_hex(el_text *t, uint32_t v, int width) {
    char d[8];
    int k = 0;
    do {
        uint32_t x = v & 0xFu;
        d[k++] = (char)(x < 10u ? '0' + (int)x : 'a' + (int)x - 10);
        v >>= 4;
    } while (v != 0 && k < 8);
    for (int pad = k; pad < width; pad++) {
        t_byte(t, '0');
    }
    while (k > 0) {
        t_byte(t, (uint8_t)d[--k]);
    }
}
static size_t t_end(el_text *t) {
    t->dst[0] = (uint8_t)t->n;
    return 1 + t->n;
}

/* Python's f"{d:.1f}": the double's exact binary value rounded half-to-even to one decimal. Exact for every finite
 * |d| < 2^52 (larger values do not arise: d is a microsecond difference in seconds). */
static void t_f1(el_text *t, double d) {
    uint64_t u = bits_of(d);
    bool neg = (u >> 63) != 0;
    uint32_t bexp = (uint32_t)((u >> 52) & 0x7FFu);
    uint64_t frac = u & ((UINT64_C(1) << 52) - 1);
    if (bexp == 0x7FFu) {
        t_str(t, frac != 0 ? "nan" : (neg ? "-inf" : "inf"));
        return;
    }
    uint64_t m = bexp == 0 ? frac : (frac | (UINT64_C(1) << 52));
    int e = bexp == 0 ? -1074 : (int)bexp - 1075;
    uint64_t tenths = 0; /* round(|d| * 10) */
    if (m != 0) {
        uint64_t m10 = m * 10u; /* < 2^57 */
        if (e >= 0) {
            tenths = e <= 6 ? m10 << e : UINT64_MAX; /* |d| >= 2^52: out of the documented range */
        } else if (-e < 64) {
            int k = -e;
            uint64_t q = m10 >> k;
            uint64_t rem = m10 & ((UINT64_C(1) << k) - 1);
            uint64_t half = UINT64_C(1) << (k - 1);
            if (rem > half || (rem == half && (q & 1u) != 0)) {
                q++;
            }
            tenths = q;
        } /* else |d| * 10 < 2^57 / 2^64 < 0.5: 0 */
    }
    if (neg) {
        t_byte(t, '-');
    }
    t_u64(t, tenths / 10u);
    t_byte(t, '.');
    t_byte(t, (uint8_t)('0' + (int)(tenths % 10u)));
}

/* sign of (double)(L / 1000) - L / 1000 (the double nearest the exact decimal, compared with it), L >= 1 */
static int ms_double_vs_exact(uint32_t L) {
    double d = (double)L / 1000.0;
    uint64_t u = bits_of(d);
    uint32_t bexp = (uint32_t)((u >> 52) & 0x7FFu); /* d >= 0.001: normal */
    uint64_t m = (u & ((UINT64_C(1) << 52) - 1)) | (UINT64_C(1) << 52);
    int k = 1075 - (int)bexp; /* d = m / 2^k, 30 <= k <= 62 for 1 <= L < 2^32 */
    uint64_t a = m * 1000u;   /* d * 1000 = a / 2^k; a < 2^63 */
    uint64_t hi = a >> k;
    uint64_t lo = a & ((UINT64_C(1) << k) - 1);
    if (hi != L) {
        return hi > L ? 1 : -1;
    }
    return lo != 0 ? 1 : 0;
}

/* Python's f"{lease_s:g}" for lease_s = lease_ms / 1000 (the double): 6 significant digits, trailing zeros removed,
 * exponent form below 1e-4 and from 1e6 on. The double differs from the decimal lease_ms / 1000 by less than half an
 * ulp, so the rounding to 6 digits is the decimal's except at an exact decimal tie, which the double breaks. */
static void t_lease_g(el_text *t, uint32_t L) {
    if (L == 0) {
        t_byte(t, '0');
        return;
    }
    int digits = 0;
    for (uint64_t v = L; v != 0; v /= 10u) {
        digits++;
    }
    int x = digits - 1 - 3; /* decimal exponent of the leading digit */
    uint64_t q = L;
    int nd = digits;
    if (digits > 6) {
        uint64_t p = 1;
        for (int k = 0; k < digits - 6; k++) {
            p *= 10u;
        }
        q = L / p;
        uint64_t rem = L % p, half = p / 2u;
        bool up;
        if (rem != half) {
            up = rem > half;
        } else {
            int c = ms_double_vs_exact(L);
            up = c > 0 || (c == 0 && (q & 1u) != 0);
        }
        if (up) {
            q++;
            if (q == 1000000u) {
                q = 100000u;
                x++;
            }
        }
        nd = 6;
    }
    char s[8];
    for (int k = nd - 1; k >= 0; k--) {
        s[k] = (char)('0' + (int)(q % 10u));
        q /= 10u;
    }
    while (nd > 1 && s[nd - 1] == '0') {
        nd--;
    }
    if (x >= -4 && x < 6) {
        if (x >= 0) {
            for (int k = 0; k <= x; k++) {
                t_byte(t, k < nd ? (uint8_t)s[k] : '0');
            }
            if (nd > x + 1) {
                t_byte(t, '.');
                for (int k = x + 1; k < nd; k++) {
                    t_byte(t, (uint8_t)s[k]);
                }
            }
        } else {
            t_str(t, "0.");
            for (int k = 0; k < -x - 1; k++) {
                t_byte(t, '0');
            }
            for (int k = 0; k < nd; k++) {
                t_byte(t, (uint8_t)s[k]);
            }
        }
    } else {
        t_byte(t, (uint8_t)s[0]);
        if (nd > 1) {
            t_byte(t, '.');
            for (int k = 1; k < nd; k++) {
                t_byte(t, (uint8_t)s[k]);
            }
        }
        t_byte(t, 'e');
        t_byte(t, x < 0 ? '-' : '+');
        int ax = x < 0 ? -x : x;
        if (ax < 10) {
            t_byte(t, '0');
        }
        t_u64(t, (uint64_t)ax);
    }
}

size_t el_board_format_seconds_1f(int64_t diff_us, uint8_t *out) {
    uint8_t buf[1 + EL_BOARD_MAX_TEXT];
    el_text t;
    t_begin(&t, buf);
    t_f1(&t, (double)diff_us / 1e6);
    copy_bytes(out, buf + 1, t.n);
    return t.n;
}

size_t el_board_format_lease_g(uint32_t lease_ms, uint8_t *out) {
    uint8_t buf[1 + EL_BOARD_MAX_TEXT];
    el_text t;
    t_begin(&t, buf);
    t_lease_g(&t, lease_ms);
    copy_bytes(out, buf + 1, t.n);
    return t.n;
}

/* ------------------------------------------------------------------------------------------------ set-up */

int el_board_init(el_board *b, uint16_t rows, uint16_t cols, uint8_t dac_bits, uint8_t adc_bits, double inp_bound,
                  double read_offset_s, double read_scale_s, uint32_t lease_ms, uint32_t max_pulses,
                  const uint8_t *firmware, size_t firmware_len, const uint8_t *device_id, size_t device_id_len,
                  const el_board_hal *hal) {
    if (b == NULL || hal == NULL || hal->pulse == NULL || hal->read == NULL || hal->mvm == NULL ||
        hal->read_counters == NULL || hal->reset_counters == NULL || rows < 1 || cols < 1 ||
        rows > EL_BOARD_MAX_DIM || cols > EL_BOARD_MAX_DIM || dac_bits < 2 || dac_bits > 63 ||
        firmware_len > EL_BOARD_MAX_TEXT || device_id_len > EL_BOARD_MAX_TEXT ||
        (firmware == NULL && firmware_len > 0) || (device_id == NULL && device_id_len > 0)) {
        return EL_BOARD_ERR_ARGUMENT;
    }
    b->rows = rows;
    b->cols = cols;
    b->dac_bits = dac_bits;
    b->adc_bits = adc_bits;
    b->inp_bound = inp_bound;
    b->read_offset_s = read_offset_s;
    b->read_scale_s = read_scale_s;
    b->w_per_code = READ_SPAN_W / (double)((1u << EL_BOARD_READ_BITS) - 1u);
    b->lease_ms = lease_ms;
    b->max_pulses = max_pulses;
    b->n_widths = 0;
    b->firmware_len = (uint8_t)firmware_len;
    b->device_id_len = (uint8_t)device_id_len;
    if (firmware_len > 0) {
        copy_bytes(b->firmware, firmware, firmware_len);
    }
    if (device_id_len > 0) {
        copy_bytes(b->device_id, device_id, device_id_len);
    }
    b->hal = *hal;
    b->configured = false;
    b->configured_width_ns = 0;
    b->configured_amplitude_mv = 0;
    b->owner = -1;
    b->owner_seen_us = 0;
    b->high_seq = -1;
    b->last_session = 0;
    b->last_seq = 0;
    b->executed = b->duplicates = b->stale = b->busy = 0;
    b->cache_head = b->cache_count = 0;
    return 0;
}

static int find_width(const el_board *b, uint32_t width_ns) {
    for (int k = 0; k < (int)b->n_widths; k++) {
        if (b->widths[k].width_ns == width_ns) {
            return k;
        }
    }
    return -1;
}

int el_board_add_width(el_board *b, uint32_t width_ns, int16_t amplitude_low_mv, int16_t amplitude_high_mv) {
    if (b == NULL || b->n_widths >= EL_BOARD_MAX_WIDTHS || find_width(b, width_ns) >= 0) {
        return EL_BOARD_ERR_ARGUMENT;
    }
    el_board_width *w = &b->widths[b->n_widths++];
    w->width_ns = width_ns;
    w->amplitude_low_mv = amplitude_low_mv;
    w->amplitude_high_mv = amplitude_high_mv;
    return 0;
}

size_t el_board_size(void) { return sizeof(el_board); }
size_t el_board_hal_size(void) { return sizeof(el_board_hal); }

/* ------------------------------------------------------------------------------------------------ the cache */

static void cache_clear(el_board *b) {
    b->cache_head = 0;
    b->cache_count = 0;
}

static el_board_cache_entry *cache_find(el_board *b, uint16_t seq) {
    for (uint32_t i = 0; i < b->cache_count; i++) {
        el_board_cache_entry *e = &b->cache[(b->cache_head + i) % EL_BOARD_CACHE_DEPTH];
        if (e->seq == seq) {
            return e;
        }
    }
    return NULL;
}

/* a new seq (never one already cached) at the end; the oldest drops out beyond EL_BOARD_CACHE_DEPTH */
static void cache_put(el_board *b, uint16_t seq, const uint8_t *request, size_t request_len, const uint8_t *response,
                      size_t response_len) {
    if (b->cache_count == EL_BOARD_CACHE_DEPTH) {
        b->cache_head = (b->cache_head + 1) % EL_BOARD_CACHE_DEPTH;
        b->cache_count--;
    }
    el_board_cache_entry *e = &b->cache[(b->cache_head + b->cache_count) % EL_BOARD_CACHE_DEPTH];
    b->cache_count++;
    e->seq = seq;
    e->request_len = (uint16_t)request_len;
    e->response_len = (uint16_t)response_len;
    copy_bytes(e->request, request, request_len);
    copy_bytes(e->response, response, response_len);
}

void el_board_status(const el_board *b, int64_t out[12]) {
    out[0] = (int64_t)b->executed;
    out[1] = (int64_t)b->duplicates;
    out[2] = (int64_t)b->stale;
    out[3] = (int64_t)b->busy;
    out[4] = b->owner;
    out[5] = b->owner_seen_us;
    out[6] = b->high_seq;
    out[7] = b->last_session;
    out[8] = b->last_seq;
    out[9] = b->configured ? 1 : 0;
    out[10] = b->configured_width_ns;
    out[11] = b->configured_amplitude_mv;
}

size_t el_board_cache_seqs(const el_board *b, uint16_t *out) {
    for (uint32_t i = 0; i < b->cache_count; i++) {
        out[i] = b->cache[(b->cache_head + i) % EL_BOARD_CACHE_DEPTH].seq;
    }
    return b->cache_count;
}

void el_board_release(el_board *b, uint16_t session) {
    if (b != NULL && b->owner == (int32_t)session) {
        b->owner = -1;
        b->high_seq = -1;
        cache_clear(b);
    }
}

/* ------------------------------------------------------------------------------------------------ commands */

typedef struct {
    el_board *b;
    const uint8_t *body; /* the request's body (protocol.Reader) */
    size_t len, pos;
    const char *what;    /* protocol.COMMAND_NAMES */
    uint8_t *out;        /* the response's body */
    size_t out_len;
    int status;
} el_cmd;

static void fail_begin(el_cmd *c, el_text *t, int status) {
    c->status = status;
    t_begin(t, c->out);
}
static bool fail_end(el_cmd *c, el_text *t) {
    c->out_len = t_end(t);
    return false;
}
static bool fail(el_cmd *c, int status, const char *message) {
    el_text t;
    fail_begin(c, &t, status);
    t_str(&t, message);
    return fail_end(c, &t);
}

/* Reader.take: the next `size` bytes, or NULL (E_BAD_LENGTH written) */
static const uint8_t *take(el_cmd *c, size_t size) {
    if (c->pos + size > c->len) {
        el_text t;
        fail_begin(c, &t, EL_E_BAD_LENGTH);
        t_str(&t, c->what);
        t_str(&t, ": body of ");
        t_u64(&t, c->len);
        t_str(&t, " bytes is too short");
        fail_end(c, &t);
        return NULL;
    }
    const uint8_t *p = c->body + c->pos;
    c->pos += size;
    return p;
}

/* Reader.array: `count` values of `itemsize` bytes, or NULL */
static const uint8_t *take_array(el_cmd *c, size_t itemsize, uint64_t count) {
    uint64_t size = (uint64_t)itemsize * count;
    if ((uint64_t)c->pos + size > (uint64_t)c->len) {
        el_text t;
        fail_begin(c, &t, EL_E_BAD_LENGTH);
        t_str(&t, c->what);
        t_str(&t, ": body of ");
        t_u64(&t, c->len);
        t_str(&t, " bytes is too short for ");
        t_u64(&t, count);
        t_str(&t, " values");
        fail_end(c, &t);
        return NULL;
    }
    const uint8_t *p = c->body + c->pos;
    c->pos += (size_t)size;
    return p;
}

/* Reader.done */
static bool done(el_cmd *c) {
    if (c->pos != c->len) {
        el_text t;
        fail_begin(c, &t, EL_E_BAD_LENGTH);
        t_str(&t, c->what);
        t_str(&t, ": ");
        t_u64(&t, c->len - c->pos);
        t_str(&t, " unexpected trailing bytes");
        return fail_end(c, &t);
    }
    return true;
}

static bool ok(el_cmd *c, size_t out_len) {
    c->status = EL_OK;
    c->out_len = out_len;
    return true;
}

typedef struct {
    uint32_t row0, nrows, col0, ncols;
} el_region;

/* " outside the ROWS x COLS array": the tail of the index and region refusals */
static void t_outside_array(el_text *t, const el_board *b) {
    t_str(t, " outside the ");
    t_u64(t, b->rows);
    t_str(t, " x ");
    t_u64(t, b->cols);
    t_str(t, " array");
}

static bool check_index(el_cmd *c, uint32_t row, uint32_t col) {
    if (!(row < c->b->rows && col < c->b->cols)) {
        el_text t;
        fail_begin(c, &t, EL_E_BAD_ARGUMENT);
        t_str(&t, "device (");
        t_u64(&t, row);
        t_str(&t, ", ");
        t_u64(&t, col);
        t_str(&t, ")");
        t_outside_array(&t, c->b);
        return fail_end(c, &t);
    }
    return true;
}

/* BoardFirmware._selection */
static bool selection(el_cmd *c, uint32_t kind, uint32_t row, uint32_t col, el_region *r) {
    el_board *b = c->b;
    switch (kind) {
    case EL_SEL_DEVICE:
        if (!check_index(c, row, col)) {
            return false;
        }
        *r = (el_region){row, 1, col, 1};
        return true;
    case EL_SEL_ROW:
        if (!check_index(c, row, 0)) {
            return false;
        }
        *r = (el_region){row, 1, 0, b->cols};
        return true;
    case EL_SEL_COLUMN:
        if (!check_index(c, 0, col)) {
            return false;
        }
        *r = (el_region){0, b->rows, col, 1};
        return true;
    case EL_SEL_ALL:
        *r = (el_region){0, b->rows, 0, b->cols};
        return true;
    default: {
        el_text t;
        fail_begin(c, &t, EL_E_BAD_ARGUMENT);
        t_str(&t, "selection ");
        t_u64(&t, kind);
        t_str(&t, " unknown (0 device, 1 row, 2 column, 3 all)");
        return fail_end(c, &t);
    }
    }
}

/* BoardFirmware._region */
static bool region(el_cmd *c, el_region *r) {
    const uint8_t *p = take(c, 8);
    if (p == NULL) {
        return false;
    }
    uint32_t row0 = get_u16(p), rows = get_u16(p + 2), col0 = get_u16(p + 4), cols = get_u16(p + 6);
    if (rows < 1 || cols < 1 || row0 + rows > c->b->rows || col0 + cols > c->b->cols) {
        el_text t;
        fail_begin(c, &t, EL_E_BAD_ARGUMENT);
        t_str(&t, "region rows ");
        t_u64(&t, row0);
        t_byte(&t, '+');
        t_u64(&t, rows);
        t_str(&t, ", cols ");
        t_u64(&t, col0);
        t_byte(&t, '+');
        t_u64(&t, cols);
        t_outside_array(&t, c->b);
        return fail_end(c, &t);
    }
    *r = (el_region){row0, rows, col0, cols};
    return true;
}

/* BoardFirmware._check_pulses: `what` is written by the caller's prefix function */
static bool pulses_exceed(el_cmd *c, el_text *t, uint64_t total) {
    t_str(t, " = ");
    t_u64(t, total);
    t_str(t, " pulses exceed the board's limit of ");
    t_u64(t, c->b->max_pulses);
    t_str(t, " per command: split it");
    return fail_end(c, t);
}

static bool require_configured(el_cmd *c) {
    if (!c->b->configured) {
        return fail(c, EL_E_NOT_CONFIGURED, "configure the pulse (width, amplitude) before pulsing");
    }
    return true;
}

static bool pulse(el_cmd *c, const el_region *r, const int32_t *counts, int32_t uniform) {
    el_board *b = c->b;
    const char *error = "";
    int64_t n = b->hal.pulse(b->hal.ctx, b->configured_width_ns, b->configured_amplitude_mv, r->row0, r->nrows,
                             r->col0, r->ncols, counts, uniform, &error);
    if (n < 0) {
        return fail(c, EL_E_INTERNAL, error != NULL ? error : "");
    }
    put_u32(c->out, (uint32_t)n);
    return ok(c, 4);
}

static bool cmd_identify(el_cmd *c) {
    if (!done(c)) {
        return false;
    }
    el_board *b = c->b;
    uint8_t *o = c->out;
    o[0] = EL_PROTOCOL_VERSION;
    put_u16(o + 1, b->rows);
    put_u16(o + 3, b->cols);
    o[5] = b->dac_bits;
    o[6] = b->adc_bits;
    o[7] = EL_BOARD_READ_BITS;
    o[8] = EL_BOARD_N_COUNTERS;
    put_u32(o + 9, EL_MAX_PAYLOAD);
    put_u32(o + 13, b->max_pulses);
    put_u32(o + 17, b->lease_ms);
    o[21] = b->n_widths;
    size_t n = 22;
    for (int k = 0; k < (int)b->n_widths; k++) {
        put_u32(o + n, b->widths[k].width_ns);
        put_u16(o + n + 4, (uint16_t)b->widths[k].amplitude_low_mv);
        put_u16(o + n + 6, (uint16_t)b->widths[k].amplitude_high_mv);
        n += 8;
    }
    put_f64(o + n, b->read_offset_s);
    put_f64(o + n + 8, b->read_scale_s);
    n += 16;
    el_text t;
    t_begin(&t, o + n);
    t_bytes(&t, b->firmware, b->firmware_len);
    n += t_end(&t);
    t_begin(&t, o + n);
    t_bytes(&t, b->device_id, b->device_id_len);
    n += t_end(&t);
    return ok(c, n);
}

static bool cmd_configure(el_cmd *c) {
    const uint8_t *p = take(c, 6);
    if (p == NULL || !done(c)) {
        return false;
    }
    el_board *b = c->b;
    uint32_t width_ns = get_u32(p);
    int32_t amplitude_mv = get_i16(p + 4);
    int k = find_width(b, width_ns);
    el_text t;
    if (k < 0) {
        fail_begin(c, &t, EL_E_UNSUPPORTED);
        t_str(&t, "pulse width ");
        t_u64(&t, width_ns);
        t_str(&t, " ns not supported (board has ");
        for (int j = 0; j < (int)b->n_widths; j++) {
            if (j > 0) {
                t_str(&t, ", ");
            }
            t_u64(&t, b->widths[j].width_ns);
            t_str(&t, " ns");
        }
        t_byte(&t, ')');
        return fail_end(c, &t);
    }
    int32_t low = b->widths[k].amplitude_low_mv, high = b->widths[k].amplitude_high_mv;
    int32_t a = amplitude_mv < 0 ? -amplitude_mv : amplitude_mv;
    if (!(low <= a && a <= high)) {
        fail_begin(c, &t, EL_E_UNSUPPORTED);
        t_str(&t, "amplitude ");
        t_i64(&t, amplitude_mv);
        t_str(&t, " mV outside ");
        t_i64(&t, low);
        t_str(&t, "..");
        t_i64(&t, high);
        t_str(&t, " mV at ");
        t_u64(&t, width_ns);
        t_str(&t, " ns");
        return fail_end(c, &t);
    }
    b->configured = true;
    b->configured_width_ns = width_ns;
    b->configured_amplitude_mv = a;
    put_u32(c->out, width_ns);
    put_u16(c->out + 4, (uint16_t)a);
    return ok(c, 6);
}

static bool cmd_apply(el_cmd *c) {
    const uint8_t *p = take(c, 8);
    if (p == NULL || !done(c)) {
        return false;
    }
    uint32_t kind = p[0], row = get_u16(p + 1), col = get_u16(p + 3), count = get_u16(p + 6);
    int32_t polarity = get_i8(p[5]);
    el_text t;
    if (polarity != EL_UP && polarity != EL_DOWN) {
        fail_begin(c, &t, EL_E_BAD_ARGUMENT);
        t_str(&t, "polarity ");
        t_i64(&t, polarity);
        t_str(&t, ": expected +1 (up) or -1 (down)");
        return fail_end(c, &t);
    }
    el_region r;
    if (!selection(c, kind, row, col, &r)) {
        return false;
    }
    uint64_t devices = (uint64_t)r.nrows * r.ncols;
    uint64_t total = (uint64_t)count * devices;
    if (total > c->b->max_pulses) {
        fail_begin(c, &t, EL_E_BAD_ARGUMENT);
        t_u64(&t, count);
        t_str(&t, " pulses x ");
        t_u64(&t, devices);
        t_str(&t, " devices");
        return pulses_exceed(c, &t, total);
    }
    if (!require_configured(c)) {
        return false;
    }
    return pulse(c, &r, NULL, polarity * (int32_t)count);
}

/* np.round: half to even (exact for every double; |v| >= 2^52 is already an integer) */
static double round_half_even(double v) {
    const double two52 = 4503599627370496.0;
    if (!(v < two52 && v > -two52)) {
        return v;
    }
    if (v >= 0.0) {
        return (v + two52) - two52;
    }
    return -((-v + two52) - two52);
}

static bool cmd_read(el_cmd *c) {
    const uint8_t *p = take(c, 5);
    if (p == NULL || !done(c)) {
        return false;
    }
    el_board *b = c->b;
    el_region r;
    if (!selection(c, p[0], get_u16(p + 1), get_u16(p + 3), &r)) {
        return false;
    }
    uint64_t n = (uint64_t)r.nrows * r.ncols;
    if (n * 2u + 32u > EL_MAX_PAYLOAD) {
        el_text t;
        fail_begin(c, &t, EL_E_BAD_ARGUMENT);
        t_u64(&t, n);
        t_str(&t, " devices do not fit one frame: read by rows");
        return fail_end(c, &t);
    }
    b->hal.read(b->hal.ctx, r.row0, r.nrows, r.col0, r.ncols, b->w);
    uint8_t *o = c->out;
    put_f64(o, b->read_offset_s);
    put_f64(o + 8, b->read_scale_s);
    put_u16(o + 16, (uint32_t)n);
    for (size_t k = 0; k < (size_t)n; k++) {
        double q = round_half_even(b->w[k] / b->w_per_code);
        int32_t code;
        if (q >= 32767.0) {
            code = 32767;
        } else if (q <= -32768.0) {
            code = -32768;
        } else if (q == q) {
            code = (int32_t)q;
        } else {
            code = 0; /* NaN: numpy's cast is undefined; a device state is never NaN */
        }
        put_u16(o + 18 + 2 * k, (uint32_t)(uint16_t)code);
    }
    return ok(c, 18 + 2 * (size_t)n);
}

static bool cmd_mvm(el_cmd *c, bool transpose) {
    el_region r;
    if (!region(c, &r)) {
        return false;
    }
    el_board *b = c->b;
    uint32_t n_in = transpose ? r.nrows : r.ncols;
    uint32_t n_out = transpose ? r.ncols : r.nrows;
    const uint8_t *p = take_array(c, 2, n_in);
    if (p == NULL || !done(c)) {
        return false;
    }
    int64_t dac_max = (int64_t)((UINT64_C(1) << (b->dac_bits - 1)) - 1u);
    int64_t biggest = 0;
    for (uint32_t k = 0; k < n_in; k++) {
        int64_t v = get_i16(p + 2 * k);
        v = v < 0 ? -v : v;
        biggest = v > biggest ? v : biggest;
    }
    if (biggest > dac_max) {
        el_text t;
        fail_begin(c, &t, EL_E_BAD_ARGUMENT);
        t_str(&t, "input codes exceed the ");
        t_u64(&t, b->dac_bits);
        t_str(&t, "-bit DAC (|code| <= ");
        t_i64(&t, dac_max);
        t_str(&t, ")");
        return fail_end(c, &t);
    }
    double per_code = b->inp_bound / (double)dac_max;
    for (uint32_t k = 0; k < n_in; k++) {
        b->vec[k] = (double)get_i16(p + 2 * k) * per_code;
    }
    double scale = b->hal.mvm(b->hal.ctx, r.row0, r.nrows, r.col0, r.ncols, b->vec, transpose, b->codes);
    uint8_t *o = c->out;
    put_f64(o, scale);
    put_u16(o + 8, n_out);
    for (uint32_t k = 0; k < n_out; k++) {
        put_u16(o + 10 + 2 * k, (uint32_t)b->codes[k] & 0xFFFFu); /* astype("<i2"): the low 16 bits */
    }
    return ok(c, 10 + 2 * (size_t)n_out);
}

static bool cmd_update(el_cmd *c) {
    el_region r;
    if (!region(c, &r)) {
        return false;
    }
    el_board *b = c->b;
    uint64_t n = (uint64_t)r.nrows * r.ncols;
    const uint8_t *p = take_array(c, 1, n);
    if (p == NULL || !done(c)) {
        return false;
    }
    uint64_t total = 0;
    for (size_t k = 0; k < (size_t)n; k++) {
        int32_t v = get_i8(p[k]);
        total += (uint64_t)(v < 0 ? -v : v);
    }
    if (total > b->max_pulses) {
        el_text t;
        fail_begin(c, &t, EL_E_BAD_ARGUMENT);
        t_str(&t, "update");
        return pulses_exceed(c, &t, total);
    }
    if (!require_configured(c)) {
        return false;
    }
    for (size_t k = 0; k < (size_t)n; k++) { /* n <= the request's length <= EL_BOARD_MAX_REQUEST */
        b->counts[k] = get_i8(p[k]);
    }
    return pulse(c, &r, b->counts, 0);
}

static bool cmd_read_counters(el_cmd *c) {
    if (!done(c)) {
        return false;
    }
    int64_t counters[EL_BOARD_N_COUNTERS];
    c->b->hal.read_counters(c->b->hal.ctx, counters);
    c->out[0] = EL_BOARD_N_COUNTERS;
    for (int k = 0; k < EL_BOARD_N_COUNTERS; k++) {
        put_u64(c->out + 1 + 8 * k, (uint64_t)counters[k]);
    }
    return ok(c, 1 + 8 * EL_BOARD_N_COUNTERS);
}

static bool cmd_reset_counters(el_cmd *c) {
    if (!done(c)) {
        return false;
    }
    c->b->hal.reset_counters(c->b->hal.ctx);
    return ok(c, 0);
}

static bool cmd_close(el_cmd *c) {
    return done(c) && ok(c, 0); /* the release itself happens in el_board_handle, once the answer is cached */
}

static const char *const COMMAND_NAMES[] = {"", "identify", "configure-pulse", "apply-pulses", "read", "forward",
                                            "backward", "update", "read-counters", "reset-counters", "close"};

/* BoardFirmware._execute: the status; the body in c->out[0..c->out_len) */
static int execute(el_cmd *c, uint8_t command) {
    if (command < EL_CMD_IDENTIFY || command > EL_CMD_CLOSE) {
        el_text t;
        fail_begin(c, &t, EL_E_UNKNOWN_COMMAND);
        t_str(&t, "unknown command 0x");
        t_hex(&t, command, 2);
        fail_end(c, &t);
        return c->status;
    }
    c->what = COMMAND_NAMES[command];
    switch (command) {
    case EL_CMD_IDENTIFY:
        cmd_identify(c);
        break;
    case EL_CMD_CONFIGURE_PULSE:
        cmd_configure(c);
        break;
    case EL_CMD_APPLY_PULSES:
        cmd_apply(c);
        break;
    case EL_CMD_READ:
        cmd_read(c);
        break;
    case EL_CMD_FORWARD:
        cmd_mvm(c, false);
        break;
    case EL_CMD_BACKWARD:
        cmd_mvm(c, true);
        break;
    case EL_CMD_UPDATE:
        cmd_update(c);
        break;
    case EL_CMD_READ_COUNTERS:
        cmd_read_counters(c);
        break;
    case EL_CMD_RESET_COUNTERS:
        cmd_reset_counters(c);
        break;
    default:
        cmd_close(c);
        break;
    }
    return c->status;
}

/* ------------------------------------------------------------------------------------------------ the interpreter */

/* BoardFirmware._answer's header; the body is already at out + EL_HEADER_SIZE */
static size_t answer(const el_header *request, uint8_t status, size_t body_len, uint8_t *out) {
    el_header h = {EL_PROTOCOL_VERSION, request->session, request->seq, (uint8_t)(request->command | EL_RESPONSE),
                   status};
    el_header_pack(&h, out);
    return EL_HEADER_SIZE + body_len;
}

/* BoardFirmware._foreign_version: E_VERSION in the version-1 header layout, or no answer */
static size_t foreign_version(const uint8_t *payload, size_t n, uint8_t *out) {
    if (n < EL_V1_HEADER_SIZE) {
        return 0;
    }
    uint8_t version = payload[0], command = payload[3];
    if ((command & EL_RESPONSE) != 0) {
        return 0;
    }
    out[0] = EL_PROTOCOL_VERSION;
    out[1] = payload[1]; /* seq, u16 at offset 1 */
    out[2] = payload[2];
    out[3] = (uint8_t)(command | EL_RESPONSE);
    out[4] = EL_E_VERSION;
    el_text t;
    t_begin(&t, out + EL_V1_HEADER_SIZE);
    t_str(&t, "board speaks protocol 2, got ");
    t_u64(&t, version);
    return EL_V1_HEADER_SIZE + t_end(&t);
}

size_t el_board_handle(el_board *b, const uint8_t *payload, size_t n, int64_t now_us, uint8_t *out, size_t cap) {
    if (b == NULL || out == NULL || cap < EL_BOARD_MAX_RESPONSE || n == 0 || payload == NULL) {
        return 0;
    }
    if (payload[0] != EL_PROTOCOL_VERSION) {
        return foreign_version(payload, n, out);
    }
    el_header h;
    if (el_header_parse(payload, n, &h) < 0 || (h.command & EL_RESPONSE) != 0) {
        return 0;
    }
    if (n > EL_BOARD_MAX_REQUEST) { /* a request the cache cannot hold (never one a frame decoder delivers) */
        return 0;
    }
    uint8_t *body = out + EL_HEADER_SIZE;
    el_text t;
    if (b->owner >= 0 && (int32_t)h.session != b->owner &&
        sub64(now_us, b->owner_seen_us) < (int64_t)b->lease_ms * 1000) {
        b->busy++;
        t_begin(&t, body);
        t_str(&t, "in use by another host (session 0x");
        t_hex(&t, (uint32_t)b->owner, 4);
        t_str(&t, ", last request ");
        t_f1(&t, (double)sub64(now_us, b->owner_seen_us) / 1e6);
        t_str(&t, " s ago); free when that host closes its link or after ");
        t_lease_g(&t, b->lease_ms);
        t_str(&t, " s without requests");
        return answer(&h, EL_E_BUSY, t_end(&t), out);
    }
    if ((int32_t)h.session != b->owner) { /* the board is free (or the owner's lease ran out): this session takes it */
        b->owner = h.session;
        b->high_seq = -1;
        cache_clear(b);
    }
    b->owner_seen_us = now_us;
    b->last_session = h.session;
    b->last_seq = h.seq;
    const el_board_cache_entry *cached = cache_find(b, h.seq);
    if (cached != NULL) {
        if (cached->request_len == n && same_bytes(cached->request, payload, n)) {
            b->duplicates++;
            copy_bytes(out, cached->response, cached->response_len);
            return cached->response_len;
        }
        b->stale++;
        t_begin(&t, body);
        t_str(&t, "seq ");
        t_u64(&t, h.seq);
        t_str(&t, " was already used for another request of this session: not executed");
        return answer(&h, EL_E_STALE, t_end(&t), out);
    }
    if (b->high_seq >= 0) {
        uint32_t behind = ((uint32_t)b->high_seq - (uint32_t)h.seq) & 0xFFFFu;
        if (0 < behind && behind < 0x8000u) {
            b->stale++;
            t_begin(&t, body);
            t_str(&t, "request seq ");
            t_u64(&t, h.seq);
            t_str(&t, " is older than the last one executed (");
            t_u64(&t, (uint64_t)b->high_seq);
            t_str(&t, "): a late duplicate, not executed again");
            return answer(&h, EL_E_STALE, t_end(&t), out);
        }
    }
    el_cmd c = {b, payload + EL_HEADER_SIZE, n - EL_HEADER_SIZE, 0, "", body, 0, EL_OK};
    int status = execute(&c, h.command);
    if (status == EL_OK) {
        b->executed++;
    }
    size_t len = answer(&h, (uint8_t)status, c.out_len, out);
    cache_put(b, h.seq, payload, n, out, len);
    b->high_seq = h.seq;
    if (h.command == EL_CMD_CLOSE && status == EL_OK) {
        el_board_release(b, h.session);
    }
    return len;
}
