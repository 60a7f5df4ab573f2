/*
 * selftest.c - a board port's self-test firmware, using only board.h.
 *
 * Echoes every byte it receives, and every 1000 ms of board_millis writes "tick N\n"
 * (N = 0, 1, 2, ...). A test sends only bytes with the high bit set (0x80-0xFF), so the
 * echo and the (ASCII) tick lines can be told apart in what comes back.
 */
#include "board.h"

static size_t format_tick(uint8_t *out, uint32_t n)
{
    static const char prefix[] = "tick ";
    uint8_t digits[10];
    size_t len = 0, d = 0, i;
    for (i = 0; prefix[i]; i++) {
        out[len++] = (uint8_t)prefix[i];
    }
    do {
        digits[d++] = (uint8_t)('0' + n % 10u);
        n /= 10u;
    } while (n);
    while (d) {
        out[len++] = digits[--d];
    }
    out[len++] = '\n';
    return len;
}

int main(int argc, char **argv)
{
    uint8_t buf[64];
    uint8_t line[20];
    uint32_t ticks = 0;
    uint32_t next;

    board_init(argc, argv);
    next = board_millis() + 1000u;
    for (;;) {
        int busy = 0;
        size_t n = board_read(buf, sizeof buf);
        if (n) {
            board_write(0, buf, n);
            busy = 1;
        }
        if ((int32_t)(board_millis() - next) >= 0) {
            board_write(0, line, format_tick(line, ticks++));
            next += 1000u;
            busy = 1;
        }
        if (!busy) {
            board_idle();
        }
    }
}
