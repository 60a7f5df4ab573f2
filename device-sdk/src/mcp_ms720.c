/* mcp_ms720.c - the `ms720` frame: CRC-16/CCITT-FALSE, encoder and deframer (spec section 4). */
#include "mcp_internal.h"

#if MCP_MS720

static const uint8_t SYNC[4] = {MCP_MS720_SYNC0, MCP_MS720_SYNC1, MCP_MS720_SYNC0,
                                MCP_MS720_SYNC1};

/* A nibble table: 32 bytes of flash instead of 512, about 4x the speed of the bit loop. */
static const uint16_t CRC_NIBBLE[16] = {
    0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50A5, 0x60C6, 0x70E7,
    0x8108, 0x9129, 0xA14A, 0xB16B, 0xC18C, 0xD1AD, 0xE1CE, 0xF1EF};

uint16_t mcp_crc16(uint16_t crc, const uint8_t *data, size_t len)
{
    while (len--) {
        uint8_t byte = *data++;
        crc = (uint16_t)((crc << 4) ^ CRC_NIBBLE[(crc >> 12) ^ (byte >> 4)]);
        crc = (uint16_t)((crc << 4) ^ CRC_NIBBLE[(crc >> 12) ^ (byte & 0x0F)]);
    }
    return crc;
}

size_t mcp_ms720_encode(uint8_t *out, uint8_t msg_type, uint32_t seq, const uint8_t *payload,
                        size_t len)
{
    uint16_t crc;
    mcp_copy(out, SYNC, 4);
    mcp_put_u16(out + 4, (uint16_t)len);
    out[6] = msg_type;
    mcp_put_u32(out + 7, seq);
    if (len) {
        mcp_copy(out + MCP_MS720_HEADER, payload, len);
    }
    crc = mcp_crc16(MCP_CRC16_INIT, out + 4, len + 7);
    mcp_put_u16(out + MCP_MS720_HEADER + len, crc);
    return len + MCP_MS720_OVERHEAD;
}

void mcp_ms720_deframer_init(mcp_ms720_deframer_t *d, mcp_link_frame_fn on_frame,
                             mcp_bad_seq_fn on_bad, void *ctx)
{
    mcp_zero(d, sizeof *d);
    d->limit = MCP_MS720_MAX_PAYLOAD;
    d->timeout_ms = MCP_INTERFRAME_MS;
    d->on_frame = on_frame;
    d->on_bad = on_bad;
    d->ctx = ctx;
}

static void drop(mcp_ms720_deframer_t *d, uint16_t n)
{
    d->len = (uint16_t)(d->len - n);
    mcp_copy(d->buf, d->buf + n, d->len);
}

/* As the `mcp` scan: emit, discard, and keep only the start of a frame (or of a sync word). */
static uint16_t scan(mcp_ms720_deframer_t *d)
{
    uint16_t consumed = 0;
    while (d->len) {
        uint16_t head = d->len < 4 ? d->len : 4;
        if (!mcp_same(d->buf, SYNC, head)) {
            /* cannot start a sync word: discard it */
            d->stats.discarded_bytes++;
            consumed++;
            drop(d, 1);
            continue;
        }
        if (d->len < 6) {
            break;
        }
        {
            uint16_t length = mcp_get_u16(d->buf + 4);
            uint16_t size = (uint16_t)(length + MCP_MS720_OVERHEAD);
            if (length > d->limit) {
                d->stats.oversize_lengths++;
                d->stats.discarded_bytes++;
                consumed++;
                drop(d, 1);
                continue;
            }
            if (d->len < size) {
                break;
            }
            if (mcp_crc16(MCP_CRC16_INIT, d->buf + 4, (size_t)size - 6) !=
                mcp_get_u16(d->buf + size - 2)) {
                d->stats.checksum_errors++;
                d->stats.discarded_bytes++;
                consumed++;
                if (d->on_bad) {
                    d->on_bad(d->ctx, mcp_get_u32(d->buf + 7));
                }
                drop(d, 1);
                continue;
            }
            d->stats.frames++;
            d->stats.framed_bytes += size;
            if (d->on_frame) {
                d->on_frame(d->ctx, d->buf[6], mcp_get_u32(d->buf + 7),
                            d->buf + MCP_MS720_HEADER, length);
            }
            consumed = (uint16_t)(consumed + size);
            drop(d, size);
        }
    }
    return consumed;
}

void mcp_ms720_deframer_expire(mcp_ms720_deframer_t *d, uint32_t now)
{
    while (d->len && (uint32_t)(now - d->since) >= d->timeout_ms) {
        d->stats.stale_frames++;
        d->stats.discarded_bytes++;
        drop(d, 1);
        scan(d);
        d->since = d->last_rx;
    }
}

void mcp_ms720_deframer_feed(mcp_ms720_deframer_t *d, const uint8_t *data, size_t len,
                             uint32_t now)
{
    uint8_t held = 0;
    uint8_t moved = 0;
    if (d->len) {
        mcp_ms720_deframer_expire(d, now);
    }
    if (!len) {
        return;
    }
    held = d->len != 0;
    d->stats.bytes_in += (uint32_t)len;
    while (len--) {
        d->buf[d->len++] = *data++;
        if (scan(d)) {
            moved = 1;
        }
    }
    if (d->len && (!held || moved)) {
        d->since = now;
    }
    d->last_rx = now;
}

#endif
