/* The board link protocol, version 2 (docs/protocol.md): a portable C11 port of firmware_model/protocol.py.
 *
 * Byte-exact with the Python codec: CRC-16/CCITT-FALSE, COBS, frame encoding
 * (0x00 || COBS(payload || crc16 LE) || 0x00 0x00), the streaming frame decoder, the 7-byte message header and the
 * NAK payload. Freestanding: only <stdint.h>, <stddef.h> and <stdbool.h>; no heap, no libc calls. Every output goes
 * into a caller-provided buffer whose capacity is passed in; functions that produce bytes return their length, or a
 * negative EL_ERR_* code (and then the output buffer's contents are unspecified).
 */
#ifndef EL_PROTOCOL_H
#define EL_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------------ sizes */
#define EL_PROTOCOL_VERSION 2
#define EL_HEADER_SIZE 7     /* "<BHHBB": version, session, seq, command, status */
#define EL_V1_HEADER_SIZE 5  /* "<BHBB": version, seq, command, status (how a foreign version is answered) */
#define EL_MAX_PAYLOAD 16384 /* bytes of payload (header + body) in one frame, either direction */
#define EL_CRC_SIZE 2
/* the most a receiver buffers between delimiters: payload + CRC + COBS overhead (delimiters not counted) */
#define EL_MAX_FRAME (EL_MAX_PAYLOAD + 2 + EL_MAX_PAYLOAD / 254 + 2)
#define EL_RESPONSE 0x80
#define EL_NAK_BODY_SIZE 4 /* "<HH": session, seq of the last request received intact */
#define EL_NAK_SIZE (EL_HEADER_SIZE + EL_NAK_BODY_SIZE)

/* the longest COBS encoding of n bytes (a code byte per 254 bytes, plus the closing block) */
#define EL_COBS_MAX_ENCODED(n) ((n) + (n) / 254 + 1)
/* the longest wire frame for a payload of n bytes: 1 leading delimiter, COBS(payload || CRC), 2 closing delimiters */
#define EL_FRAME_MAX_WIRE(n) (1 + EL_COBS_MAX_ENCODED((n) + EL_CRC_SIZE) + 2)
#define EL_FRAME_BUFFER_SIZE EL_FRAME_MAX_WIRE(EL_MAX_PAYLOAD) /* enough for any frame el_encode_frame accepts */
/* the longest payload the frame decoder can yield: a MAX_FRAME run decodes to at most MAX_FRAME - 1 bytes, CRC
 * included. Like the Python FrameDecoder, the decoder does not enforce MAX_PAYLOAD on what it receives. */
#define EL_DECODER_MAX_PAYLOAD (EL_MAX_FRAME - 1 - EL_CRC_SIZE)

/* ------------------------------------------------------------------------------------------------ commands */
#define EL_CMD_IDENTIFY 0x01
#define EL_CMD_CONFIGURE_PULSE 0x02
#define EL_CMD_APPLY_PULSES 0x03
#define EL_CMD_READ 0x04
#define EL_CMD_FORWARD 0x05
#define EL_CMD_BACKWARD 0x06
#define EL_CMD_UPDATE 0x07
#define EL_CMD_READ_COUNTERS 0x08
#define EL_CMD_RESET_COUNTERS 0x09
#define EL_CMD_CLOSE 0x0A

/* ------------------------------------------------------------------------------------------------ status codes */
#define EL_OK 0
#define EL_E_UNKNOWN_COMMAND 1
#define EL_E_BAD_LENGTH 2
#define EL_E_BAD_ARGUMENT 3
#define EL_E_UNSUPPORTED 4
#define EL_E_VERSION 5
#define EL_E_NOT_CONFIGURED 6
#define EL_E_INTERNAL 7
#define EL_E_BAD_FRAME 8 /* NAK: a received frame failed COBS or CRC (sent with session 0, seq 0, command 0x80) */
#define EL_E_BUSY 9
#define EL_E_STALE 10

/* selections (APPLY_PULSES, READ) and pulse polarity */
#define EL_SEL_DEVICE 0
#define EL_SEL_ROW 1
#define EL_SEL_COLUMN 2
#define EL_SEL_ALL 3
#define EL_UP 1
#define EL_DOWN (-1)

/* ------------------------------------------------------------------------------------------------ error codes */
#define EL_ERR_CAPACITY (-1)     /* the output buffer is too small */
#define EL_ERR_COBS_ZERO (-2)    /* a zero byte inside a COBS frame */
#define EL_ERR_COBS_OVERRUN (-3) /* a COBS code runs past the end of the frame */
#define EL_ERR_TOO_LONG (-4)     /* a payload longer than EL_MAX_PAYLOAD (el_encode_frame) */
#define EL_ERR_SHORT (-5)        /* a decoded frame shorter than 3 bytes (a version byte and the CRC) */
#define EL_ERR_CRC (-6)          /* the CRC does not match */
#define EL_ERR_OVERFLOW (-7)     /* a run of more than max_frame bytes without a delimiter */
#define EL_ERR_VERSION (-8)      /* el_header_parse: the first byte is not EL_PROTOCOL_VERSION */
#define EL_ERR_SHORT_HEADER (-9) /* el_header_parse: fewer than EL_HEADER_SIZE bytes */
#define EL_ERR_ARGUMENT (-10)    /* a NULL pointer with a non-zero length, or a bad parameter */

/* ------------------------------------------------------------------------------------------------ CRC and COBS */

/* CRC-16/CCITT-FALSE: polynomial 0x1021, initial 0xFFFF, no reflection, no final xor (el_crc16("123456789") ==
 * 0x29B1). el_crc16_update continues a running CRC (start from 0xFFFF). */
uint16_t el_crc16(const uint8_t *data, size_t n);
uint16_t el_crc16_update(uint16_t crc, const uint8_t *data, size_t n);

/* COBS encode n bytes into out (no zero byte in the output; EL_COBS_MAX_ENCODED(n) bytes always suffice). out must
 * not overlap data. Returns the encoded length or EL_ERR_CAPACITY / EL_ERR_ARGUMENT. */
ptrdiff_t el_cobs_encode(const uint8_t *data, size_t n, uint8_t *out, size_t out_capacity);

/* Inverse of el_cobs_encode, accepting exactly what protocol.cobs_decode accepts. Returns the decoded length (at
 * most n - 1 for n > 0) or EL_ERR_COBS_ZERO / EL_ERR_COBS_OVERRUN (the same checks in the same order as the Python),
 * EL_ERR_CAPACITY or EL_ERR_ARGUMENT. out may be the same buffer as data (decoding in place); any other overlap is
 * not allowed. */
ptrdiff_t el_cobs_decode(const uint8_t *data, size_t n, uint8_t *out, size_t out_capacity);

/* ------------------------------------------------------------------------------------------------ frames */

/* 0x00 || COBS(payload || crc16(payload) LE) || 0x00 0x00, exactly as protocol.encode_frame. Returns the frame's
 * length or EL_ERR_TOO_LONG (n > EL_MAX_PAYLOAD), EL_ERR_CAPACITY, EL_ERR_ARGUMENT. EL_FRAME_MAX_WIRE(n) bytes of
 * output always suffice. */
ptrdiff_t el_encode_frame(const uint8_t *payload, size_t n, uint8_t *out, size_t out_capacity);

/* The streaming frame decoder (protocol.FrameDecoder): bytes are fed one at a time; the stream is split at each 0x00.
 * A run between delimiters is discarded (and counted in `rejected`) when it exceeds max_frame bytes, when COBS
 * decoding fails, when it decodes to fewer than 3 bytes or when the CRC does not match; an empty run (delimiters in a
 * row) is an idle line and counts nothing. The decoder resynchronises on the next 0x00 after any of these. */
typedef struct {
    uint8_t buf[EL_MAX_FRAME]; /* the current run (decoded in place when it ends) */
    size_t len;                /* bytes of the current run held in buf */
    size_t max_frame;          /* longest run accepted (<= EL_MAX_FRAME) */
    bool overflow;             /* the current run exceeded max_frame: it is skipped up to the next delimiter */
    uint32_t accepted;         /* frames that passed (wrap around at 2^32) */
    uint32_t rejected;         /* frames discarded */
} el_frame_decoder;

/* Ready for a fresh stream, with max_frame = EL_MAX_FRAME. */
void el_decoder_init(el_frame_decoder *dec);
/* The same with another run limit (0..EL_MAX_FRAME); EL_ERR_ARGUMENT (decoder untouched) for a larger one. */
int el_decoder_init_limit(el_frame_decoder *dec, size_t max_frame);

/* Feed one byte. Returns the payload's length (> 0: a valid frame always carries at least one byte) when this byte
 * ends a valid frame, the payload (without CRC) then being in out_payload; 0 when more bytes are needed (also for an
 * idle delimiter); a negative EL_ERR_* code when this byte ends a frame that was discarded: EL_ERR_OVERFLOW,
 * EL_ERR_COBS_OVERRUN, EL_ERR_SHORT, EL_ERR_CRC; also EL_ERR_CAPACITY for a valid frame whose payload does not fit
 * out_capacity (counted in `rejected`: it is lost; EL_DECODER_MAX_PAYLOAD bytes always suffice). */
ptrdiff_t el_decoder_feed_byte(el_frame_decoder *dec, uint8_t byte, uint8_t *out_payload, size_t out_capacity);

/* Feed up to n bytes: stops after the first byte for which el_decoder_feed_byte returns non-zero and returns that
 * result, or returns 0 when all n bytes were consumed without one. *consumed (may be NULL) gets the number of bytes
 * used. Call again with the rest of the data to go on. */
ptrdiff_t el_decoder_feed(el_frame_decoder *dec, const uint8_t *data, size_t n, uint8_t *out_payload,
                          size_t out_capacity, size_t *consumed);

/* ------------------------------------------------------------------------------------------------ messages */

typedef struct {
    uint8_t version;
    uint16_t session;
    uint16_t seq;
    uint8_t command;
    uint8_t status;
} el_header;

/* HEADER.pack: 7 bytes, little-endian. Returns EL_HEADER_SIZE. */
size_t el_header_pack(const el_header *h, uint8_t out[EL_HEADER_SIZE]);

/* parse_message's header checks: EL_ERR_VERSION when n >= 1 and payload[0] != EL_PROTOCOL_VERSION (checked first),
 * EL_ERR_SHORT_HEADER when n < EL_HEADER_SIZE; otherwise fills *h and returns EL_HEADER_SIZE (the body's offset). */
ptrdiff_t el_header_parse(const uint8_t *payload, size_t n, el_header *h);

/* The NAK payload (protocol.nak): header (version 2, session 0, seq 0, command 0x80, E_BAD_FRAME) and the body
 * "<HH" session, seq of the last request received intact. Returns EL_NAK_SIZE. */
size_t el_nak(uint16_t session, uint16_t seq, uint8_t out[EL_NAK_SIZE]);

/* ------------------------------------------------------------------------------------------------ introspection */

/* The constants above by their protocol.py names (PROTOCOL_VERSION, MAX_PAYLOAD, MAX_FRAME, HEADER_SIZE, IDENTIFY,
 * ..., E_STALE), so a host can check them against the Python definitions. Returns the table's length. */
typedef struct {
    const char *name;
    int32_t value;
} el_named_constant;
size_t el_protocol_constants(const el_named_constant **table);
/* sizeof(el_frame_decoder), so a binding can check its mirror of the struct. */
size_t el_decoder_size(void);

#ifdef __cplusplus
}
#endif

#endif /* EL_PROTOCOL_H */
