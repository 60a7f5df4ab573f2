/* mcp_link.c - the `ms720` reliable link: ACKs, retransmission, duplicates, in-order delivery. */
#include "mcp_internal.h"

#if MCP_MS720

/* Seqs this far behind the next expected one are duplicates; further either side, the
 * other end began a new sequence (as the gateway's link). */
#define SEQ_WINDOW 1024u
/* A sequence's first good frame may follow a NACKed one this close behind it. */
#define START_LOOKBACK 8u
/* How long a held frame waits for a missing one: the sender's every retransmission, and one
 * more period. */
#define GAP_MS ((uint32_t)MCP_MS720_RETRANSMIT_MS * (MCP_MS720_RETRIES + 2u))

static int due(uint32_t now, uint32_t when)
{
    return (int32_t)(now - when) >= 0;
}

static void send_bare(mcp_link_t *link, uint8_t msg_type, uint32_t seq)
{
    uint8_t wire[MCP_MS720_OVERHEAD];
    mcp_ms720_encode(wire, msg_type, seq, NULL, 0);
    link->write(link->write_ctx, wire, sizeof wire);
}

static void transmit(mcp_link_t *link, mcp_tx_slot_t *slot)
{
    link->write(link->write_ctx, slot->wire, slot->size);
    slot->due = link->now + MCP_MS720_RETRANSMIT_MS;
}

/* Send a slot's frame again, or give it up once it has had its retransmissions. */
static void retry(mcp_link_t *link, mcp_tx_slot_t *slot)
{
    if (slot->tries >= MCP_MS720_RETRIES) {
        slot->size = 0;
        link->stats.lost++;
        return;
    }
    slot->tries++;
    link->stats.retransmits++;
    transmit(link, slot);
}

static mcp_tx_slot_t *sent_slot(mcp_link_t *link, uint32_t seq)
{
    uint8_t i;
    for (i = 0; i < MCP_MS720_WINDOW; i++) {
        if (link->tx[i].size && link->tx[i].seq == seq) {
            return &link->tx[i];
        }
    }
    return NULL;
}

static mcp_rx_slot_t *held_slot(mcp_link_t *link, uint32_t seq)
{
    uint8_t i;
    for (i = 0; i < MCP_MS720_HOLD; i++) {
        if (link->held[i].used && link->held[i].seq == seq) {
            return &link->held[i];
        }
    }
    return NULL;
}

int mcp_link_free(const mcp_link_t *link)
{
    int free_slots = 0;
    uint8_t i;
    for (i = 0; i < MCP_MS720_WINDOW; i++) {
        free_slots += link->tx[i].size == 0;
    }
    return free_slots;
}

/* Deliver held frames from the expected seq on while they follow one another and a send
 * slot is free to answer with; then, if the expected seq is still missing and a held frame
 * has waited past GAP_MS, give the missing seqs up and go on. */
static void drain(mcp_link_t *link)
{
    for (;;) {
        mcp_rx_slot_t *next = held_slot(link, link->expected);
        if (next) {
            if (!mcp_link_free(link)) {
                return;
            }
            link->refusing = 0; /* the missing frame came: refusals start over */
            next->used = 0;
            link->expected++;
            link->deliver(link->ctx, next->seq, next->payload, next->len);
            continue;
        }
        {
            /* the nearest held seq, if one has waited long enough */
            uint32_t nearest = 0;
            uint8_t stale = 0, any = 0, i;
            for (i = 0; i < MCP_MS720_HOLD; i++) {
                mcp_rx_slot_t *h = &link->held[i];
                if (!h->used) {
                    continue;
                }
                if (!any || h->seq - link->expected < nearest - link->expected) {
                    nearest = h->seq;
                }
                any = 1;
                stale |= (uint8_t)due(link->now, h->arrived + GAP_MS);
            }
            if (link->refusing && due(link->now, link->refused_at + GAP_MS)) {
                /* frames were refused for want of room all along: go on from the nearest */
                link->refusing = 0;
                if (!any || link->refused_seq - link->expected < nearest - link->expected) {
                    nearest = link->refused_seq;
                }
                any = stale = 1;
            }
            if (!any || !stale) {
                return;
            }
            link->stats.gaps_skipped += nearest - link->expected;
            link->expected = nearest;
        }
    }
}

static uint32_t start_of(const mcp_link_t *link, uint32_t seq)
{
    if (link->have_nacked) {
        uint32_t behind = seq - link->last_nacked;
        if (behind > 0 && behind <= START_LOOKBACK) {
            return link->last_nacked;
        }
    }
    return seq;
}

/* A control or data frame received: take it (acknowledge and hold it), or refuse it. */
static void take(mcp_link_t *link, uint32_t seq, const uint8_t *payload, uint16_t len)
{
    uint32_t ahead;
    mcp_rx_slot_t *slot = NULL;
    uint8_t i;
    if (!link->have_expected) {
        link->expected = start_of(link, seq);
        link->have_expected = 1;
    }
    ahead = seq - link->expected;
    if (ahead >= 0u - SEQ_WINDOW || held_slot(link, seq)) {
        link->stats.duplicates++;
        link->stats.acks_out++;
        send_bare(link, MCP_MSG_ACK, seq);
        return;
    }
    if (ahead >= SEQ_WINDOW) { /* far from everything: a new sequence */
        link->stats.restarts++;
        for (i = 0; i < MCP_MS720_HOLD; i++) {
            link->held[i].used = 0;
        }
        link->expected = start_of(link, seq);
        ahead = seq - link->expected;
    }
    if (ahead < MCP_MS720_HOLD) {
        for (i = 0; i < MCP_MS720_HOLD && !slot; i++) {
            if (!link->held[i].used) {
                slot = &link->held[i];
            }
        }
    }
    if (!slot) {
        /* Not acknowledged: sent again later. If the expected frame never comes, the
         * refusals start the gap timer as held frames would (see drain). */
        link->stats.refused++;
        if (!link->refusing || seq - link->expected < link->refused_seq - link->expected) {
            link->refused_seq = seq;
        }
        if (!link->refusing) {
            link->refused_at = link->now;
            link->refusing = 1;
        }
        return;
    }
    if (ahead) {
        link->stats.reordered++;
    }
    mcp_copy(slot->payload, payload, len);
    slot->len = len;
    slot->seq = seq;
    slot->arrived = link->now;
    slot->used = 1;
    link->stats.acks_out++;
    send_bare(link, MCP_MSG_ACK, seq);
}

static void on_frame(void *ctx, uint8_t msg_type, uint32_t seq, const uint8_t *payload,
                     uint16_t len)
{
    mcp_link_t *link = (mcp_link_t *)ctx;
    mcp_tx_slot_t *slot;
    switch (msg_type) {
    case MCP_MSG_ACK:
        link->stats.acks_in++;
        slot = sent_slot(link, seq);
        if (slot) {
            slot->size = 0;
        }
        break;
    case MCP_MSG_NACK:
        link->stats.nacks_in++;
        slot = sent_slot(link, seq);
        if (slot) {
            retry(link, slot);
        }
        break;
    case MCP_MSG_CONTROL:
    case MCP_MSG_DATA:
        if (len) {
            take(link, seq, payload, len);
        }
        break;
    default:
        break;
    }
}

static void on_bad(void *ctx, uint32_t seq)
{
    mcp_link_t *link = (mcp_link_t *)ctx;
    link->stats.nacks_out++;
    link->last_nacked = seq;
    link->have_nacked = 1;
    send_bare(link, MCP_MSG_NACK, seq);
}

void mcp_link_init(mcp_link_t *link, mcp_write_fn write, void *write_ctx,
                   mcp_deliver_fn deliver, void *ctx, uint32_t first_seq)
{
    mcp_zero(link, sizeof *link);
    mcp_ms720_deframer_init(&link->rx, on_frame, on_bad, link);
    link->write = write;
    link->write_ctx = write_ctx;
    link->deliver = deliver;
    link->ctx = ctx;
    link->next_seq = first_seq;
}

void mcp_link_feed(mcp_link_t *link, const uint8_t *data, size_t len, uint32_t now)
{
    link->now = now;
    mcp_ms720_deframer_feed(&link->rx, data, len, now);
    drain(link);
}

void mcp_link_poll(mcp_link_t *link, uint32_t now)
{
    uint8_t i;
    link->now = now;
    mcp_ms720_deframer_expire(&link->rx, now);
    for (i = 0; i < MCP_MS720_WINDOW; i++) {
        mcp_tx_slot_t *slot = &link->tx[i];
        if (slot->size && due(now, slot->due)) {
            retry(link, slot);
        }
    }
    drain(link);
}

mcp_tx_slot_t *mcp_link_begin(mcp_link_t *link, uint16_t payload_len)
{
    uint8_t i;
    if (payload_len > MCP_MS720_MAX_PAYLOAD) {
        return NULL;
    }
    for (i = 0; i < MCP_MS720_WINDOW; i++) {
        mcp_tx_slot_t *slot = &link->tx[i];
        if (!slot->size) {
            slot->wire[0] = MCP_MS720_SYNC0;
            slot->wire[1] = MCP_MS720_SYNC1;
            slot->wire[2] = MCP_MS720_SYNC0;
            slot->wire[3] = MCP_MS720_SYNC1;
            mcp_put_u16(slot->wire + 4, payload_len);
            slot->wire[6] = MCP_MSG_DATA;
            slot->seq = link->next_seq++;
            mcp_put_u32(slot->wire + 7, slot->seq);
            slot->size = MCP_MS720_HEADER;
            slot->tries = 0;
            link->out = slot;
            return slot;
        }
    }
    return NULL;
}

void mcp_link_put(mcp_link_t *link, const uint8_t *data, uint16_t len)
{
    mcp_tx_slot_t *slot = link->out;
    if (len) { /* data may be NULL then */
        mcp_copy(slot->wire + slot->size, data, len);
    }
    slot->size = (uint16_t)(slot->size + len);
}

uint32_t mcp_link_end(mcp_link_t *link)
{
    mcp_tx_slot_t *slot = link->out;
    uint16_t crc = mcp_crc16(MCP_CRC16_INIT, slot->wire + 4, (size_t)slot->size - 4);
    mcp_put_u16(slot->wire + slot->size, crc);
    slot->size = (uint16_t)(slot->size + 2);
    link->out = NULL;
    link->stats.sent++;
    transmit(link, slot);
    return slot->seq;
}

#endif
