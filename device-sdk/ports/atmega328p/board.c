/*
 * board.c - board port for the ATmega328P at 16 MHz (Arduino Uno; simavr). Implements
 * ports/board.h.
 *
 * USART0: 115200 8N1 with U2X0 (UBRR0 = 16: 117 647 baud, +2.1 %, the best a 16 MHz
 * crystal gives); the RX-complete interrupt moves bytes into a 256-byte ring buffer that
 * board_read drains. TX is polled (board_write waits for UDRE0).
 * Timer0 in CTC mode, clock / 64, OCR0A = 249: an interrupt every 1 ms for board_millis.
 * board_idle sleeps in idle mode (the UART and Timer0 keep running and wake it).
 *
 * The ATmega328P has no readable serial number: board_uid is a constant made up for this
 * port. board_entropy counts boots in EEPROM (address 0, a u16; 100 000 writes, so as
 * many boots) and returns count x 2^20: each boot's first ms720 seq is a million past the
 * last one's, so a gateway that kept the line open across a reset (an Uno's USB bridge
 * does) sees a new sequence, not duplicates of the old one.
 *
 * simavr note: its UART model tells a connected part (uart_pty) that there is room for
 * more input only when the firmware reads UDR0 or UCSR0A while its input FIFO is empty.
 * The RX interrupt reads UDR0 for every byte, so that is enough; board_init and
 * board_idle also read UCSR0A (harmless on hardware) so input can never stall.
 */
#ifndef F_CPU
#define F_CPU 16000000UL
#endif

#include <avr/eeprom.h>
#include <avr/interrupt.h>
#include <avr/io.h>
#include <avr/sleep.h>

#include "../board.h"

#define BAUD 115200UL
#define UBRR_VALUE ((F_CPU + 4UL * BAUD) / (8UL * BAUD) - 1UL) /* U2X0, rounded: 16 */

/* The ring: head written only by the ISR, tail only by board_read; 8-bit indices wrap
 * by themselves at 256, and an 8-bit load is atomic. */
static volatile uint8_t rx_buf[256];
static volatile uint8_t rx_head;
static volatile uint8_t rx_tail;
static volatile uint16_t rx_dropped; /* bytes lost to a full ring or a UART overrun */

static volatile uint32_t millis;

ISR(USART_RX_vect)
{
    uint8_t status = UCSR0A;
    uint8_t byte = UDR0;
    uint8_t head = rx_head;
    if (status & _BV(DOR0)) {
        rx_dropped++;
    }
    if ((uint8_t)(head + 1u) != rx_tail) {
        rx_buf[head] = byte;
        rx_head = (uint8_t)(head + 1u);
    } else {
        rx_dropped++;
    }
}

ISR(TIMER0_COMPA_vect)
{
    millis++;
}

void board_init(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    cli();
    /* USART0 */
    UCSR0A = _BV(U2X0);
    UBRR0H = (uint8_t)(UBRR_VALUE >> 8);
    UBRR0L = (uint8_t)UBRR_VALUE;
    UCSR0C = _BV(UCSZ01) | _BV(UCSZ00); /* 8N1 */
    UCSR0B = _BV(RXEN0) | _BV(TXEN0) | _BV(RXCIE0);
    /* Timer0: CTC, clk/64, 250 counts = 1 ms */
    TCCR0A = _BV(WGM01);
    TCCR0B = _BV(CS01) | _BV(CS00);
    OCR0A = (uint8_t)(F_CPU / 64UL / 1000UL - 1UL);
    TCNT0 = 0;
    TIMSK0 = _BV(OCIE0A);
    set_sleep_mode(SLEEP_MODE_IDLE);
    (void)UCSR0A; /* see the simavr note above */
    sei();
}

uint32_t board_millis(void)
{
    uint32_t ms;
    uint8_t sreg = SREG;
    cli();
    ms = millis;
    SREG = sreg;
    return ms;
}

size_t board_read(uint8_t *buf, size_t max)
{
    uint8_t tail = rx_tail;
    uint8_t head = rx_head;
    size_t n = 0;
    while (n < max && tail != head) {
        buf[n++] = rx_buf[tail];
        tail = (uint8_t)(tail + 1u);
    }
    rx_tail = tail;
    return n;
}

void board_write(void *ctx, const uint8_t *data, size_t len)
{
    (void)ctx;
    while (len--) {
        while (!(UCSR0A & _BV(UDRE0))) {
        }
        UDR0 = *data++;
    }
}

void board_uid(uint8_t uid[8])
{
    static const uint8_t id[8] = {'M', '3', '2', '8', 'P', 0x00, 0x00, 0x01};
    uint8_t i;
    for (i = 0; i < 8; i++) {
        uid[i] = id[i];
    }
}

void board_idle(void)
{
    (void)UCSR0A; /* see the simavr note above */
    cli();
    if (rx_head == rx_tail) {
        /* sei then sleep: the instruction after sei runs before any pending interrupt,
         * so one arriving here still wakes the sleep instead of being missed. */
        sleep_enable();
        sei();
        sleep_cpu();
        sleep_disable();
    } else {
        sei();
    }
}

#define BOOT_COUNT ((uint16_t *)0) /* EEPROM address 0 */

uint32_t board_entropy(void)
{
    uint16_t boots = (uint16_t)(eeprom_read_word(BOOT_COUNT) + 1u); /* erased: 0xFFFF -> 0 */
    eeprom_update_word(BOOT_COUNT, boots);
    return (uint32_t)boots << 20;
}
