/* The board link protocol, version 2: see el_protocol.h and docs/protocol.md. Byte-exact with
 * firmware_model/protocol.py (tests/test_firmware_c_protocol.py compares the two). Freestanding: no libc. */
#include "el_protocol.h"

/* ------------------------------------------------------------------------------------------------ CRC */

static const uint16_t crc_table[256] = {
    0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50A5, 0x60C6, 0x70E7,
    0x8108, 0x9129, 0xA14A, 0xB16B, 0xC18C, 0xD1AD, 0xE1CE, 0xF1EF,
    0x1231, 0x0210, 0x3273, 0x2252, 0x52B5, 0x4294, 0x72F7, 0x62D6,
    0x9339, 0x8318, 0xB37B, 0xA35A, 0xD3BD, 0xC39C, 0xF3FF, 0xE3DE,
    0x2462, 0x3443, 0x0420, 0x1401, 0x64E6, 0x74C7, 0x44A4, 0x5485,
    0xA56A, 0xB54B, 0x8528, 0x9509, 0xE5EE, 0xF5CF, 0xC5AC, 0xD58D,
    0x3653, 0x2672, 0x1611, 0x0630, 0x76D7, 0x66F6, 0x5695, 0x46B4,
    0xB75B, 0xA77A, 0x9719, 0x8738, 0xF7DF, 0xE7FE, 0xD79D, 0xC7BC,
    0x48C4, 0x58E5, 0x6886, 0x78A7, 0x0840, 0x1861, 0x2802, 0x3823,
    0xC9CC, 0xD9ED, 0xE98E, 0xF9AF, 0x8948, 0x9969, 0xA90A, 0xB92B,
    0x5AF5, 0x4AD4, 0x7AB7, 0x6A96, 0x1A71, 0x0A50, 0x3A33, 0x2A12,
    0xDBFD, 0xCBDC, 0xFBBF, 0xEB9E, 0x9B79, 0x8B58, 0xBB3B, 0xAB1A,
    0x6CA6, 0x7C87, 0x4CE4, 0x5CC5, 0x2C22, 0x3C03, 0x0C60, 0x1C41,
    0xEDAE, 0xFD8F, 0xCDEC, 0xDDCD, 0xAD2A, 0xBD0B, 0x8D68, 0x9D49,
    0x7E97, 0x6EB6, 0x5ED5, 0x4EF4, 0x3E13, 0x2E32, 0x1E51, 0x0E70,
    0xFF9F, 0xEFBE, 0xDFDD, 0xCFFC, 0xBF1B, 0xAF3A, 0x9F59, 0x8F78,
    0x9188, 0x81A9, 0xB1CA, 0xA1EB, 0xD10C, 0xC12D, 0xF14E, 0xE16F,
    0x1080, 0x00A1, 0x30C2, 0x20E3, 0x5004, 0x4025, 0x7046, 0x6067,
    0x83B9, 0x9398, 0xA3FB, 0xB3DA, 0xC33D, 0xD31C, 0xE37F, 0xF35E,
    0x02B1, 0x1290, 0x22F3, 0x32D2, 0x4235, 0x5214, 0x6277, 0x7256,
    0xB5EA, 0xA5CB, 0x95A8, 0x8589, 0xF56E, 0xE54F, 0xD52C, 0xC50D,
    0x34E2, 0x24C3, 0x14A0, 0x0481, 0x7466, 0x6447, 0x5424, 0x4405,
    0xA7DB, 0xB7FA, 0x8799, 0x97B8, 0xE75F, 0xF77E, 0xC71D, 0xD73C,
    0x26D3, 0x36F2, 0x0691, 0x16B0, 0x6657, 0x7676, 0x4615, 0x5634,
    0xD94C, 0xC96D, 0xF90E, 0xE92F, 0x99C8, 0x89E9, 0xB98A, 0xA9AB,
    0x5844, 0x4865, 0x7806, 0x6827, 0x18C0, 0x08E1, 0x3882, 0x28A3,
    0xCB7D, 0xDB5C, 0xEB3F, 0xFB1E, 0x8BF9, 0x9BD8, 0xABBB, 0xBB9A,
    0x4A75, 0x5A54, 0x6A37, 0x7A16, 0x0AF1, 0x1AD0, 0x2AB3, 0x3A92,
    0xFD2E, 0xED0F, 0xDD6C, 0xCD4D, 0xBDAA, 0xAD8B, 0x9DE8, 0x8DC9,
    0x7C26, 0x6C07, 0x5C64, 0x4C45, 0x3CA2, 0x2C83, 0x1CE0, 0x0CC1,
    0xEF1F, 0xFF3E, 0xCF5D, 0xDF7C, 0xAF9B, 0xBFBA, 0x8FD9, 0x9FF8,
    0x6E17, 0x7E36, 0x4E55, 0x5E74, 0x2E93, 0x3EB2, 0x0ED1, 0x1EF0
};

uint16_t el_crc16_update(uint16_t crc, const uint8_t *data, size_t n)
{
    if (data == NULL)
        return crc;
    for (size_t i = 0; i < n; i++)
        crc = (uint16_t)((uint16_t)(crc << 8) ^ crc_table[((crc >> 8) ^ data[i]) & 0xFFu]);
    return crc;
}

uint16_t el_crc16(const uint8_t *data, size_t n)
{
    return el_crc16_update(0xFFFFu, data, n);
}

/* ------------------------------------------------------------------------------------------------ COBS */

/* COBS over the concatenation a || b (so a frame's payload and CRC need no joint buffer). A block is a code byte
 * (1 + the non-zero bytes that follow, at most 254) standing for those bytes and, unless the code is 255, one zero.
 * As protocol.cobs_encode: a full 254-byte block is followed by a new block even at the end of the data (which then
 * closes with code 1), and a trailing zero is followed by an empty closing block. */
static ptrdiff_t cobs_encode2(const uint8_t *a, size_t na, const uint8_t *b, size_t nb, uint8_t *out, size_t cap)
{
    size_t o = 0;
    size_t code_pos;
    uint8_t code = 1;
    if (out == NULL || (a == NULL && na != 0) || (b == NULL && nb != 0))
        return EL_ERR_ARGUMENT;
    if (cap == 0)
        return EL_ERR_CAPACITY;
    code_pos = o++;
    for (size_t i = 0; i < na + nb; i++) {
        uint8_t byte = i < na ? a[i] : b[i - na];
        if (byte == 0) {
            out[code_pos] = code;
            code = 1;
            if (o >= cap)
                return EL_ERR_CAPACITY;
            code_pos = o++;
        } else {
            if (o >= cap)
                return EL_ERR_CAPACITY;
            out[o++] = byte;
            code++;
            if (code == 255) {
                out[code_pos] = code;
                code = 1;
                if (o >= cap)
                    return EL_ERR_CAPACITY;
                code_pos = o++;
            }
        }
    }
    out[code_pos] = code;
    return (ptrdiff_t)o;
}

ptrdiff_t el_cobs_encode(const uint8_t *data, size_t n, uint8_t *out, size_t out_capacity)
{
    return cobs_encode2(data, n, NULL, 0, out, out_capacity);
}

ptrdiff_t el_cobs_decode(const uint8_t *data, size_t n, uint8_t *out, size_t out_capacity)
{
    size_t k = 0;
    size_t o = 0;
    if ((data == NULL || out == NULL) && n != 0)
        return EL_ERR_ARGUMENT;
    /* in place (out == data) is safe: o <= k at each block's start, and o < i for each byte i copied */
    while (k < n) {
        uint8_t code = data[k];
        size_t end;
        if (code == 0)
            return EL_ERR_COBS_ZERO;
        end = k + code;
        if (end > n)
            return EL_ERR_COBS_OVERRUN;
        for (size_t i = k + 1; i < end; i++)
            if (data[i] == 0)
                return EL_ERR_COBS_ZERO;
        if (end - (k + 1) > out_capacity - o)
            return EL_ERR_CAPACITY;
        for (size_t i = k + 1; i < end; i++)
            out[o++] = data[i];
        k = end;
        if (code < 255 && k < n) {
            if (o >= out_capacity)
                return EL_ERR_CAPACITY;
            out[o++] = 0;
        }
    }
    return (ptrdiff_t)o;
}

/* ------------------------------------------------------------------------------------------------ frames */

ptrdiff_t el_encode_frame(const uint8_t *payload, size_t n, uint8_t *out, size_t out_capacity)
{
    uint16_t crc;
    uint8_t tail[EL_CRC_SIZE];
    ptrdiff_t m;
    if (out == NULL || (payload == NULL && n != 0))
        return EL_ERR_ARGUMENT;
    if (n > EL_MAX_PAYLOAD)
        return EL_ERR_TOO_LONG;
    if (out_capacity < 4)
        return EL_ERR_CAPACITY;
    crc = el_crc16(payload, n);
    tail[0] = (uint8_t)(crc & 0xFFu);
    tail[1] = (uint8_t)(crc >> 8);
    /* a leading delimiter cuts off line noise; two closing ones end the frame even if the cable loses one */
    out[0] = 0;
    m = cobs_encode2(payload, n, tail, EL_CRC_SIZE, out + 1, out_capacity - 3);
    if (m < 0)
        return m;
    out[1 + m] = 0;
    out[2 + m] = 0;
    return m + 3;
}

int el_decoder_init_limit(el_frame_decoder *dec, size_t max_frame)
{
    if (dec == NULL || max_frame > EL_MAX_FRAME)
        return EL_ERR_ARGUMENT;
    dec->len = 0;
    dec->max_frame = max_frame;
    dec->overflow = false;
    dec->accepted = 0;
    dec->rejected = 0;
    return 0;
}

void el_decoder_init(el_frame_decoder *dec)
{
    (void)el_decoder_init_limit(dec, EL_MAX_FRAME);
}

/* A delimiter ends the current run: FrameDecoder._finish. */
static ptrdiff_t decoder_finish(el_frame_decoder *dec, uint8_t *out_payload, size_t out_capacity)
{
    size_t len = dec->len;
    bool overflow = dec->overflow;
    ptrdiff_t m;
    size_t payload_len;
    dec->len = 0;
    dec->overflow = false;
    if (overflow) {
        dec->rejected++;
        return EL_ERR_OVERFLOW;
    }
    if (len == 0)
        return 0; /* back-to-back delimiters: idle line, not an error */
    m = el_cobs_decode(dec->buf, len, dec->buf, sizeof dec->buf);
    if (m < 0) {
        dec->rejected++;
        return m;
    }
    if (m < 3) {
        dec->rejected++;
        return EL_ERR_SHORT;
    }
    payload_len = (size_t)m - EL_CRC_SIZE;
    if (el_crc16(dec->buf, payload_len) !=
        (uint16_t)(dec->buf[payload_len] | (uint16_t)(dec->buf[payload_len + 1] << 8))) {
        dec->rejected++;
        return EL_ERR_CRC;
    }
    if (out_payload == NULL || payload_len > out_capacity) {
        dec->rejected++;
        return EL_ERR_CAPACITY;
    }
    for (size_t i = 0; i < payload_len; i++)
        out_payload[i] = dec->buf[i];
    dec->accepted++;
    return (ptrdiff_t)payload_len;
}

ptrdiff_t el_decoder_feed_byte(el_frame_decoder *dec, uint8_t byte, uint8_t *out_payload, size_t out_capacity)
{
    if (dec == NULL)
        return EL_ERR_ARGUMENT;
    if (byte == 0)
        return decoder_finish(dec, out_payload, out_capacity);
    if (!dec->overflow) {
        if (dec->len >= dec->max_frame) { /* this byte makes the run longer than max_frame: drop it all */
            dec->len = 0;
            dec->overflow = true;
        } else {
            dec->buf[dec->len++] = byte;
        }
    }
    return 0;
}

ptrdiff_t el_decoder_feed(el_frame_decoder *dec, const uint8_t *data, size_t n, uint8_t *out_payload,
                          size_t out_capacity, size_t *consumed)
{
    if (consumed != NULL)
        *consumed = 0;
    if (dec == NULL || (data == NULL && n != 0))
        return EL_ERR_ARGUMENT;
    for (size_t i = 0; i < n; i++) {
        ptrdiff_t r = el_decoder_feed_byte(dec, data[i], out_payload, out_capacity);
        if (r != 0) {
            if (consumed != NULL)
                *consumed = i + 1;
            return r;
        }
    }
    if (consumed != NULL)
        *consumed = n;
    return 0;
}

/* ------------------------------------------------------------------------------------------------ messages */

static void put_u16(uint8_t *out, uint16_t v)
{
    out[0] = (uint8_t)(v & 0xFFu);
    out[1] = (uint8_t)(v >> 8);
}

static uint16_t get_u16(const uint8_t *in)
{
    return (uint16_t)(in[0] | (uint16_t)(in[1] << 8));
}

size_t el_header_pack(const el_header *h, uint8_t out[EL_HEADER_SIZE])
{
    out[0] = h->version;
    put_u16(out + 1, h->session);
    put_u16(out + 3, h->seq);
    out[5] = h->command;
    out[6] = h->status;
    return EL_HEADER_SIZE;
}

ptrdiff_t el_header_parse(const uint8_t *payload, size_t n, el_header *h)
{
    if ((payload == NULL && n != 0) || h == NULL)
        return EL_ERR_ARGUMENT;
    if (n >= 1 && payload[0] != EL_PROTOCOL_VERSION)
        return EL_ERR_VERSION;
    if (n < EL_HEADER_SIZE)
        return EL_ERR_SHORT_HEADER;
    h->version = payload[0];
    h->session = get_u16(payload + 1);
    h->seq = get_u16(payload + 3);
    h->command = payload[5];
    h->status = payload[6];
    return EL_HEADER_SIZE;
}

size_t el_nak(uint16_t session, uint16_t seq, uint8_t out[EL_NAK_SIZE])
{
    el_header h = {EL_PROTOCOL_VERSION, 0, 0, EL_RESPONSE, EL_E_BAD_FRAME};
    el_header_pack(&h, out);
    put_u16(out + EL_HEADER_SIZE, session);
    put_u16(out + EL_HEADER_SIZE + 2, seq);
    return EL_NAK_SIZE;
}

/* ------------------------------------------------------------------------------------------------ introspection */

static const el_named_constant constants[] = {
    {"PROTOCOL_VERSION", EL_PROTOCOL_VERSION},
    {"HEADER_SIZE", EL_HEADER_SIZE},
    {"V1_HEADER_SIZE", EL_V1_HEADER_SIZE},
    {"MAX_PAYLOAD", EL_MAX_PAYLOAD},
    {"MAX_FRAME", EL_MAX_FRAME},
    {"RESPONSE", EL_RESPONSE},
    {"NAK_SIZE", EL_NAK_SIZE},
    {"IDENTIFY", EL_CMD_IDENTIFY},
    {"CONFIGURE_PULSE", EL_CMD_CONFIGURE_PULSE},
    {"APPLY_PULSES", EL_CMD_APPLY_PULSES},
    {"READ", EL_CMD_READ},
    {"FORWARD", EL_CMD_FORWARD},
    {"BACKWARD", EL_CMD_BACKWARD},
    {"UPDATE", EL_CMD_UPDATE},
    {"READ_COUNTERS", EL_CMD_READ_COUNTERS},
    {"RESET_COUNTERS", EL_CMD_RESET_COUNTERS},
    {"CLOSE", EL_CMD_CLOSE},
    {"OK", EL_OK},
    {"E_UNKNOWN_COMMAND", EL_E_UNKNOWN_COMMAND},
    {"E_BAD_LENGTH", EL_E_BAD_LENGTH},
    {"E_BAD_ARGUMENT", EL_E_BAD_ARGUMENT},
    {"E_UNSUPPORTED", EL_E_UNSUPPORTED},
    {"E_VERSION", EL_E_VERSION},
    {"E_NOT_CONFIGURED", EL_E_NOT_CONFIGURED},
    {"E_INTERNAL", EL_E_INTERNAL},
    {"E_BAD_FRAME", EL_E_BAD_FRAME},
    {"E_BUSY", EL_E_BUSY},
    {"E_STALE", EL_E_STALE},
    {"SEL_DEVICE", EL_SEL_DEVICE},
    {"SEL_ROW", EL_SEL_ROW},
    {"SEL_COLUMN", EL_SEL_COLUMN},
    {"SEL_ALL", EL_SEL_ALL},
    {"UP", EL_UP},
    {"DOWN", EL_DOWN},
};

size_t el_protocol_constants(const el_named_constant **table)
{
    if (table != NULL)
        *table = constants;
    return sizeof constants / sizeof constants[0];
}

size_t el_decoder_size(void)
{
    return sizeof(el_frame_decoder);
}
