/*
 * board.h - what a board port gives the example firmware (not the SDK core: the core is
 * sans-IO and never calls these; the example's main loop does).
 *
 * A port is one C file per board: ports/<board>/board.c. It provides exactly these.
 */
#ifndef MCP_BOARD_H
#define MCP_BOARD_H

#include <stddef.h>
#include <stdint.h>

/* Set up the clock, the UART and anything else. argc/argv are the program's arguments on
 * posix and 0/NULL on a microcontroller. */
void board_init(int argc, char **argv);

/* Milliseconds since boot; wraps at 2^32. */
uint32_t board_millis(void);

/* Copy up to max received bytes into buf; returns how many (0 if none). Never blocks.
 * Bytes arriving between calls are kept (an RX interrupt into a ring buffer, or a FIFO
 * polled often enough), so a caller that calls this every loop loses nothing. */
size_t board_read(uint8_t *buf, size_t max);

/* Write len bytes to the UART; returns when all are handed to the hardware. The signature
 * is the SDK's write callback's (ctx is unused by the ports). */
void board_write(void *ctx, const uint8_t *data, size_t len);

/* An 8-byte id unique to this board (a chip serial, or one made up once per port). */
void board_uid(uint8_t uid[8]);

/* Wait a little (up to about 1 ms) for something to happen: sleep until an interrupt, or
 * poll(2) on posix. Called when the loop has nothing to do. */
void board_idle(void);

/* A number that differs from boot to boot (posix: time and pid; ATmega328P: a boot
 * counter in EEPROM x 2^20); the example uses it for its first ms720 seq, so a reset the
 * gateway did not see (the line kept open) starts a new sequence. A board with neither
 * entropy nor non-volatile memory returns a constant (lm3s6965 under QEMU). */
uint32_t board_entropy(void);

#endif
