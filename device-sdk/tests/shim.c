/* shim.c - what the Python differential tests call through ctypes: the deframers with a
 * fixed-size record per frame, so Python needs no callbacks. Host builds only. */
#include <string.h>

#include "mcp.h"

#define SHIM_FRAMES 4096

typedef struct {
    uint8_t kind; /* mcp: cmd_id; ms720: msg_type */
    uint8_t bad;  /* ms720: 1 for a seq whose CRC failed (bad_seqs), 0 for a frame */
    uint16_t len;
    uint32_t seq;
    uint8_t payload[MCP_MS720_MAX_PAYLOAD];
} shim_frame_t;

typedef struct {
    mcp_deframer_t mcp;
    mcp_ms720_deframer_t ms720;
    uint32_t count;
    shim_frame_t frames[SHIM_FRAMES];
} shim_t;

static void record(shim_t *shim, uint8_t kind, uint8_t bad, uint32_t seq, const uint8_t *p,
                   uint16_t len)
{
    if (shim->count < SHIM_FRAMES) {
        shim_frame_t *f = &shim->frames[shim->count];
        f->kind = kind;
        f->bad = bad;
        f->len = len;
        f->seq = seq;
        memcpy(f->payload, p, len);
    }
    shim->count++;
}

static void on_mcp(void *ctx, uint8_t cmd_id, const uint8_t *payload, uint16_t len)
{
    record((shim_t *)ctx, cmd_id, 0, 0, payload, len);
}

static void on_ms720(void *ctx, uint8_t msg_type, uint32_t seq, const uint8_t *payload,
                     uint16_t len)
{
    record((shim_t *)ctx, msg_type, 0, seq, payload, len);
}

static void on_bad(void *ctx, uint32_t seq)
{
    record((shim_t *)ctx, 0, 1, seq, NULL, 0);
}

size_t shim_size(void) { return sizeof(shim_t); }
size_t shim_frame_size(void) { return sizeof(shim_frame_t); }
size_t shim_frames_offset(void) { return offsetof(shim_t, frames); }
unsigned shim_max_payload(void) { return MCP_MAX_PAYLOAD; }
unsigned shim_ms720_max_payload(void) { return MCP_MS720_MAX_PAYLOAD; }

void shim_init(shim_t *shim)
{
    memset(shim, 0, sizeof *shim);
    mcp_deframer_init(&shim->mcp, on_mcp, shim);
    mcp_ms720_deframer_init(&shim->ms720, on_ms720, on_bad, shim);
}

/* Feed one deframer (ms720 != 0: the ms720 one); returns frames recorded so far. */
uint32_t shim_feed(shim_t *shim, int ms720, const uint8_t *data, size_t len, uint32_t now)
{
    if (ms720) {
        mcp_ms720_deframer_feed(&shim->ms720, data, len, now);
    } else {
        mcp_deframer_feed(&shim->mcp, data, len, now);
    }
    return shim->count;
}

uint32_t shim_expire(shim_t *shim, int ms720, uint32_t now)
{
    if (ms720) {
        mcp_ms720_deframer_expire(&shim->ms720, now);
    } else {
        mcp_deframer_expire(&shim->mcp, now);
    }
    return shim->count;
}

/* Counters in DeframerStats order, then the bytes buffered. */
void shim_stats(const shim_t *shim, int ms720, uint32_t out[8])
{
    const mcp_stats_t *s = ms720 ? &shim->ms720.stats : &shim->mcp.stats;
    out[0] = s->bytes_in;
    out[1] = s->frames;
    out[2] = s->framed_bytes;
    out[3] = s->discarded_bytes;
    out[4] = s->checksum_errors;
    out[5] = s->oversize_lengths;
    out[6] = s->stale_frames;
    out[7] = ms720 ? shim->ms720.len : shim->mcp.len;
}

size_t shim_encode(uint8_t *out, uint8_t cmd_id, const uint8_t *payload, size_t len)
{
    return mcp_encode(out, cmd_id, payload, len);
}

size_t shim_ms720_encode(uint8_t *out, uint8_t msg_type, uint32_t seq, const uint8_t *payload,
                         size_t len)
{
    return mcp_ms720_encode(out, msg_type, seq, payload, len);
}

uint16_t shim_crc16(const uint8_t *data, size_t len)
{
    return mcp_crc16(MCP_CRC16_INIT, data, len);
}
