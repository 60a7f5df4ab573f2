/*
 * mcp.h - the MCP device SDK: the one public header.
 *
 * A sans-IO core for firmware that speaks the MCP serial frames (spec: serial-frames.md):
 * the application feeds it the bytes it receives and the time in milliseconds, and the core
 * hands the bytes to send to a write callback. No heap, no OS, no globals: every buffer lives
 * in the structs below, which the application allocates (statically, as a rule), sized by
 * the compile-time options that follow.
 *
 * Layers, each usable on its own:
 *   mcp_deframer_*  the `mcp` frame: byte stream -> frames, resynchronising as spec section 1
 *   mcp_encode_*    the `mcp` frame's bytes (header, cmd_id, u16 length, payload, XOR)
 *   mcp_crc16, mcp_ms720_* (MCP_MS720 = 1): the `ms720` frame (sync, length, msg_type, seq,
 *                   payload, CRC-16/CCITT-FALSE), its deframer and its reliable link
 *   mcp_device_*    the device: HELLO until HELLO_ACK, heartbeat PINGs, PONGs, READ/WRITE
 *                   through a key table, device commands through a handler table, STATUS
 *                   and LOG, NACKs; on the frame profile chosen at build time
 *
 * Time is a uint32_t count of milliseconds that may wrap: the core only ever subtracts.
 * Nothing in the core blocks, and nothing in it is re-entrant from an interrupt: call it from
 * the main loop (an RX interrupt fills a ring buffer; the loop feeds it to the core).
 */
#ifndef MCP_H
#define MCP_H

#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------ options
 * Give them with -D (or edit here). RAM of each, at the defaults, is in README.md. */

/* Largest command payload received or sent (spec: up to 256). Frames longer than this are
 * treated as invalid lengths by the deframers (the byte is dropped and scanning goes on),
 * so a small device never buffers more than it can use. RAM: about 1x (mcp), 2x + window
 * x 2 (ms720). */
#ifndef MCP_MAX_PAYLOAD
#define MCP_MAX_PAYLOAD 64
#endif

/* 1: the device speaks the `ms720` profile (CRC-16, seqs, link ACKs); 0: `mcp`. The ms720
 * code is compiled only when 1. */
#ifndef MCP_MS720
#define MCP_MS720 0
#endif

/* ms720: frames sent and not yet acknowledged (1 .. 32): 1 on a small MCU. Each costs a
 * frame buffer, MCP_MAX_PAYLOAD + 30 bytes of RAM. */
#ifndef MCP_MS720_WINDOW
#define MCP_MS720_WINDOW 4
#endif

/* ms720: frames received that wait to be delivered in order, or for a send slot to answer
 * them with (1 .. 32): as many as the other end may send at once (the gateway's
 * max_in_flight, the conformance kit's 8). A frame further ahead is not acknowledged, so it
 * is sent again. Each costs MCP_MAX_PAYLOAD + 16 bytes of RAM. */
#ifndef MCP_MS720_HOLD
#define MCP_MS720_HOLD 8
#endif

/* ms720: an unacknowledged frame is sent again after this long, up to this many times. */
#ifndef MCP_MS720_RETRANSMIT_MS
#define MCP_MS720_RETRANSMIT_MS 200
#endif
#ifndef MCP_MS720_RETRIES
#define MCP_MS720_RETRIES 3
#endif

/* An incomplete frame older than this is dropped, one byte at a time (spec section 1). */
#ifndef MCP_INTERFRAME_MS
#define MCP_INTERFRAME_MS 100
#endif

/* HELLO is repeated this often until HELLO_ACK (spec section 3: every second). */
#ifndef MCP_HELLO_RETRY_MS
#define MCP_HELLO_RETRY_MS 1000
#endif

#if MCP_MAX_PAYLOAD < 16 || MCP_MAX_PAYLOAD > 256
#error "MCP_MAX_PAYLOAD must be 16..256"
#endif
#if MCP_MS720_WINDOW < 1 || MCP_MS720_WINDOW > 32
#error "MCP_MS720_WINDOW must be 1..32"
#endif
#if MCP_MS720_HOLD < 1 || MCP_MS720_HOLD > 32
#error "MCP_MS720_HOLD must be 1..32"
#endif

/* ------------------------------------------------------------------ constants */

#define MCP_HEADER 0x5A
#define MCP_OVERHEAD 5 /* header, cmd_id, u16 length, checksum */
#define MCP_SPEC_MAX_PAYLOAD 256
#define MCP_FRAME_CAP (MCP_MAX_PAYLOAD + MCP_OVERHEAD)

enum mcp_cmd {
    MCP_HELLO = 0x01,
    MCP_HELLO_ACK = 0x81,
    MCP_PING = 0x02,
    MCP_PONG = 0x82,
    MCP_READ = 0x10,
    MCP_READ_RESP = 0x90,
    MCP_WRITE = 0x11,
    MCP_WRITE_ACK = 0x91,
    MCP_STATUS = 0x20,
    MCP_LOG = 0x21,
    MCP_NACK = 0x7F
};

/* NACK codes, and WRITE_ACK statuses other than 0 (spec section 3) */
enum mcp_nack_code {
    MCP_OK = 0,
    MCP_E_UNKNOWN_COMMAND = 1,
    MCP_E_BAD_PAYLOAD = 2,
    MCP_E_BUSY = 3,
    MCP_E_CHECKSUM = 4,
    MCP_E_NOT_REGISTERED = 5,
    MCP_E_DENIED = 6,
    MCP_E_INTERNAL = 7
};

/* What the sending functions return. */
enum mcp_result {
    MCP_SENT = 0,
    MCP_BUSY = -1,    /* ms720: every window slot waits for an ACK; try again later */
    MCP_TOO_BIG = -2  /* the payload exceeds MCP_MAX_PAYLOAD */
};

/* The port's writer: send these bytes on the line (all of them, in order). */
typedef void (*mcp_write_fn)(void *ctx, const uint8_t *data, size_t len);

/* ------------------------------------------------------------------ mcp frames */

/* XOR of n bytes, starting from `seed`. */
uint8_t mcp_xor(uint8_t seed, const uint8_t *data, size_t len);

/* Write an `mcp` frame's bytes into out (room for len + 5). Returns the frame's size, or 0
 * if len > 256. */
size_t mcp_encode(uint8_t *out, uint8_t cmd_id, const uint8_t *payload, size_t len);

/* The deframer's counters; bytes_in == framed_bytes + discarded_bytes + bytes buffered. */
typedef struct {
    uint32_t bytes_in;
    uint32_t frames;
    uint32_t framed_bytes;
    uint32_t discarded_bytes;
    uint32_t checksum_errors;
    uint32_t oversize_lengths; /* lengths above the limit (256, or MCP_MAX_PAYLOAD) */
    uint32_t stale_frames;     /* incomplete frames dropped by the inter-frame timeout */
} mcp_stats_t;

/* Called for each good frame, in stream order; payload is valid during the call only. */
typedef void (*mcp_frame_fn)(void *ctx, uint8_t cmd_id, const uint8_t *payload, uint16_t len);

/* An incremental `mcp` deframer. Rules (spec section 1): skip to a 0x5A; a length above
 * the limit drops that one byte; a complete frame with a bad XOR drops that one byte (the
 * real frame may start inside it); a good frame is emitted. Only one incomplete frame is
 * held; it is dropped, one byte at a time, once older than the inter-frame timeout (on the
 * next feed, or by mcp_deframer_expire), counted from the feed that first held it. */
typedef struct {
    uint8_t buf[MCP_FRAME_CAP];
    uint16_t len;
    uint16_t limit;  /* largest payload accepted: MCP_MAX_PAYLOAD */
    uint16_t timeout_ms;
    uint32_t since;  /* when the held incomplete frame was first seen */
    uint32_t last_rx;
    mcp_stats_t stats;
    mcp_frame_fn on_frame;
    void *ctx;
} mcp_deframer_t;

void mcp_deframer_init(mcp_deframer_t *d, mcp_frame_fn on_frame, void *ctx);
/* Feed received bytes (any split); good frames go to on_frame before this returns. */
void mcp_deframer_feed(mcp_deframer_t *d, const uint8_t *data, size_t len, uint32_t now);
/* Drop a held incomplete frame if it is stale at `now` (frames found behind it are emitted). */
void mcp_deframer_expire(mcp_deframer_t *d, uint32_t now);

/* ------------------------------------------------------------------ ms720 frames and link */

#define MCP_MS720_SYNC0 0x55
#define MCP_MS720_SYNC1 0xAA
#define MCP_MS720_HEADER 11 /* sync 4, length 2, msg_type 1, seq 4 */
#define MCP_MS720_OVERHEAD 13
/* A control/data payload: cmd_id, the request seq (responses and NACK), the command's payload */
#define MCP_MS720_MAX_PAYLOAD (MCP_MAX_PAYLOAD + 5)
#define MCP_MS720_FRAME_CAP (MCP_MS720_MAX_PAYLOAD + MCP_MS720_OVERHEAD)

enum mcp_msg_type { MCP_MSG_CONTROL = 1, MCP_MSG_DATA = 2, MCP_MSG_ACK = 3, MCP_MSG_NACK = 4 };

/* CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, xorout 0), continued from crc. */
uint16_t mcp_crc16(uint16_t crc, const uint8_t *data, size_t len);
#define MCP_CRC16_INIT 0xFFFFu

/* Write an `ms720` frame into out (room for len + 13). Returns its size. */
size_t mcp_ms720_encode(uint8_t *out, uint8_t msg_type, uint32_t seq, const uint8_t *payload,
                        size_t len);

#if MCP_MS720
/* Called for each good frame; and for a frame whose CRC failed but whose header could be
 * read (the link answers it with NACK). */
typedef void (*mcp_link_frame_fn)(void *ctx, uint8_t msg_type, uint32_t seq,
                                  const uint8_t *payload, uint16_t len);
typedef void (*mcp_bad_seq_fn)(void *ctx, uint32_t seq);

/* The `ms720` deframer: like mcp_deframer_t, resynchronising on the sync word 55 AA 55 AA
 * (a length above MCP_MS720_MAX_PAYLOAD or a CRC mismatch drops the sync's first byte). */
typedef struct {
    uint8_t buf[MCP_MS720_FRAME_CAP];
    uint16_t len;
    uint16_t limit;
    uint16_t timeout_ms;
    uint32_t since;
    uint32_t last_rx;
    mcp_stats_t stats;
    mcp_link_frame_fn on_frame;
    mcp_bad_seq_fn on_bad;
    void *ctx;
} mcp_ms720_deframer_t;

void mcp_ms720_deframer_init(mcp_ms720_deframer_t *d, mcp_link_frame_fn on_frame,
                             mcp_bad_seq_fn on_bad, void *ctx);
void mcp_ms720_deframer_feed(mcp_ms720_deframer_t *d, const uint8_t *data, size_t len,
                             uint32_t now);
void mcp_ms720_deframer_expire(mcp_ms720_deframer_t *d, uint32_t now);

/* What the link did (names as the gateway's link_* counters). */
typedef struct {
    uint32_t sent;
    uint32_t retransmits;
    uint32_t lost; /* given up after MCP_MS720_RETRIES */
    uint32_t acks_in;
    uint32_t acks_out;
    uint32_t nacks_in;
    uint32_t nacks_out;
    uint32_t duplicates;
    uint32_t reordered;    /* held because they overtook a missing frame */
    uint32_t gaps_skipped; /* seqs given up on (the sender stopped resending them) */
    uint32_t restarts;     /* the other end began a new sequence */
    uint32_t refused;      /* not acknowledged for want of room: the sender sends them again */
} mcp_link_stats_t;

typedef struct {
    uint8_t wire[MCP_MS720_FRAME_CAP];
    uint16_t size; /* 0: the slot is free */
    uint8_t tries;
    uint32_t seq;
    uint32_t due;
} mcp_tx_slot_t;

typedef struct {
    uint8_t payload[MCP_MS720_MAX_PAYLOAD];
    uint16_t len;
    uint8_t used;
    uint32_t seq;
    uint32_t arrived;
} mcp_rx_slot_t;

/* Called with each control/data frame's payload (cmd_id, then the rest), once and in seq
 * order. The link delivers only while a send slot is free, so the receiver can answer. */
typedef void (*mcp_deliver_fn)(void *ctx, uint32_t seq, const uint8_t *payload,
                               uint16_t len);

/* The reliable link (spec section 4), sans-IO. Receiving: every control/data frame taken
 * is acknowledged with an ACK of its seq; duplicates are acknowledged again and dropped;
 * frames are held (up to MCP_MS720_HOLD seqs ahead of the next expected one) and
 * delivered in seq order, each once a send slot is free to answer it with; a frame further
 * ahead is not acknowledged, so the sender sends it again. A held frame that waited longer
 * than the sender could keep resending the missing one skips the gap. A CRC failure with
 * a readable header is answered by NACK. Sending: a frame takes a window slot until its ACK;
 * it is sent again every MCP_MS720_RETRANSMIT_MS (at once on a NACK), MCP_MS720_RETRIES
 * times at most, then given up (counted in lost). */
typedef struct {
    mcp_ms720_deframer_t rx;
    mcp_link_stats_t stats;
    mcp_write_fn write;
    void *write_ctx;
    mcp_deliver_fn deliver;
    void *ctx;
    uint32_t now;
    uint32_t next_seq;
    uint32_t expected; /* the next seq to deliver, once have_expected */
    uint8_t have_expected;
    uint8_t have_nacked;
    uint32_t last_nacked;
    mcp_tx_slot_t tx[MCP_MS720_WINDOW];
    mcp_rx_slot_t held[MCP_MS720_HOLD];
    uint8_t refusing;     /* frames were refused for want of room since refused_at */
    uint32_t refused_at;
    uint32_t refused_seq; /* the nearest of them */
    mcp_tx_slot_t *out; /* the frame being built */
} mcp_link_t;

void mcp_link_init(mcp_link_t *link, mcp_write_fn write, void *write_ctx,
                   mcp_deliver_fn deliver, void *ctx, uint32_t first_seq);
void mcp_link_feed(mcp_link_t *link, const uint8_t *data, size_t len, uint32_t now);
void mcp_link_poll(mcp_link_t *link, uint32_t now);
/* Window slots free for sending. */
int mcp_link_free(const mcp_link_t *link);
/* Build a data frame in a free slot: begin (payload_len bytes will follow; NULL if no slot
 * is free), put the payload, end sends it. */
mcp_tx_slot_t *mcp_link_begin(mcp_link_t *link, uint16_t payload_len);
void mcp_link_put(mcp_link_t *link, const uint8_t *data, uint16_t len);
uint32_t mcp_link_end(mcp_link_t *link);
#endif

/* ------------------------------------------------------------------ the device */

/* Key value types (the profile's field types). Integers are little-endian on the wire. */
enum mcp_type {
    MCP_T_U8, MCP_T_U16, MCP_T_U32, MCP_T_I8, MCP_T_I16, MCP_T_I32, MCP_T_BOOL,
    MCP_T_UTF8, /* value: char[max + 1], kept NUL-terminated; length up to max bytes */
    MCP_T_BYTES /* value: uint8_t[max]; *length holds the current length */
};

enum mcp_access { MCP_RO = 0, MCP_RW = 1 };

/* One key of the READ/WRITE table the application declares (const, in flash). A WRITE
 * outside [min, max] (raw integers; for UTF8/BYTES, max is the largest length) answers
 * WRITE_ACK status 2; to a read-only key status 6; to an unknown key status 2. */
typedef struct {
    uint16_t id;
    uint8_t type;   /* enum mcp_type */
    uint8_t access; /* enum mcp_access */
    int32_t min;
    uint32_t max;   /* compared as the type's own signedness */
    void *value;    /* the application's variable of that type */
    uint8_t *length; /* MCP_T_BYTES only: its current length */
} mcp_key_t;

/* A device-specific command (0x30-0x6F). The handler reads req and writes its response
 * payload (at most MCP_MAX_PAYLOAD bytes) into resp, setting *resp_len; it returns 0 for a
 * response (cmd_id | 0x80) or a NACK code. */
typedef uint8_t (*mcp_command_fn)(void *ctx, uint8_t cmd_id, const uint8_t *req,
                                  uint16_t req_len, uint8_t *resp, uint16_t *resp_len);
typedef struct {
    uint8_t cmd_id;
    mcp_command_fn handler;
} mcp_command_t;

/* What the device tells the application. */
enum mcp_event {
    MCP_EV_REGISTERED = 1, /* arg: the node id (heartbeat in mcp_device_t.heartbeat_s) */
    MCP_EV_UNREGISTERED,   /* arg: 0; the gateway forgot us (NACK 5): HELLO again */
    MCP_EV_WRITTEN         /* arg: the key id whose value a WRITE just changed */
};
typedef void (*mcp_event_fn)(void *ctx, uint8_t event, uint16_t arg);

typedef struct {
    uint8_t uid[8];
    uint8_t fw[3];            /* major, minor, patch */
    const char *model;        /* ASCII, at most 32 bytes */
    const char *const *caps;  /* ASCII capability names */
    uint8_t caps_count;
    const mcp_key_t *keys;
    uint8_t keys_count;
    const mcp_command_t *commands;
    uint8_t commands_count;
    mcp_write_fn write;
    mcp_event_fn on_event;    /* may be NULL */
    void *ctx;                /* given to write, on_event and the command handlers */
    uint8_t send_hello;       /* 0: never registers (known by its port only) */
    uint32_t first_seq;       /* ms720: the first seq sent (differ from boot to boot) */
} mcp_device_config_t;

typedef struct {
    const mcp_device_config_t *cfg;
    uint8_t registered;
    uint16_t node_id;
    uint16_t heartbeat_s;
    uint8_t hello_due;  /* a HELLO waits to be sent (no window slot free yet) */
    uint8_t ping_due;
    uint32_t next_hello;
    uint32_t next_ping;
    uint32_t now;
    uint32_t booted;
    /* the frame being answered: its ms720 seq (tagged into the response) */
    uint32_t request_seq;
#if MCP_MS720
    mcp_link_t link;
#else
    mcp_deframer_t rx;
#endif
} mcp_device_t;

/* Start the device at time now. It sends its first HELLO on the first poll. */
void mcp_device_init(mcp_device_t *dev, const mcp_device_config_t *cfg, uint32_t now);
/* Received bytes. */
void mcp_device_feed(mcp_device_t *dev, const uint8_t *data, size_t len, uint32_t now);
/* Run the timers (HELLO repeats, heartbeat, ms720 retransmissions, stale partial frames):
 * call it every loop, or at least every few ms. */
void mcp_device_poll(mcp_device_t *dev, uint32_t now);
/* True while a send would go out now (always on mcp; ms720: a window slot is free). */
int mcp_device_can_send(const mcp_device_t *dev);
/* Send an unsolicited frame (STATUS, LOG, or a profile's event): enum mcp_result. */
int mcp_device_send(mcp_device_t *dev, uint8_t cmd_id, const uint8_t *payload, uint16_t len);
int mcp_device_status(mcp_device_t *dev, const uint8_t *payload, uint16_t len);
/* A LOG frame: level 0 debug .. 4 error, UTF-8 text (cut to MCP_MAX_PAYLOAD - 1 bytes). */
int mcp_device_log(mcp_device_t *dev, uint8_t level, const char *text);
/* The deframer's counters. */
const mcp_stats_t *mcp_device_stats(const mcp_device_t *dev);

/* Little-endian helpers for payloads. */
void mcp_put_u16(uint8_t *p, uint16_t v);
void mcp_put_u32(uint8_t *p, uint32_t v);
uint16_t mcp_get_u16(const uint8_t *p);
uint32_t mcp_get_u32(const uint8_t *p);

#endif
