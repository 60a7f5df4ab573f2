/* env-sensor: the example firmware, the `env-sensor` profile of spec section 3 (the same
 * as the simulator's): STATUS every interval_ms with drifting values; keys interval_ms
 * (u32 rw, 10..3600000), name (UTF-8 rw, at most 32 bytes) and fw_build (u32 read-only).
 * Built for every board and both frame profiles (MCP_MS720 = 0 or 1) from this one file. */
#include "board.h"
#include "mcp.h"

#define FW_BUILD 4242u

static uint32_t interval_ms = 1000;
static char name[33] = "env-sensor";
static uint32_t fw_build = FW_BUILD;

static const mcp_key_t keys[] = {
    {0x0001, MCP_T_U32, MCP_RW, 10, 3600000u, &interval_ms, 0},
    {0x0002, MCP_T_UTF8, MCP_RW, 0, 32, name, 0},
    {0x0003, MCP_T_U32, MCP_RO, 0, 0xFFFFFFFFu, &fw_build, 0},
};

static const char *const caps[] = {"status", "read", "write"};

static mcp_device_t dev;
static mcp_device_config_t cfg;
/* STATUS is sampled at a fixed rate, the k-th one interval_ms x k after boot, and carries
 * the values of its due time: one the link cannot take at once (ms720, the window full) goes
 * out as soon as it can, late but as sampled. While interval_ms stays 1000, STATUS k says
 * uptime_s k, so every STATUS can be told apart and counted. */
static uint32_t last_due, next_due;
static uint8_t log_pending;

/* A triangle wave: 0 .. span .. 0 over 2 x span steps. */
static int32_t triangle(uint32_t step, uint32_t span)
{
    uint32_t at = step % (2u * span);
    return (int32_t)(at < span ? at : 2u * span - at);
}

/* The STATUS values are a function of uptime_s alone, so a test can check every one:
 * temperature 21.50 C +- 1.50 (drifting 0.05 C/s), humidity 45.00 % + 0..10 (0.2 %/s),
 * battery 3300 mV falling 1 mV a minute to 2900. */
static void status_payload(uint8_t out[10], uint32_t uptime_s)
{
    int32_t temperature = 2150 - 150 + 5 * triangle(uptime_s, 60);
    uint32_t humidity = 4500u + 20u * (uint32_t)triangle(uptime_s, 50);
    uint32_t drop = uptime_s / 60u;
    uint32_t battery = 3300u - (drop > 400u ? 400u : drop);
    mcp_put_u16(out, (uint16_t)(int16_t)temperature);
    mcp_put_u16(out + 2, (uint16_t)humidity);
    mcp_put_u16(out + 4, (uint16_t)battery);
    mcp_put_u32(out + 6, uptime_s);
}

static void on_event(void *ctx, uint8_t event, uint16_t arg)
{
    (void)ctx;
    if (event == MCP_EV_REGISTERED) {
        log_pending = 1;
    } else if (event == MCP_EV_WRITTEN && arg == 0x0001) {
        next_due = last_due + interval_ms; /* a new period takes effect at once */
    }
}

static void app_poll(uint32_t now)
{
    if (log_pending && mcp_device_can_send(&dev)) {
        log_pending = 0;
        mcp_device_log(&dev, 1, "env-sensor up");
    }
    if ((int32_t)(now - next_due) >= 0 && mcp_device_can_send(&dev)) {
        uint8_t payload[10];
        status_payload(payload, (next_due - dev.booted) / 1000u);
        if (mcp_device_status(&dev, payload, sizeof payload) == MCP_SENT) {
            last_due = next_due;
            next_due += interval_ms;
            if ((int32_t)(now - next_due) >= (int32_t)(60u * interval_ms)) {
                next_due = now; /* a minute behind (a line down): catch up no further */
            }
        }
    }
}

int main(int argc, char **argv)
{
    uint8_t buf[64];
    board_init(argc, argv);
    board_uid(cfg.uid);
    cfg.fw[0] = 1;
    cfg.fw[1] = 0;
    cfg.fw[2] = 0;
    cfg.model = "env-sensor";
    cfg.caps = caps;
    cfg.caps_count = sizeof caps / sizeof caps[0];
    cfg.keys = keys;
    cfg.keys_count = sizeof keys / sizeof keys[0];
    cfg.write = board_write;
    cfg.on_event = on_event;
    cfg.send_hello = 1;
    cfg.first_seq = board_entropy();
    mcp_device_init(&dev, &cfg, board_millis());
    last_due = dev.booted;
    next_due = dev.booted + interval_ms;
    for (;;) {
        size_t n = board_read(buf, sizeof buf);
        uint32_t now = board_millis();
        if (n) {
            mcp_device_feed(&dev, buf, n, now);
        }
        mcp_device_poll(&dev, now);
        app_poll(now);
        if (!n) {
            board_idle();
        }
    }
}
