/* size_main.c - the smallest program that uses all of the device core, for `make size`.
 * Built with -DEMPTY it uses none of it: the difference is the core's flash and RAM. */
#include "mcp.h"

#ifndef EMPTY
static void write(void *ctx, const uint8_t *data, size_t len)
{
    (void)ctx;
    while (len--) {
        *(volatile uint8_t *)0x20000000 = *data++; /* a UART data register, as far as size goes */
    }
}

static uint32_t value;
static const mcp_key_t keys[] = {{1, MCP_T_U32, MCP_RW, 0, 100, &value, 0}};
static mcp_device_config_t cfg;
static mcp_device_t dev;
#endif

int main(void)
{
    volatile uint32_t now = 0;
#ifndef EMPTY
    static const uint8_t status[4] = {0};
    uint8_t byte = 0;
    cfg.model = "m";
    cfg.keys = keys;
    cfg.keys_count = 1;
    cfg.write = write;
    cfg.send_hello = 1;
    mcp_device_init(&dev, &cfg, now);
    for (;;) {
        byte = *(volatile uint8_t *)0x20000004;
        mcp_device_feed(&dev, &byte, 1, now);
        mcp_device_poll(&dev, now);
        if (mcp_device_can_send(&dev)) {
            mcp_device_status(&dev, status, sizeof status);
            mcp_device_log(&dev, 1, "x");
        }
    }
#else
    for (;;) {
        now++;
    }
#endif
}
