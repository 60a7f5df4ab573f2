/* mcp_device.c - the device: registration, liveness, READ/WRITE, commands, STATUS and LOG. */
#include "mcp_internal.h"

/* ------------------------------------------------------------------ sending
 * On mcp a frame streams to the port in three writes (no buffer); on ms720 it is built in a
 * window slot, kept there for retransmission, and a response is tagged with the seq of its
 * request. */

#if MCP_MS720
/* Responses and NACK carry the seq of the request they answer (spec section 4). */
static int is_response(uint8_t cmd_id)
{
    return (cmd_id & 0x80) != 0 || cmd_id == MCP_NACK;
}
#endif

static int send_frame(mcp_device_t *dev, uint8_t cmd_id, const uint8_t *payload, uint16_t len)
{
#if MCP_MS720
    uint8_t tag[4];
    int tagged = is_response(cmd_id);
#else
    uint8_t head[4];
    uint8_t check;
#endif
    if (len > MCP_MAX_PAYLOAD) {
        return MCP_TOO_BIG;
    }
#if MCP_MS720
    if (!mcp_link_begin(&dev->link, (uint16_t)(len + 1 + (tagged ? 4 : 0)))) {
        return MCP_BUSY;
    }
    mcp_link_put(&dev->link, &cmd_id, 1);
    if (tagged) {
        mcp_put_u32(tag, dev->request_seq);
        mcp_link_put(&dev->link, tag, 4);
    }
    mcp_link_put(&dev->link, payload, len);
    mcp_link_end(&dev->link);
#else
    head[0] = MCP_HEADER;
    head[1] = cmd_id;
    mcp_put_u16(head + 2, len);
    check = mcp_xor(mcp_xor(0, head + 1, 3), payload, len);
    dev->cfg->write(dev->cfg->ctx, head, sizeof head);
    if (len) {
        dev->cfg->write(dev->cfg->ctx, payload, len);
    }
    dev->cfg->write(dev->cfg->ctx, &check, 1);
#endif
    return MCP_SENT;
}

static void nack(mcp_device_t *dev, uint8_t rejected, uint8_t code)
{
    uint8_t payload[2];
    payload[0] = rejected;
    payload[1] = code;
    send_frame(dev, MCP_NACK, payload, 2);
}

static void event(mcp_device_t *dev, uint8_t what, uint16_t arg)
{
    if (dev->cfg->on_event) {
        dev->cfg->on_event(dev->cfg->ctx, what, arg);
    }
}

/* ------------------------------------------------------------------ registration */

/* The HELLO's strings: the model (at most 32 bytes), then each capability. */
static const char *hello_string(const mcp_device_config_t *cfg, int i, uint8_t *len)
{
    const char *text = i < 0 ? cfg->model : cfg->caps[i];
    size_t n = mcp_strlen(text);
    size_t max = i < 0 ? 32 : 255;
    *len = (uint8_t)(n > max ? max : n);
    return text;
}

static int send_hello(mcp_device_t *dev)
{
    const mcp_device_config_t *cfg = dev->cfg;
    uint8_t p[MCP_MAX_PAYLOAD];
    uint16_t at = 12;
    int i;
    p[0] = 1; /* proto */
    mcp_copy(p + 1, cfg->uid, 8);
    mcp_copy(p + 9, cfg->fw, 3);
    for (i = -1; i < cfg->caps_count; i++) {
        uint8_t n;
        const char *text = hello_string(cfg, i, &n);
        if (at + 2 + n > MCP_MAX_PAYLOAD) {
            return MCP_TOO_BIG;
        }
        p[at++] = n;
        mcp_copy(p + at, text, n);
        at = (uint16_t)(at + n);
        if (i < 0) {
            p[at++] = cfg->caps_count;
        }
    }
    return send_frame(dev, MCP_HELLO, p, at);
}

static void on_hello_ack(mcp_device_t *dev, const uint8_t *p, uint16_t len)
{
    if (len != 4) {
        return;
    }
    dev->node_id = mcp_get_u16(p);
    dev->heartbeat_s = mcp_get_u16(p + 2);
    dev->hello_due = 0;
    dev->ping_due = 0;
    dev->next_ping = dev->now + (uint32_t)dev->heartbeat_s * 1000u;
    if (!dev->registered) {
        dev->registered = 1;
        event(dev, MCP_EV_REGISTERED, dev->node_id);
    }
}

static void unregistered(mcp_device_t *dev)
{
    int was = dev->registered;
    dev->registered = 0;
    if (dev->cfg->send_hello) {
        dev->hello_due = 1; /* at once */
        dev->next_hello = dev->now;
    }
    if (was) {
        event(dev, MCP_EV_UNREGISTERED, 0);
    }
}

/* ------------------------------------------------------------------ keys */

static const mcp_key_t *find_key(const mcp_device_t *dev, uint16_t id)
{
    uint8_t i;
    for (i = 0; i < dev->cfg->keys_count; i++) {
        if (dev->cfg->keys[i].id == id) {
            return &dev->cfg->keys[i];
        }
    }
    return NULL;
}

/* Bytes of an integer type's value (0: UTF8 and BYTES), in enum mcp_type order. */
static const uint8_t INT_SIZE[] = {1, 2, 4, 1, 2, 4, 1, 0, 0};

static uint32_t int_value(const mcp_key_t *key, uint8_t size)
{
    return size == 1 ? *(const uint8_t *)key->value
         : size == 2 ? *(const uint16_t *)key->value : *(const uint32_t *)key->value;
}

/* The key's value as it goes on the wire, into out (MCP_MAX_PAYLOAD - 2 bytes of room). */
static uint16_t key_value(const mcp_key_t *key, uint8_t *out)
{
    uint8_t size = INT_SIZE[key->type];
    uint16_t n;
    if (size) {
        uint32_t v = int_value(key, size);
        for (n = 0; n < size; n++, v >>= 8) {
            out[n] = (uint8_t)v;
        }
        return size;
    }
    n = (uint16_t)(key->type == MCP_T_UTF8 ? mcp_strlen((const char *)key->value)
                                          : key->length ? *key->length : 0);
    if (n > MCP_MAX_PAYLOAD - 2) {
        n = MCP_MAX_PAYLOAD - 2;
    }
    mcp_copy(out, key->value, n);
    return n;
}

/* Well-formed UTF-8 without NUL: no stray continuation byte, no overlong form, no
 * surrogate, nothing above U+10FFFF (what the gateway's decoder accepts). */
static int utf8_valid(const uint8_t *s, uint16_t len)
{
    while (len) {
        uint8_t c = *s++;
        uint8_t n = (uint8_t)((c >= 0xE0) + (c >= 0xF0) + 1); /* continuation bytes */
        uint32_t cp;
        len--;
        if (c < 0x80) {
            if (!c) {
                return 0;
            }
            continue;
        }
        if (c < 0xC2 || c > 0xF4 || n > len) {
            return 0;
        }
        cp = c & (0x3Fu >> n);
        len = (uint16_t)(len - n);
        while (n--) {
            if ((*s & 0xC0) != 0x80) {
                return 0;
            }
            cp = cp << 6 | (*s++ & 0x3Fu);
        }
        /* the lead byte's n was recomputed into cp's range: overlong, surrogate, too high */
        if (cp < (c >= 0xF0 ? 0x10000u : c >= 0xE0 ? 0x800u : 0x80u) ||
            (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) {
            return 0;
        }
    }
    return 1;
}

/* Store a WRITE's value; returns the WRITE_ACK status. */
static uint8_t write_key(const mcp_key_t *key, const uint8_t *v, uint16_t len)
{
    uint8_t size = INT_SIZE[key->type];
    if (key->access != MCP_RW) {
        return MCP_E_DENIED;
    }
    if (size) {
        uint32_t raw = 0;
        uint8_t i;
        if (len != size) {
            return MCP_E_BAD_PAYLOAD;
        }
        for (i = size; i--;) {
            raw = raw << 8 | v[i];
        }
        if (key->type >= MCP_T_I8 && key->type <= MCP_T_I32) {
            uint32_t sign = 1u << (8 * size - 1);
            int32_t value = (int32_t)((raw ^ sign) - sign); /* sign-extended */
            if (value < key->min || value > (int32_t)key->max) {
                return MCP_E_BAD_PAYLOAD;
            }
        } else if (raw < (uint32_t)key->min || raw > key->max ||
                   (key->type == MCP_T_BOOL && raw > 1)) {
            return MCP_E_BAD_PAYLOAD;
        }
        if (size == 1) {
            *(uint8_t *)key->value = (uint8_t)raw;
        } else if (size == 2) {
            *(uint16_t *)key->value = (uint16_t)raw;
        } else {
            *(uint32_t *)key->value = raw;
        }
        return MCP_OK;
    }
    if (len > key->max || (key->type == MCP_T_UTF8 && !utf8_valid(v, len))) {
        return MCP_E_BAD_PAYLOAD;
    }
    mcp_copy(key->value, v, len);
    if (key->type == MCP_T_UTF8) {
        ((char *)key->value)[len] = '\0';
    } else if (key->length) {
        *key->length = (uint8_t)len;
    }
    return MCP_OK;
}

static void on_read(mcp_device_t *dev, const uint8_t *p, uint16_t len)
{
    uint8_t resp[MCP_MAX_PAYLOAD];
    const mcp_key_t *key = len == 2 ? find_key(dev, mcp_get_u16(p)) : NULL;
    if (!key) {
        nack(dev, MCP_READ, MCP_E_BAD_PAYLOAD);
        return;
    }
    mcp_put_u16(resp, key->id);
    send_frame(dev, MCP_READ_RESP, resp, (uint16_t)(2 + key_value(key, resp + 2)));
}

static void on_write(mcp_device_t *dev, const uint8_t *p, uint16_t len)
{
    uint8_t ack[3];
    const mcp_key_t *key;
    if (len < 2) {
        nack(dev, MCP_WRITE, MCP_E_BAD_PAYLOAD);
        return;
    }
    key = find_key(dev, mcp_get_u16(p));
    ack[0] = p[0];
    ack[1] = p[1];
    ack[2] = key ? write_key(key, p + 2, (uint16_t)(len - 2)) : MCP_E_BAD_PAYLOAD;
    send_frame(dev, MCP_WRITE_ACK, ack, 3);
    if (ack[2] == MCP_OK) {
        event(dev, MCP_EV_WRITTEN, key->id);
    }
}

static void on_command(mcp_device_t *dev, uint8_t cmd_id, const uint8_t *p, uint16_t len)
{
    uint8_t resp[MCP_MAX_PAYLOAD];
    uint16_t resp_len = 0;
    uint8_t i;
    for (i = 0; i < dev->cfg->commands_count; i++) {
        const mcp_command_t *command = &dev->cfg->commands[i];
        if (command->cmd_id == cmd_id) {
            uint8_t code = command->handler(dev->cfg->ctx, cmd_id, p, len, resp, &resp_len);
            if (code == MCP_OK && resp_len <= MCP_MAX_PAYLOAD) {
                send_frame(dev, (uint8_t)(cmd_id | 0x80), resp, resp_len);
            } else {
                nack(dev, cmd_id, code == MCP_OK ? MCP_E_INTERNAL : code);
            }
            return;
        }
    }
    nack(dev, cmd_id, MCP_E_UNKNOWN_COMMAND);
}

/* ------------------------------------------------------------------ dispatch */

static void on_frame(mcp_device_t *dev, uint8_t cmd_id, const uint8_t *p, uint16_t len)
{
    switch (cmd_id) {
    case MCP_HELLO_ACK:
        on_hello_ack(dev, p, len);
        break;
    case MCP_PING:
        send_frame(dev, MCP_PONG, NULL, 0);
        break;
    case MCP_NACK:
        if (len == 2 && p[1] == MCP_E_NOT_REGISTERED) {
            unregistered(dev);
        }
        break;
    case MCP_READ:
        on_read(dev, p, len);
        break;
    case MCP_WRITE:
        on_write(dev, p, len);
        break;
    case MCP_STATUS:
    case MCP_LOG:
        break; /* unsolicited frames are never answered */
    default:
        if (cmd_id < 0x80) {
            on_command(dev, cmd_id, p, len); /* NACK 1 if the table has no handler */
        }
        break; /* a response nobody waits for */
    }
}

#if MCP_MS720
static void deliver(void *ctx, uint32_t seq, const uint8_t *payload, uint16_t len)
{
    mcp_device_t *dev = (mcp_device_t *)ctx;
    uint8_t cmd_id = payload[0];
    payload++;
    len--;
    if (is_response(cmd_id)) { /* the request's seq comes first: not ours to keep */
        uint16_t skip = len < 4 ? len : 4;
        payload += skip;
        len = (uint16_t)(len - skip);
    }
    dev->request_seq = seq;
    on_frame(dev, cmd_id, payload, len);
}
#else
static void deliver(void *ctx, uint8_t cmd_id, const uint8_t *payload, uint16_t len)
{
    on_frame((mcp_device_t *)ctx, cmd_id, payload, len);
}
#endif

/* ------------------------------------------------------------------ API */

void mcp_device_init(mcp_device_t *dev, const mcp_device_config_t *cfg, uint32_t now)
{
    mcp_zero(dev, sizeof *dev);
    dev->cfg = cfg;
    dev->now = now;
    dev->booted = now;
    dev->hello_due = cfg->send_hello;
    dev->next_hello = now;
#if MCP_MS720
    mcp_link_init(&dev->link, cfg->write, cfg->ctx, deliver, dev, cfg->first_seq);
#else
    mcp_deframer_init(&dev->rx, deliver, dev);
#endif
}

void mcp_device_feed(mcp_device_t *dev, const uint8_t *data, size_t len, uint32_t now)
{
    dev->now = now;
#if MCP_MS720
    mcp_link_feed(&dev->link, data, len, now);
#else
    mcp_deframer_feed(&dev->rx, data, len, now);
#endif
}

static int due(uint32_t now, uint32_t when)
{
    return (int32_t)(now - when) >= 0;
}

void mcp_device_poll(mcp_device_t *dev, uint32_t now)
{
    dev->now = now;
#if MCP_MS720
    mcp_link_poll(&dev->link, now);
#else
    mcp_deframer_expire(&dev->rx, now);
#endif
    if (!dev->registered && dev->cfg->send_hello && due(now, dev->next_hello)) {
        dev->hello_due = 1;
        dev->next_hello = now + MCP_HELLO_RETRY_MS;
    }
    if (dev->hello_due && send_hello(dev) != MCP_BUSY) {
        dev->hello_due = 0;
    }
    if (dev->registered && dev->heartbeat_s && due(now, dev->next_ping)) {
        dev->ping_due = 1;
        dev->next_ping = now + (uint32_t)dev->heartbeat_s * 1000u;
    }
    if (dev->ping_due) {
        uint8_t uptime[4];
        mcp_put_u32(uptime, (now - dev->booted) / 1000u);
        if (send_frame(dev, MCP_PING, uptime, 4) != MCP_BUSY) {
            dev->ping_due = 0;
        }
    }
}

int mcp_device_can_send(const mcp_device_t *dev)
{
#if MCP_MS720
    return mcp_link_free(&dev->link) > 0;
#else
    (void)dev;
    return 1;
#endif
}

int mcp_device_send(mcp_device_t *dev, uint8_t cmd_id, const uint8_t *payload, uint16_t len)
{
    return send_frame(dev, cmd_id, payload, len);
}

int mcp_device_status(mcp_device_t *dev, const uint8_t *payload, uint16_t len)
{
    return send_frame(dev, MCP_STATUS, payload, len);
}

int mcp_device_log(mcp_device_t *dev, uint8_t level, const char *text)
{
    uint8_t p[MCP_MAX_PAYLOAD];
    uint16_t n = (uint16_t)mcp_strlen(text);
    if (n > MCP_MAX_PAYLOAD - 1) {
        n = MCP_MAX_PAYLOAD - 1;
        while (n && (text[n] & 0xC0) == 0x80) {
            n--; /* do not cut a UTF-8 character in two */
        }
    }
    p[0] = level;
    mcp_copy(p + 1, text, n);
    return send_frame(dev, MCP_LOG, p, (uint16_t)(n + 1));
}

const mcp_stats_t *mcp_device_stats(const mcp_device_t *dev)
{
#if MCP_MS720
    return &dev->link.rx.stats;
#else
    return &dev->rx.stats;
#endif
}
