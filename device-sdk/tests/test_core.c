/* test_core.c - host unit tests of the SDK core: codec, deframer, link and device.
 * Built once per frame profile (MCP_MS720 = 0 and 1); prints "N passed, N failed". */
#include <stdio.h>
#include <string.h>

#include "mcp.h"

static int passed, failed, current_failed;

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            printf("    %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);              \
            current_failed = 1;                                                            \
        }                                                                                  \
    } while (0)
#define CHECK_EQ(a, b)                                                                     \
    do {                                                                                   \
        long long a_ = (long long)(a), b_ = (long long)(b);                                \
        if (a_ != b_) {                                                                    \
            printf("    %s:%d: %s == %lld, expected %lld\n", __FILE__, __LINE__, #a, a_, b_); \
            current_failed = 1;                                                            \
        }                                                                                  \
    } while (0)

static void run(const char *name, void (*test)(void))
{
    current_failed = 0;
    test();
    printf("%s %s\n", current_failed ? "FAIL" : "ok  ", name);
    if (current_failed) {
        failed++;
    } else {
        passed++;
    }
}

static size_t unhex(const char *hex, uint8_t *out)
{
    size_t n = 0;
    unsigned byte;
    while (sscanf(hex, " %2x", &byte) == 1) {
        out[n++] = (uint8_t)byte;
        hex += 2;
        while (*hex == ' ') {
            hex++;
        }
    }
    return n;
}

/* ------------------------------------------------------------------ mcp frames */

typedef struct {
    int count;
    uint8_t cmd[64];
    uint16_t len[64];
    uint8_t payload[64][MCP_SPEC_MAX_PAYLOAD];
} frames_t;

static void collect(void *ctx, uint8_t cmd_id, const uint8_t *payload, uint16_t len)
{
    frames_t *f = (frames_t *)ctx;
    if (f->count < 64) {
        f->cmd[f->count] = cmd_id;
        f->len[f->count] = len;
        memcpy(f->payload[f->count], payload, len);
    }
    f->count++;
}

static void test_spec_vectors(void)
{
    static const struct {
        uint8_t cmd;
        const char *payload, *wire;
    } v[] = {
        {0x02, "", "5a 02 00 00 02"},
        {0x82, "", "5a 82 00 00 82"},
        {0x10, "01 00", "5a 10 02 00 01 00 13"},
        {0x90, "01 00 d2 04 00 00", "5a 90 06 00 01 00 d2 04 00 00 41"},
        {0x11, "02 00 f4 01", "5a 11 04 00 02 00 f4 01 e2"},
        {0x91, "02 00 00", "5a 91 03 00 02 00 00 90"},
        {0x20, "66 08 94 11 e4 0c 10 0e 00 00", "5a 20 0a 00 66 08 94 11 e4 0c 10 0e 00 00 37"},
        {0x7f, "10 02", "5a 7f 02 00 10 02 6f"},
        {0x81, "07 00 05 00", "5a 81 04 00 07 00 05 00 87"},
    };
    size_t i;
    for (i = 0; i < sizeof v / sizeof v[0]; i++) {
        uint8_t payload[32], wire[40], out[40];
        size_t n = unhex(v[i].payload, payload), w = unhex(v[i].wire, wire);
        CHECK_EQ(mcp_encode(out, v[i].cmd, payload, n), w);
        CHECK(memcmp(out, wire, w) == 0);
    }
    {
        static uint8_t big[300];
        CHECK_EQ(mcp_encode(big, 1, big, 257), 0); /* above the spec's 256 */
    }
}

static void feed_split(mcp_deframer_t *d, const uint8_t *data, size_t len, size_t piece,
                       uint32_t now)
{
    size_t at = 0;
    while (at < len) {
        size_t n = len - at < piece ? len - at : piece;
        mcp_deframer_feed(d, data + at, n, now);
        at += n;
    }
}

static void check_balance(const mcp_deframer_t *d)
{
    CHECK_EQ(d->stats.bytes_in, d->stats.framed_bytes + d->stats.discarded_bytes + d->len);
}

/* Golden frames with garbage before, between and after, fed whole, in pieces and bytewise. */
static void test_deframer_splits(void)
{
    static const size_t pieces[] = {1000, 7, 1};
    uint8_t stream[600];
    size_t n = 0, i;
    /* a 0x5A with an impossible length, so no false frame hides in it */
    static const uint8_t garbage[] = {0x00, 0xff, 0x5a, 0xff, 0xff, 0x13};
    memcpy(stream + n, garbage, sizeof garbage);
    n += sizeof garbage;
    n += mcp_encode(stream + n, 0x02, NULL, 0);
    n += mcp_encode(stream + n, 0x20, (const uint8_t *)"\x5a\x5a\x5a", 3);
    stream[n++] = 0x42;
    {
        uint8_t longest[256];
        for (i = 0; i < sizeof longest; i++) {
            longest[i] = (uint8_t)i;
        }
        n += mcp_encode(stream + n, 0x30, longest, sizeof longest);
    }
    memcpy(stream + n, garbage, 2);
    n += 2;
    for (i = 0; i < sizeof pieces / sizeof pieces[0]; i++) {
        mcp_deframer_t d;
        frames_t got;
        memset(&got, 0, sizeof got);
        mcp_deframer_init(&d, collect, &got);
        d.limit = MCP_MAX_PAYLOAD;
        feed_split(&d, stream, n, pieces[i], 0);
        if (MCP_MAX_PAYLOAD == 256) {
            CHECK_EQ(got.count, 3);
            CHECK_EQ(got.cmd[2], 0x30);
            CHECK_EQ(got.len[2], 256);
            CHECK_EQ(got.payload[2][255], 255);
        } else {
            CHECK_EQ(got.count, 2); /* 256 bytes do not fit: an invalid length here */
        }
        CHECK_EQ(got.cmd[0], 0x02);
        CHECK_EQ(got.cmd[1], 0x20);
        CHECK(memcmp(got.payload[1], "\x5a\x5a\x5a", 3) == 0);
        check_balance(&d);
    }
}

/* A bad checksum drops one byte only: a frame starting inside the rejected bytes is found. */
static void test_deframer_bad_checksum_rescans(void)
{
    uint8_t stream[64], inner[8];
    size_t n;
    mcp_deframer_t d;
    frames_t got;
    size_t inner_len = mcp_encode(inner, 0x02, NULL, 0);
    /* a false frame whose payload is a real PING: 5a 10 05 00 [5a 02 00 00 02] bad */
    stream[0] = 0x5a;
    stream[1] = 0x10;
    stream[2] = (uint8_t)inner_len;
    stream[3] = 0;
    memcpy(stream + 4, inner, inner_len);
    n = 4 + inner_len;
    stream[n++] = 0xEE; /* wrong checksum */
    memset(&got, 0, sizeof got);
    mcp_deframer_init(&d, collect, &got);
    mcp_deframer_feed(&d, stream, n, 0);
    CHECK_EQ(got.count, 1);
    CHECK_EQ(got.cmd[0], 0x02);
    CHECK_EQ(d.stats.checksum_errors, 1);
    CHECK_EQ(d.stats.discarded_bytes, 5); /* 5a 10 05 00, then the trailing EE */
    check_balance(&d);
}

static void test_deframer_oversize_length(void)
{
    static const uint8_t stream[] = {0x5a, 0x01, 0x01, 0x01, 0x5a, 0x02, 0x00, 0x00, 0x02};
    mcp_deframer_t d;
    frames_t got;
    memset(&got, 0, sizeof got);
    mcp_deframer_init(&d, collect, &got);
    mcp_deframer_feed(&d, stream, sizeof stream, 0);
    CHECK_EQ(got.count, 1);
    CHECK_EQ(d.stats.oversize_lengths, 1);
    CHECK_EQ(d.stats.discarded_bytes, 4);
    check_balance(&d);
}

/* An incomplete frame is dropped once older than the timeout (on a feed or by expire),
 * and a frame behind its first byte is found. */
static void test_deframer_timeout(void)
{
    uint8_t ping[8];
    size_t n = mcp_encode(ping, 0x02, NULL, 0);
    static const uint8_t cut[] = {0x5a, 0x10, 0x02};
    mcp_deframer_t d;
    frames_t got;
    memset(&got, 0, sizeof got);
    mcp_deframer_init(&d, collect, &got);
    mcp_deframer_feed(&d, cut, sizeof cut, 1000);
    mcp_deframer_expire(&d, 1099);
    CHECK_EQ(d.len, 3); /* not stale yet */
    mcp_deframer_expire(&d, 1100);
    CHECK_EQ(d.len, 0);
    CHECK_EQ(d.stats.stale_frames, 1);
    /* a partial, then a ping 150 ms later: the partial is dropped on that feed first */
    mcp_deframer_feed(&d, cut, 2, 2000);
    mcp_deframer_feed(&d, ping, n, 2150);
    CHECK_EQ(got.count, 1);
    CHECK_EQ(d.stats.stale_frames, 2);
    /* a partial that keeps growing keeps its first time: 60 + 60 ms is stale */
    mcp_deframer_feed(&d, cut, 1, 3000);
    mcp_deframer_feed(&d, cut + 1, 1, 3060);
    mcp_deframer_expire(&d, 3100);
    CHECK_EQ(d.len, 0);
    /* time wraps */
    mcp_deframer_feed(&d, cut, 3, 0xFFFFFFF0u);
    mcp_deframer_expire(&d, 0x53);
    CHECK_EQ(d.len, 3); /* 99 ms across the wrap */
    mcp_deframer_expire(&d, 0x54);
    CHECK_EQ(d.len, 0);
    check_balance(&d);
}

#if MCP_MS720
static void test_ms720_vectors(void)
{
    uint8_t out[32], want[32];
    size_t w;
    CHECK_EQ(mcp_crc16(MCP_CRC16_INIT, (const uint8_t *)"123456789", 9), 0x29B1);
    w = unhex("55 aa 55 aa 03 00 02 01 00 00 00 10 01 00 63 17", want);
    CHECK_EQ(mcp_ms720_encode(out, MCP_MSG_DATA, 1, (const uint8_t *)"\x10\x01\x00", 3), w);
    CHECK(memcmp(out, want, w) == 0);
    w = unhex("55 aa 55 aa 00 00 03 01 00 00 00 a8 69", want);
    CHECK_EQ(mcp_ms720_encode(out, MCP_MSG_ACK, 1, NULL, 0), w);
    CHECK(memcmp(out, want, w) == 0);
}
#endif

/* ------------------------------------------------------------------ the device, through its wire */

/* What the device wrote, decoded again with the SDK's own deframer. */
typedef struct {
    int count;
    uint8_t cmd[64];
    uint16_t len[64];
    uint32_t tag[64];   /* ms720: the request seq a response carries */
    uint32_t seq[64];   /* ms720: the link seq */
    uint8_t payload[64][MCP_SPEC_MAX_PAYLOAD];
    int acks, nacks;
    uint32_t acked[64];
} wire_t;

static wire_t wire;
static mcp_device_t dev;
static uint32_t clock_ms;
static uint32_t gateway_seq = 100;
static int written_event, registered_event;

#if MCP_MS720
static mcp_ms720_deframer_t reader;
static void on_out_frame(void *ctx, uint8_t msg_type, uint32_t seq, const uint8_t *p,
                         uint16_t len)
{
    (void)ctx;
    if (msg_type == MCP_MSG_ACK) {
        wire.acked[wire.acks++ % 64] = seq;
        return;
    }
    if (msg_type == MCP_MSG_NACK) {
        wire.nacks++;
        return;
    }
    if (wire.count < 64) {
        int tagged = (p[0] & 0x80) || p[0] == MCP_NACK;
        wire.cmd[wire.count] = p[0];
        wire.seq[wire.count] = seq;
        wire.tag[wire.count] = tagged ? mcp_get_u32(p + 1) : 0;
        wire.len[wire.count] = (uint16_t)(len - 1 - (tagged ? 4 : 0));
        memcpy(wire.payload[wire.count], p + 1 + (tagged ? 4 : 0), wire.len[wire.count]);
    }
    wire.count++;
}
#else
static mcp_deframer_t reader;
static void on_out_frame(void *ctx, uint8_t cmd_id, const uint8_t *p, uint16_t len)
{
    (void)ctx;
    if (wire.count < 64) {
        wire.cmd[wire.count] = cmd_id;
        wire.len[wire.count] = len;
        memcpy(wire.payload[wire.count], p, len);
    }
    wire.count++;
}
#endif

static void capture(void *ctx, const uint8_t *data, size_t len)
{
    (void)ctx;
#if MCP_MS720
    mcp_ms720_deframer_feed(&reader, data, len, 0);
#else
    mcp_deframer_feed(&reader, data, len, 0);
#endif
}

static void on_event(void *ctx, uint8_t what, uint16_t arg)
{
    (void)ctx;
    if (what == MCP_EV_WRITTEN) {
        written_event = arg;
    } else if (what == MCP_EV_REGISTERED) {
        registered_event++;
    }
}

static uint32_t interval = 1000;
static char name[33] = "dev";
static uint32_t build = 7;
static int16_t offset = -5;
static const mcp_key_t keys[] = {
    {1, MCP_T_U32, MCP_RW, 10, 3600000u, &interval, 0},
    {2, MCP_T_UTF8, MCP_RW, 0, 32, name, 0},
    {3, MCP_T_U32, MCP_RO, 0, 0xFFFFFFFFu, &build, 0},
    {4, MCP_T_I16, MCP_RW, -100, 100, &offset, 0},
};

static uint8_t spin(void *ctx, uint8_t cmd_id, const uint8_t *req, uint16_t req_len,
                    uint8_t *resp, uint16_t *resp_len)
{
    (void)ctx;
    (void)cmd_id;
    if (req_len != 2) {
        return MCP_E_BAD_PAYLOAD;
    }
    resp[0] = req[1];
    resp[1] = req[0];
    *resp_len = 2;
    return MCP_OK;
}
static const mcp_command_t commands[] = {{0x30, spin}};
static const char *const caps[] = {"status", "read"};
static mcp_device_config_t cfg;

static void start(void)
{
    memset(&wire, 0, sizeof wire);
    memset(&cfg, 0, sizeof cfg);
    memcpy(cfg.uid, "\x01\x02\x03\x04\x05\x06\x07\x08", 8);
    cfg.fw[0] = 1;
    cfg.fw[1] = 2;
    cfg.fw[2] = 3;
    cfg.model = "test-model";
    cfg.caps = caps;
    cfg.caps_count = 2;
    cfg.keys = keys;
    cfg.keys_count = sizeof keys / sizeof keys[0];
    cfg.commands = commands;
    cfg.commands_count = 1;
    cfg.write = capture;
    cfg.on_event = on_event;
    cfg.send_hello = 1;
    cfg.first_seq = 0xFFFFFFFEu; /* the device's seq wraps during the tests */
    interval = 1000;
    strcpy(name, "dev");
    registered_event = written_event = 0;
    clock_ms = 5000;
#if MCP_MS720
    mcp_ms720_deframer_init(&reader, on_out_frame, NULL, NULL);
#else
    mcp_deframer_init(&reader, on_out_frame, NULL);
    reader.limit = MCP_SPEC_MAX_PAYLOAD;
#endif
    mcp_device_init(&dev, &cfg, clock_ms);
}

/* The gateway sends a command; on ms720, as a data frame of its own seq (responses tagged). */
static uint32_t gateway_send(uint8_t cmd_id, const uint8_t *payload, uint16_t len,
                             uint32_t tag)
{
    uint8_t frame[MCP_SPEC_MAX_PAYLOAD + 32];
    size_t n;
#if MCP_MS720
    uint8_t body[MCP_SPEC_MAX_PAYLOAD + 8];
    uint16_t at = 0;
    body[at++] = cmd_id;
    if ((cmd_id & 0x80) || cmd_id == MCP_NACK) {
        mcp_put_u32(body + at, tag);
        at = (uint16_t)(at + 4);
    }
    if (len) {
        memcpy(body + at, payload, len);
    }
    n = mcp_ms720_encode(frame, MCP_MSG_DATA, gateway_seq, body, (size_t)at + len);
#else
    (void)tag;
    n = mcp_encode(frame, cmd_id, payload, len);
#endif
    mcp_device_feed(&dev, frame, n, clock_ms);
    return gateway_seq++;
}

#if MCP_MS720
/* The gateway acknowledges everything the device sent so far. */
static void gateway_ack_all(void)
{
    int i;
    for (i = 0; i < wire.count && i < 64; i++) {
        uint8_t ack[MCP_MS720_OVERHEAD];
        mcp_ms720_encode(ack, MCP_MSG_ACK, wire.seq[i], NULL, 0);
        mcp_device_feed(&dev, ack, sizeof ack, clock_ms);
    }
}
#else
static void gateway_ack_all(void) {}
#endif

static void advance(uint32_t ms)
{
    uint32_t end = clock_ms + ms;
    while (clock_ms != end) {
        clock_ms++;
        mcp_device_poll(&dev, clock_ms);
    }
}

static int last_is(uint8_t cmd_id)
{
    return wire.count > 0 && wire.cmd[wire.count - 1] == cmd_id;
}

#define LAST (wire.count - 1)

static void registered(void)
{
    static const uint8_t ack[] = {7, 0, 5, 0}; /* node 7, heartbeat 5 s */
    advance(1);
    gateway_ack_all();
    gateway_send(MCP_HELLO_ACK, ack, 4, wire.seq[LAST]);
    wire.count = 0;
}

static void test_hello_until_ack(void)
{
    start();
    advance(1);
    CHECK_EQ(wire.count, 1);
    CHECK(last_is(MCP_HELLO));
    CHECK_EQ(wire.len[0], 12 + 1 + 10 + 1 + 1 + 6 + 1 + 4);
    CHECK_EQ(wire.payload[0][0], 1);                          /* proto */
    CHECK(memcmp(wire.payload[0] + 1, cfg.uid, 8) == 0);      /* uid */
    CHECK_EQ(wire.payload[0][9 + 2], 3);                      /* fw patch */
    CHECK_EQ(wire.payload[0][12], 10);                        /* model length */
    CHECK(memcmp(wire.payload[0] + 13, "test-model", 10) == 0);
    CHECK_EQ(wire.payload[0][23], 2);                         /* caps count */
    gateway_ack_all();
    advance(998);
    CHECK_EQ(wire.count, 1);
    advance(2);
    CHECK_EQ(wire.count, 2); /* every second until HELLO_ACK */
    CHECK(last_is(MCP_HELLO));
    gateway_ack_all();
    {
        static const uint8_t ack[] = {7, 0, 5, 0};
        gateway_send(MCP_HELLO_ACK, ack, 4, wire.seq[LAST]);
    }
    CHECK(dev.registered);
    CHECK_EQ(dev.node_id, 7);
    CHECK_EQ(dev.heartbeat_s, 5);
    CHECK_EQ(registered_event, 1);
    advance(4990);
    CHECK_EQ(wire.count, 2); /* no HELLO after the ack, no PING before the heartbeat */
    advance(20);
    CHECK(last_is(MCP_PING));
    CHECK_EQ(wire.len[LAST], 4);
}

static void test_ping_pong_and_nack5(void)
{
    static const uint8_t nack5[] = {MCP_PING, MCP_E_NOT_REGISTERED};
    uint32_t asked;
    start();
    registered();
    asked = gateway_send(MCP_PING, NULL, 0, 0);
    CHECK(last_is(MCP_PONG));
    CHECK_EQ(wire.len[LAST], 0);
#if MCP_MS720
    CHECK_EQ(wire.tag[LAST], asked);
#else
    (void)asked;
#endif
    gateway_ack_all();
    gateway_send(MCP_NACK, nack5, 2, 0);
    CHECK(!dev.registered);
    advance(1);
    CHECK(last_is(MCP_HELLO)); /* at once, with the same uid */
    CHECK(memcmp(wire.payload[LAST] + 1, cfg.uid, 8) == 0);
}

static void test_read(void)
{
    uint8_t key[3] = {1, 0, 0};
    start();
    registered();
    gateway_send(MCP_READ, key, 2, 0);
    CHECK(last_is(MCP_READ_RESP));
    CHECK_EQ(wire.len[LAST], 6);
    CHECK_EQ(mcp_get_u32(wire.payload[LAST] + 2), 1000);
    gateway_ack_all();
    key[0] = 2;
    gateway_send(MCP_READ, key, 2, 0);
    CHECK_EQ(wire.len[LAST], 5);
    CHECK(memcmp(wire.payload[LAST] + 2, "dev", 3) == 0);
    gateway_ack_all();
    key[0] = 9; /* unknown key */
    gateway_send(MCP_READ, key, 2, 0);
    CHECK(last_is(MCP_NACK));
    CHECK_EQ(wire.payload[LAST][0], MCP_READ);
    CHECK_EQ(wire.payload[LAST][1], MCP_E_BAD_PAYLOAD);
    gateway_ack_all();
    gateway_send(MCP_READ, key, 3, 0); /* malformed */
    CHECK(last_is(MCP_NACK));
    CHECK_EQ(wire.payload[LAST][1], MCP_E_BAD_PAYLOAD);
}

static uint8_t write_status(const uint8_t *payload, uint16_t len)
{
    gateway_ack_all();
    gateway_send(MCP_WRITE, payload, len, 0);
    CHECK(last_is(MCP_WRITE_ACK));
    CHECK_EQ(wire.len[LAST], 3);
    return wire.payload[LAST][2];
}

static void test_write(void)
{
    uint8_t p[40];
    start();
    registered();
    p[0] = 1; p[1] = 0;
    mcp_put_u32(p + 2, 250);
    CHECK_EQ(write_status(p, 6), MCP_OK);
    CHECK_EQ(interval, 250);
    CHECK_EQ(written_event, 1);
    mcp_put_u32(p + 2, 9); /* below min */
    CHECK_EQ(write_status(p, 6), MCP_E_BAD_PAYLOAD);
    mcp_put_u32(p + 2, 3600001u); /* above max */
    CHECK_EQ(write_status(p, 6), MCP_E_BAD_PAYLOAD);
    CHECK_EQ(write_status(p, 5), MCP_E_BAD_PAYLOAD); /* wrong size */
    CHECK_EQ(interval, 250);
    p[0] = 3; /* read-only */
    CHECK_EQ(write_status(p, 6), MCP_E_DENIED);
    CHECK_EQ(build, 7);
    p[0] = 9; /* unknown */
    CHECK_EQ(write_status(p, 6), MCP_E_BAD_PAYLOAD);
    p[0] = 4; /* i16 in -100..100 */
    mcp_put_u16(p + 2, (uint16_t)(int16_t)-100);
    CHECK_EQ(write_status(p, 4), MCP_OK);
    CHECK_EQ(offset, -100);
    mcp_put_u16(p + 2, (uint16_t)(int16_t)-101);
    CHECK_EQ(write_status(p, 4), MCP_E_BAD_PAYLOAD);
    p[0] = 2; /* utf8 name */
    memcpy(p + 2, "caf\xc3\xa9", 5);
    CHECK_EQ(write_status(p, 7), MCP_OK);
    CHECK(strcmp(name, "caf\xc3\xa9") == 0);
    memcpy(p + 2, "\xc3\x28", 2); /* invalid UTF-8 */
    CHECK_EQ(write_status(p, 4), MCP_E_BAD_PAYLOAD);
    {
        /* overlong, surrogate, above U+10FFFF, a stray continuation, cut short, NUL */
        static const char *const bad[] = {"\xc0\x80", "\xe0\x80\x80", "\xed\xa0\x80",
                                          "\xf4\x90\x80\x80", "\x80", "\xe2\x82", "a\0b"};
        static const uint8_t lengths[] = {2, 3, 3, 4, 1, 2, 3};
        static const char *const good[] = {"\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xed\x9f\xbf",
                                           "\xf4\x8f\xbf\xbf", ""};
        size_t i;
        for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            memcpy(p + 2, bad[i], lengths[i]);
            CHECK_EQ(write_status(p, (uint16_t)(2 + lengths[i])), MCP_E_BAD_PAYLOAD);
        }
        for (i = 0; i < sizeof good / sizeof good[0]; i++) {
            memcpy(p + 2, good[i], strlen(good[i]));
            CHECK_EQ(write_status(p, (uint16_t)(2 + strlen(good[i]))), MCP_OK);
            CHECK(strcmp(name, good[i]) == 0);
        }
    }
    memset(p + 2, 'x', 33); /* too long */
    CHECK_EQ(write_status(p, 35), MCP_E_BAD_PAYLOAD);
    memset(p + 2, 'x', 32);
    CHECK_EQ(write_status(p, 34), MCP_OK);
    CHECK_EQ(strlen(name), 32);
    gateway_ack_all();
    gateway_send(MCP_WRITE, p, 1, 0);
    CHECK(last_is(MCP_NACK));
    CHECK_EQ(wire.payload[LAST][1], MCP_E_BAD_PAYLOAD);
}

static void test_commands(void)
{
    static const uint8_t req[] = {0x12, 0x34};
    start();
    registered();
    gateway_send(0x30, req, 2, 0);
    CHECK(last_is(0xB0));
    CHECK_EQ(wire.payload[LAST][0], 0x34);
    gateway_ack_all();
    gateway_send(0x30, req, 1, 0);
    CHECK(last_is(MCP_NACK));
    CHECK_EQ(wire.payload[LAST][1], MCP_E_BAD_PAYLOAD);
    gateway_ack_all();
    gateway_send(0x31, req, 2, 0);
    CHECK(last_is(MCP_NACK));
    CHECK_EQ(wire.payload[LAST][0], 0x31);
    CHECK_EQ(wire.payload[LAST][1], MCP_E_UNKNOWN_COMMAND);
    gateway_ack_all();
    wire.count = 0;
    gateway_send(MCP_STATUS, req, 2, 0); /* unsolicited: never answered */
    gateway_send(0xB5, req, 2, 0);       /* a response nobody asked for */
    CHECK_EQ(wire.count, 0);
}

static void test_status_and_log(void)
{
    static const uint8_t status[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    start();
    registered();
    CHECK_EQ(mcp_device_status(&dev, status, sizeof status), MCP_SENT);
    CHECK(last_is(MCP_STATUS));
    CHECK_EQ(wire.len[LAST], 10);
    gateway_ack_all();
    CHECK_EQ(mcp_device_log(&dev, 2, "hello"), MCP_SENT);
    CHECK(last_is(MCP_LOG));
    CHECK_EQ(wire.payload[LAST][0], 2);
    CHECK(memcmp(wire.payload[LAST] + 1, "hello", 5) == 0);
    {
        static uint8_t big[MCP_MAX_PAYLOAD + 1];
        CHECK_EQ(mcp_device_status(&dev, big, sizeof big), MCP_TOO_BIG);
    }
}

#if MCP_MS720
/* ------------------------------------------------------------------ the ms720 link */

static void test_link_acks_and_duplicates(void)
{
    uint8_t frame[32];
    size_t n;
    int acks;
    uint32_t seq;
    start();
    registered();
    acks = wire.acks;
    seq = dev.link.expected;
    n = mcp_ms720_encode(frame, MCP_MSG_DATA, seq, (const uint8_t *)"\x02", 1); /* PING */
    mcp_device_feed(&dev, frame, n, clock_ms);
    CHECK_EQ(wire.acks, acks + 1);
    CHECK_EQ(wire.acked[(wire.acks - 1) % 64], seq);
    CHECK(last_is(MCP_PONG));
    CHECK_EQ(wire.tag[wire.count > 0 ? LAST : 0], seq);
    CHECK_EQ(wire.count, 1);
    mcp_device_feed(&dev, frame, n, clock_ms); /* the same seq again */
    CHECK_EQ(wire.acks, acks + 2);             /* acknowledged again ... */
    CHECK_EQ(wire.count, 1);                   /* ... not delivered again */
    CHECK_EQ(dev.link.stats.duplicates, 1);
}

static void test_link_in_order(void)
{
    uint8_t a[32], b[32];
    size_t na, nb;
    start();
    registered();
    gateway_seq = dev.link.expected;
    na = mcp_ms720_encode(a, MCP_MSG_DATA, gateway_seq, (const uint8_t *)"\x02", 1);
    nb = mcp_ms720_encode(b, MCP_MSG_DATA, gateway_seq + 1, (const uint8_t *)"\x10\x01\x00", 3);
    mcp_device_feed(&dev, b, nb, clock_ms); /* overtook the PING */
    CHECK_EQ(wire.count, 0);
    CHECK_EQ(dev.link.stats.reordered, 1);
    mcp_device_feed(&dev, a, na, clock_ms);
    CHECK_EQ(wire.count, 2);
    CHECK_EQ(wire.cmd[0], MCP_PONG);
    CHECK_EQ(wire.cmd[1], MCP_READ_RESP);
}

static void test_link_gap_skipped(void)
{
    uint8_t b[32];
    size_t nb;
    start();
    registered();
    nb = mcp_ms720_encode(b, MCP_MSG_DATA, dev.link.expected + 1, (const uint8_t *)"\x02", 1);
    mcp_device_feed(&dev, b, nb, clock_ms); /* its predecessor never comes */
    advance(MCP_MS720_RETRANSMIT_MS * (MCP_MS720_RETRIES + 2) - 1);
    CHECK_EQ(wire.count, 0);
    advance(1);
    CHECK_EQ(wire.count, 1);
    CHECK(last_is(MCP_PONG));
    CHECK_EQ(dev.link.stats.gaps_skipped, 1);
}

static void test_link_retransmits_then_gives_up(void)
{
    start();
    registered();
    CHECK_EQ(mcp_device_log(&dev, 1, "x"), MCP_SENT);
    CHECK_EQ(wire.count, 1);
    advance(MCP_MS720_RETRANSMIT_MS - 1);
    CHECK_EQ(wire.count, 1);
    advance(1);
    CHECK_EQ(wire.count, 2);
    CHECK_EQ(wire.seq[1], wire.seq[0]); /* the same frame, the same seq */
    advance(2 * MCP_MS720_RETRANSMIT_MS);
    CHECK_EQ(wire.count, 1 + MCP_MS720_RETRIES);
    advance(10 * MCP_MS720_RETRANSMIT_MS);
    CHECK_EQ(wire.count, 1 + MCP_MS720_RETRIES); /* no more (and no PING yet: 5 s) */
    CHECK_EQ(dev.link.stats.lost, 1);
    CHECK_EQ(dev.link.stats.retransmits, MCP_MS720_RETRIES);
}

static void test_link_nack_resends_now(void)
{
    uint8_t nack[MCP_MS720_OVERHEAD];
    start();
    registered();
    mcp_device_log(&dev, 1, "x");
    mcp_ms720_encode(nack, MCP_MSG_NACK, wire.seq[0], NULL, 0);
    mcp_device_feed(&dev, nack, sizeof nack, clock_ms);
    CHECK_EQ(wire.count, 2);
    CHECK_EQ(wire.seq[1], wire.seq[0]);
}

static void test_link_window(void)
{
    int i;
    start();
    registered();
    for (i = 0; i < MCP_MS720_WINDOW; i++) {
        CHECK_EQ(mcp_device_log(&dev, 1, "x"), MCP_SENT);
    }
    CHECK(!mcp_device_can_send(&dev));
    CHECK_EQ(mcp_device_log(&dev, 1, "x"), MCP_BUSY);
    /* a request finds no slot to answer with: held (acknowledged), answered once one frees */
    {
        int acks = wire.acks, sent = wire.count;
        gateway_send(MCP_PING, NULL, 0, 0);
        CHECK_EQ(wire.acks, acks + 1);
        CHECK_EQ(wire.count, sent);
        gateway_ack_all();
        CHECK(last_is(MCP_PONG));
        CHECK_EQ(wire.count, sent + 1);
    }
    /* a frame further ahead than the window can hold is not acknowledged (sent again) */
    {
        uint8_t frame[32];
        size_t n = mcp_ms720_encode(frame, MCP_MSG_DATA, dev.link.expected + MCP_MS720_HOLD,
                                    (const uint8_t *)"\x02", 1);
        int acks = wire.acks;
        mcp_device_feed(&dev, frame, n, clock_ms);
        CHECK_EQ(wire.acks, acks);
        CHECK_EQ(dev.link.stats.refused, 1);
    }
    gateway_ack_all();
    CHECK(mcp_device_can_send(&dev));
}

/* The expected frame never comes and the frames behind it find no room: after the gap
 * time the link goes on from the nearest refused one (it comes again and is taken). */
static void test_link_refusals_skip_a_gap(void)
{
    uint8_t frame[32];
    size_t n;
    uint32_t far;
    start();
    registered();
    far = dev.link.expected + MCP_MS720_HOLD;
    n = mcp_ms720_encode(frame, MCP_MSG_DATA, far, (const uint8_t *)"\x02", 1);
    mcp_device_feed(&dev, frame, n, clock_ms);
    CHECK_EQ(dev.link.stats.refused, 1);
    advance(MCP_MS720_RETRANSMIT_MS * (MCP_MS720_RETRIES + 2));
    CHECK_EQ(dev.link.expected, far);
    CHECK_EQ(dev.link.stats.gaps_skipped, MCP_MS720_HOLD);
    mcp_device_feed(&dev, frame, n, clock_ms); /* sent again: taken now */
    CHECK(last_is(MCP_PONG));
}

static void test_link_bad_crc_nacked(void)
{
    uint8_t frame[32];
    size_t n;
    start();
    registered();
    n = mcp_ms720_encode(frame, MCP_MSG_DATA, 77, (const uint8_t *)"\x02", 1);
    frame[n - 1] ^= 1;
    mcp_device_feed(&dev, frame, n, clock_ms);
    CHECK_EQ(wire.nacks, 1);
    CHECK_EQ(wire.count, 0);
}

static void test_link_seq_wraps(void)
{
    uint8_t frame[32];
    size_t n;
    start();
    registered();
    dev.link.expected = 0xFFFFFFFFu;
    n = mcp_ms720_encode(frame, MCP_MSG_DATA, 0xFFFFFFFFu, (const uint8_t *)"\x02", 1);
    mcp_device_feed(&dev, frame, n, clock_ms);
    gateway_ack_all();
    n = mcp_ms720_encode(frame, MCP_MSG_DATA, 0, (const uint8_t *)"\x02", 1);
    mcp_device_feed(&dev, frame, n, clock_ms);
    CHECK_EQ(wire.count, 2);
    CHECK_EQ(dev.link.stats.restarts, 0);
    CHECK_EQ(dev.link.stats.duplicates, 0);
    /* and the device's own seq wrapped in these tests (it started at 0xFFFFFFFE) */
    CHECK(dev.link.next_seq < 0x10u);
}

static void test_link_restart(void)
{
    uint8_t frame[32];
    size_t n;
    start();
    registered();
    n = mcp_ms720_encode(frame, MCP_MSG_DATA, dev.link.expected + 5000, (const uint8_t *)"\x02", 1);
    mcp_device_feed(&dev, frame, n, clock_ms);
    CHECK_EQ(dev.link.stats.restarts, 1);
    CHECK(last_is(MCP_PONG));
}
#endif

int main(void)
{
    printf("device-sdk core tests, frame profile %s, MCP_MAX_PAYLOAD %d\n",
           MCP_MS720 ? "ms720" : "mcp", MCP_MAX_PAYLOAD);
    run("spec vectors (mcp)", test_spec_vectors);
    run("deframer: splits and garbage", test_deframer_splits);
    run("deframer: a bad checksum drops one byte", test_deframer_bad_checksum_rescans);
    run("deframer: an oversize length drops one byte", test_deframer_oversize_length);
    run("deframer: inter-frame timeout", test_deframer_timeout);
#if MCP_MS720
    run("spec vectors (ms720)", test_ms720_vectors);
#endif
    run("device: HELLO until HELLO_ACK, then heartbeats", test_hello_until_ack);
    run("device: PONG; NACK 5 re-registers", test_ping_pong_and_nack5);
    run("device: READ", test_read);
    run("device: WRITE", test_write);
    run("device: commands", test_commands);
    run("device: STATUS and LOG", test_status_and_log);
#if MCP_MS720
    run("link: ACKs and duplicates", test_link_acks_and_duplicates);
    run("link: in-order delivery", test_link_in_order);
    run("link: a gap is skipped", test_link_gap_skipped);
    run("link: retransmits, then gives up", test_link_retransmits_then_gives_up);
    run("link: a NACK resends at once", test_link_nack_resends_now);
    run("link: the window", test_link_window);
    run("link: refusals skip a gap", test_link_refusals_skip_a_gap);
    run("link: a bad CRC is NACKed", test_link_bad_crc_nacked);
    run("link: the seq wraps", test_link_seq_wraps);
    run("link: a new sequence", test_link_restart);
#endif
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
