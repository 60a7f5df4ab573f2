/*
 * simavr_pty - run AVR firmware under simavr with its UART0 on a pty, in real time.
 *
 *   simavr_pty [-m MCU] [-f HZ] FIRMWARE.elf      (defaults: atmega328p, 16000000)
 *
 * Prints exactly one line to stdout, "pty /dev/pts/N", once the pty is ready, then runs
 * the core throttled to wall time: simulated time (cycles / frequency) never runs ahead of
 * CLOCK_MONOTONIC since start, so the firmware's second lasts a second. (simavr alone runs
 * flat out while the core is awake.) An MCU/frequency in the ELF's .mmcu section (simavr's
 * AVR_MCU macro) wins over the defaults but not over -m/-f given explicitly.
 *
 * Exits 0 on SIGTERM or SIGINT; exits 1 with a message on stderr when the core crashes or
 * stops (cpu_Crashed, cpu_Done: e.g. sleeping with interrupts off), or on a bad argument.
 *
 * Flow control: simavr's uart_pty part reads the pty in its own thread into a 512-byte
 * FIFO and feeds the AVR's UART only while the UART says it has room (xon/xoff), so a
 * large write into the pty waits in the pty and that FIFO instead of overrunning the
 * UART; the firmware still has to read at line rate (a ring buffer behind an RX ISR).
 * Output: the part's FIFO towards the pty drops bytes when full, so the core pauses while
 * it is more than half full (a burst after the host stalled the process, a slow reader).
 * The library's chatter (uart_pty's printf lines) goes to stderr, not stdout.
 *
 * Build: gcc -std=c99 -O2 -Wall -Wextra -Werror -pedantic -isystem /usr/include/simavr \
 *            simavr_pty.c -lsimavrparts -lsimavr -lelf -lpthread -lutil
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sim_avr.h>
#include <sim_elf.h>
#include <avr_eeprom.h>
#include <avr_uart.h>
#include <parts/uart_pty.h>

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
    stop_signal = sig;
}

/* simavr calls this while the core sleeps (it has already advanced the cycle count);
 * the default usleeps for each sleep, which drifts. The main loop's deadline does it. */
static void no_sleep(avr_t *avr, avr_cycle_count_t how_long)
{
    (void)avr;
    (void)how_long;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_until_ns(uint64_t t)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(t / 1000000000u);
    ts.tv_nsec = (long)(t % 1000000000u);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
        if (stop_signal) {
            return;
        }
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: simavr_pty [-m MCU] [-f HZ] [-e EEPROM_FILE] FIRMWARE.elf\n"
                    "  -e: the EEPROM's contents are read from the file at start (if it\n"
                    "      exists) and written back at exit, so they survive a restart\n");
    exit(2);
}

static uart_pty_t uart_pty; /* zeroed: xon starts off until the UART asks for bytes */

/* -e FILE: the EEPROM kept in a file across runs, as a chip keeps it across power cycles */
static const char *eeprom_file;

/* The simulated EEPROM itself (AVR_IOCTL_EEPROM_GET with no buffer hands out its memory;
 * its size checks differ between simavr versions, so no size is asked for), or NULL. */
static uint8_t *eeprom_memory(avr_t *avr, uint32_t *size)
{
    avr_eeprom_desc_t desc;
    memset(&desc, 0, sizeof desc);
    avr_ioctl(avr, AVR_IOCTL_EEPROM_GET, &desc); /* returns -1 even when it worked */
    *size = avr->e2end + 1u;
    return desc.ee;
}

static int eeprom_load(avr_t *avr)
{
    uint32_t size;
    uint8_t *ee;
    FILE *f;
    if (!eeprom_file) {
        return 0;
    }
    ee = eeprom_memory(avr, &size);
    if (!ee) {
        fprintf(stderr, "simavr_pty: this MCU has no EEPROM to keep in %s\n", eeprom_file);
        return 1;
    }
    f = fopen(eeprom_file, "rb");
    if (f) { /* no file yet: the EEPROM is erased (0xFF), as a new chip's */
        size_t n = fread(ee, 1, size, f);
        (void)n;
        fclose(f);
    }
    return 0;
}

static int eeprom_save(avr_t *avr)
{
    uint32_t size;
    uint8_t *ee;
    FILE *f;
    if (!eeprom_file) {
        return 0;
    }
    ee = eeprom_memory(avr, &size);
    f = fopen(eeprom_file, "wb");
    if (!ee || !f || fwrite(ee, 1, size, f) != size || fclose(f) != 0) {
        fprintf(stderr, "simavr_pty: cannot write the EEPROM to %s: %s\n", eeprom_file,
                strerror(errno));
        return 1;
    }
    return 0;
}

/* Bytes the firmware sent that uart_pty's thread has not written to the pty yet. Its FIFO
 * drops bytes when full, so the core waits while it is more than half full. */
static unsigned tx_backlog(void)
{
    const uart_pty_fifo_t *f = &uart_pty.port[0].in;
    return ((unsigned)f->write + uart_pty_fifo_fifo_size - f->read) &
           (uart_pty_fifo_fifo_size - 1u);
}

/* Wait (up to 50 ms) for the pty side to take the backlog; nobody reading the pty, the
 * firmware goes on and its output is lost, as on a real board with nothing listening. */
static void drain_tx(void)
{
    int i;
    for (i = 0; i < 250 && tx_backlog() > uart_pty_fifo_fifo_size / 4u && !stop_signal; i++) {
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
    }
}

int main(int argc, char **argv)
{
    const char *mcu = NULL;
    unsigned long freq = 0;
    elf_firmware_t fw;
    avr_t *avr;
    int opt, saved_stdout;
    char link[PATH_MAX];
    ssize_t link_len;
    uint32_t flags = 0;
    struct sigaction sa;
    uint64_t start, hz;
    avr_cycle_count_t start_cycle, next_check, step;

    while ((opt = getopt(argc, argv, "m:f:e:h")) != -1) {
        switch (opt) {
        case 'e':
            eeprom_file = optarg;
            break;
        case 'm':
            mcu = optarg;
            break;
        case 'f': {
            char *end;
            freq = strtoul(optarg, &end, 10);
            if (*end || freq == 0 || freq > 100000000ul) {
                fprintf(stderr, "simavr_pty: bad frequency '%s'\n", optarg);
                return 2;
            }
            break;
        }
        default:
            usage();
        }
    }
    if (optind != argc - 1) {
        usage();
    }

    /* simavr printf()s to stdout (the loader, uart_pty): send all that to stderr until
     * the pty line; stdout is ours. */
    setvbuf(stdout, NULL, _IOLBF, 0); /* the library's lines and ours in order */
    fflush(stdout);
    saved_stdout = dup(STDOUT_FILENO);
    dup2(STDERR_FILENO, STDOUT_FILENO);

    memset(&fw, 0, sizeof fw);
    if (access(argv[optind], R_OK) != 0 || elf_read_firmware(argv[optind], &fw) != 0) {
        fprintf(stderr, "simavr_pty: cannot load %s: %s\n", argv[optind],
                errno ? strerror(errno) : "not an AVR ELF");
        return 1;
    }
    if (mcu) {
        snprintf(fw.mmcu, sizeof fw.mmcu, "%s", mcu);
    } else if (!fw.mmcu[0]) {
        snprintf(fw.mmcu, sizeof fw.mmcu, "%s", "atmega328p");
    }
    if (freq) {
        fw.frequency = (uint32_t)freq;
    } else if (!fw.frequency) {
        fw.frequency = 16000000u;
    }

    avr = avr_make_mcu_by_name(fw.mmcu);
    if (!avr) {
        fprintf(stderr, "simavr_pty: unknown MCU '%s'\n", fw.mmcu);
        return 1;
    }
    avr_init(avr);
    avr_load_firmware(avr, &fw);
    avr->frequency = fw.frequency;
    avr->sleep = no_sleep;
    if (eeprom_load(avr) != 0) {
        return 1;
    }

    uart_pty_init(avr, &uart_pty);
    uart_pty_connect(&uart_pty, '0');
    if (!uart_pty.port[0].s || !uart_pty.port[0].slavename[0]) {
        fprintf(stderr, "simavr_pty: no pty for UART0\n");
        return 1;
    }
    /* The part links /tmp/simavr-uart0 to the pty; another instance may own it next, so
     * remove it if it is ours: the pty path printed below is the interface. */
    link_len = readlink("/tmp/simavr-uart0", link, sizeof link - 1);
    if (link_len > 0) {
        link[link_len] = 0;
        if (strcmp(link, uart_pty.port[0].slavename) == 0) {
            unlink("/tmp/simavr-uart0");
        }
    }
    /* No per-poll usleep in the UART model (it slows a polling TX loop), no line dump. */
    avr_ioctl(avr, AVR_IOCTL_UART_GET_FLAGS('0'), &flags);
    flags &= ~(uint32_t)(AVR_UART_FLAG_POLL_SLEEP | AVR_UART_FLAG_STDIO);
    avr_ioctl(avr, AVR_IOCTL_UART_SET_FLAGS('0'), &flags);

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    fflush(stdout);
    dup2(saved_stdout, STDOUT_FILENO);
    close(saved_stdout);
    printf("pty %s\n", uart_pty.port[0].slavename);
    fflush(stdout);

    hz = avr->frequency;
    step = hz / 2000u; /* look at the clock every 0.5 ms of simulated time */
    start = now_ns();
    start_cycle = avr->cycle;
    next_check = start_cycle + step;
    while (!stop_signal) {
        int state = avr_run(avr);
        if (state == cpu_Done || state == cpu_Crashed) {
            fprintf(stderr, "simavr_pty: the core %s at cycle %llu (pc 0x%04x)\n",
                    state == cpu_Done ? "stopped (cpu_Done: sleeping with interrupts off, "
                                        "or a break)"
                                      : "crashed (cpu_Crashed)",
                    (unsigned long long)avr->cycle, (unsigned)avr->pc);
            eeprom_save(avr);
            return 1;
        }
        if (avr->cycle >= next_check) {
            uint64_t sim;
            if (tx_backlog() > uart_pty_fifo_fifo_size / 2u) {
                drain_tx();
            }
            sim = avr->cycle - start_cycle;
            uint64_t due = start + sim / hz * 1000000000u + sim % hz * 1000000000u / hz;
            if (due > now_ns()) {
                sleep_until_ns(due);
            }
            next_check = avr->cycle + step;
        }
    }
    fprintf(stderr, "simavr_pty: signal %d, exiting\n", (int)stop_signal);
    return eeprom_save(avr);
}
