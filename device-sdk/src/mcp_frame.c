/* mcp_frame.c - the `mcp` frame: encoder, and a deframer with the spec's resync rules. */
#include "mcp_internal.h"

uint8_t mcp_xor(uint8_t seed, const uint8_t *data, size_t len)
{
    while (len--) {
        seed ^= *data++;
    }
    return seed;
}

size_t mcp_encode(uint8_t *out, uint8_t cmd_id, const uint8_t *payload, size_t len)
{
    if (len > MCP_SPEC_MAX_PAYLOAD) {
        return 0;
    }
    out[0] = MCP_HEADER;
    out[1] = cmd_id;
    out[2] = (uint8_t)len;
    out[3] = (uint8_t)(len >> 8);
    if (len) {
        mcp_copy(out + 4, payload, len);
    }
    out[4 + len] = mcp_xor(mcp_xor(0, out + 1, 3), out + 4, len);
    return len + MCP_OVERHEAD;
}

void mcp_deframer_init(mcp_deframer_t *d, mcp_frame_fn on_frame, void *ctx)
{
    mcp_zero(d, sizeof *d);
    d->limit = MCP_MAX_PAYLOAD;
    d->timeout_ms = MCP_INTERFRAME_MS;
    d->on_frame = on_frame;
    d->ctx = ctx;
}

/* Drop n bytes from the front of the buffer. */
static void drop(mcp_deframer_t *d, uint16_t n)
{
    d->len = (uint16_t)(d->len - n);
    mcp_copy(d->buf, d->buf + n, d->len);
}

/* Emit every frame the buffer holds and discard what cannot start one, until the buffer is
 * empty or holds the start of a frame that is not complete yet. Returns the bytes consumed
 * from the front. Same decisions as the spec's scan of the whole stream: each depends only
 * on the bytes from a 0x5A to the end of the frame it announces. */
static uint16_t scan(mcp_deframer_t *d)
{
    uint16_t consumed = 0;
    while (d->len) {
        uint16_t skip = 0;
        while (skip < d->len && d->buf[skip] != MCP_HEADER) {
            skip++;
        }
        if (skip) {
            d->stats.discarded_bytes += skip;
            consumed = (uint16_t)(consumed + skip);
            drop(d, skip);
            continue;
        }
        if (d->len < 4) {
            break;
        }
        {
            uint16_t length = (uint16_t)(d->buf[2] | d->buf[3] << 8);
            uint16_t size = (uint16_t)(length + MCP_OVERHEAD);
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
            if (mcp_xor(0, d->buf + 1, (size_t)size - 2) != d->buf[size - 1]) {
                d->stats.checksum_errors++;
                d->stats.discarded_bytes++;
                consumed++;
                drop(d, 1);
                continue;
            }
            d->stats.frames++;
            d->stats.framed_bytes += size;
            if (d->on_frame) {
                d->on_frame(d->ctx, d->buf[1], d->buf + 4, length);
            }
            consumed = (uint16_t)(consumed + size);
            drop(d, size);
        }
    }
    return consumed;
}

void mcp_deframer_expire(mcp_deframer_t *d, uint32_t now)
{
    while (d->len && (uint32_t)(now - d->since) >= d->timeout_ms) {
        d->stats.stale_frames++;
        d->stats.discarded_bytes++;
        drop(d, 1);
        scan(d);
        /* whatever start is left came in at the latest feed: judge it by that time */
        d->since = d->last_rx;
    }
}

void mcp_deframer_feed(mcp_deframer_t *d, const uint8_t *data, size_t len, uint32_t now)
{
    uint8_t held = 0;    /* the buffer held an incomplete frame before this feed */
    uint8_t moved = 0;   /* ... and its front was consumed since */
    if (d->len) {
        mcp_deframer_expire(d, now);
    }
    if (!len) {
        return;
    }
    held = d->len != 0;
    d->stats.bytes_in += (uint32_t)len;
    while (len--) {
        /* Room is always there: scan leaves at most an incomplete frame (< its size). Byte
         * by byte, a scan costs a few compares until a frame is complete. */
        d->buf[d->len++] = *data++;
        if (scan(d)) {
            moved = 1;
        }
    }
    /* An incomplete frame that is new (or replaced the one held) is timed from now. */
    if (d->len && (!held || moved)) {
        d->since = now;
    }
    d->last_rx = now;
}
