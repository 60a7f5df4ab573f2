/* posix board: the firmware's UART is a pseudo-terminal, for development and tests.
 *
 *   env-sensor [--link PATH] [--uid HEX16]
 *
 * Prints "pty /dev/pts/N" on stdout once the line is up (and makes PATH a symlink to it);
 * the gateway or the conformance kit opens that path as a serial port. SIGTERM/SIGINT end
 * the program cleanly (the symlink is removed). */
#define _XOPEN_SOURCE 600
#define _DEFAULT_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "board.h"

static int master = -1;
static int slave = -1; /* kept open: a reader closing its end must not hang the line up */
static const char *link_path;
static uint8_t uid[8] = {'p', 'o', 's', 'i', 'x', 0, 0, 1};
static struct timespec boot;

static void fail(const char *what)
{
    fprintf(stderr, "board: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void on_signal(int sig)
{
    (void)sig;
    if (link_path) {
        unlink(link_path);
    }
    _exit(0);
}

static int parse_uid(const char *hex)
{
    unsigned i;
    if (strlen(hex) != 16) {
        return -1;
    }
    for (i = 0; i < 8; i++) {
        unsigned byte;
        if (sscanf(hex + 2 * i, "%2x", &byte) != 1) {
            return -1;
        }
        uid[i] = (uint8_t)byte;
    }
    return 0;
}

void board_init(int argc, char **argv)
{
    struct termios tio;
    const char *name;
    int i;
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--link") && i + 1 < argc) {
            link_path = argv[++i];
        } else if (!strcmp(argv[i], "--uid") && i + 1 < argc && parse_uid(argv[i + 1]) == 0) {
            i++;
        } else {
            fprintf(stderr, "usage: %s [--link PATH] [--uid HEX16]\n", argv[0]);
            exit(2);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &boot);
    master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || grantpt(master) || unlockpt(master)) {
        fail("posix_openpt");
    }
    name = ptsname(master);
    slave = open(name, O_RDWR | O_NOCTTY);
    if (slave < 0 || tcgetattr(slave, &tio)) {
        fail(name);
    }
    cfmakeraw(&tio);
    tcsetattr(slave, TCSANOW, &tio);
    fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK);
    if (link_path) {
        unlink(link_path);
        if (symlink(name, link_path)) {
            fail(link_path);
        }
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);
    printf("pty %s\n", name);
    fflush(stdout);
}

uint32_t board_millis(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint32_t)((now.tv_sec - boot.tv_sec) * 1000 + (now.tv_nsec - boot.tv_nsec) / 1000000);
}

size_t board_read(uint8_t *buf, size_t max)
{
    ssize_t n = read(master, buf, max);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR && errno != EIO) {
            fail("read");
        }
        return 0;
    }
    return (size_t)n;
}

void board_write(void *ctx, const uint8_t *data, size_t len)
{
    int flushed = 0;
    (void)ctx;
    while (len) {
        ssize_t n = write(master, data, len);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN && !flushed) {
                /* Nobody reads the line (its buffer is full of old output): a UART's bytes
                 * would be gone too. Drop them and go on. */
                tcflush(slave, TCIFLUSH);
                flushed = 1;
                continue;
            }
            if (errno == EAGAIN) {
                return;
            }
            fail("write");
        }
        data += n;
        len -= (size_t)n;
    }
}

void board_uid(uint8_t out[8])
{
    memcpy(out, uid, 8);
}

void board_idle(void)
{
    struct pollfd in = {0, POLLIN, 0};
    in.fd = master;
    poll(&in, 1, 1);
}

uint32_t board_entropy(void)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (uint32_t)now.tv_nsec ^ (uint32_t)now.tv_sec * 2654435761u ^ (uint32_t)getpid();
}
