/*
 * board.c - board port for the TI Stellaris LM3S6965 (Cortex-M3), as on the LM3S6965 EVB
 * and QEMU's -M lm3s6965evb. Implements ports/board.h.
 *
 * Clock: the PLL (400 MHz VCO / 2 = 200 MHz) divided by 4 gives a 50 MHz system clock
 * from the EVB's 8 MHz crystal, set the way the datasheet says (bypass, configure, wait
 * for PLL lock, un-bypass). QEMU models the same register: its system clock is
 * 200 MHz / (SYSDIV + 1), so it runs at 50 MHz too (at reset, SYSDIV = 15: 12.5 MHz).
 * SysTick counts the core clock (QEMU connects no SysTick reference clock), so 1 ms is a
 * reload of 50 000 - 1.
 *
 * UART0 (a PL011 at 0x4000C000, pins PA0/PA1): 115200 8N1, FIFOs on; the RX and RX-timeout
 * interrupts (NVIC IRQ 5) move bytes into a ring buffer that board_read drains. TX is
 * polled (board_write waits for FIFO room).
 *
 * The LM3S6965 has no chip serial: board_uid is a constant made up for this port, and
 * board_entropy a constant (no entropy source).
 */
#include "../board.h"

#define REG(addr) (*(volatile uint32_t *)(addr))

/* System control */
#define SYSCTL_RIS   REG(0x400FE050u)
#define SYSCTL_RCC   REG(0x400FE060u)
#define SYSCTL_RCGC1 REG(0x400FE104u)
#define SYSCTL_RCGC2 REG(0x400FE108u)
#define RCC_MOSCDIS   (1u << 0)
#define RCC_OSCSRC_M  (3u << 4)
#define RCC_XTAL_M    (0xFu << 6)
#define RCC_XTAL_8MHZ (0xEu << 6)
#define RCC_BYPASS    (1u << 11)
#define RCC_OEN       (1u << 12)
#define RCC_PWRDN     (1u << 13)
#define RCC_USESYSDIV (1u << 22)
#define RCC_SYSDIV_M  (0xFu << 23)
#define RCC_SYSDIV_4  (3u << 23) /* 200 MHz / 4 = 50 MHz */
#define RIS_PLLLRIS   (1u << 6)

#define SYSCLK_HZ 50000000u

/* GPIO port A */
#define GPIOA_AFSEL REG(0x40004420u)
#define GPIOA_DEN   REG(0x4000451Cu)

/* UART0 */
#define UART0_DR   REG(0x4000C000u)
#define UART0_RSR  REG(0x4000C004u)
#define UART0_FR   REG(0x4000C018u)
#define UART0_IBRD REG(0x4000C024u)
#define UART0_FBRD REG(0x4000C028u)
#define UART0_LCRH REG(0x4000C02Cu)
#define UART0_CTL  REG(0x4000C030u)
#define UART0_IFLS REG(0x4000C034u)
#define UART0_IM   REG(0x4000C038u)
#define UART0_ICR  REG(0x4000C044u)
#define FR_RXFE (1u << 4)
#define FR_TXFF (1u << 5)
#define LCRH_FEN   (1u << 4)
#define LCRH_WLEN8 (3u << 5)
#define CTL_UARTEN (1u << 0)
#define CTL_TXE    (1u << 8)
#define CTL_RXE    (1u << 9)
#define INT_RX (1u << 4)
#define INT_RT (1u << 6)
#define BAUD 115200u

/* Core: SysTick and NVIC */
#define SYST_CSR   REG(0xE000E010u)
#define SYST_RVR   REG(0xE000E014u)
#define SYST_CVR   REG(0xE000E018u)
#define NVIC_ISER0 REG(0xE000E100u)
#define UART0_IRQ 5u

/* The RX ring: written only by the ISR (head), read only by board_read (tail). */
#define RX_SIZE 1024u /* a power of two */
static volatile uint8_t rx_buf[RX_SIZE];
static volatile uint32_t rx_head;
static volatile uint32_t rx_tail;
static volatile uint32_t rx_dropped; /* bytes lost to a full ring (for a debugger) */

static volatile uint32_t millis;

void SysTick_Handler(void);
void UART0_Handler(void);

void SysTick_Handler(void)
{
    millis++;
}

void UART0_Handler(void)
{
    UART0_ICR = INT_RX | INT_RT;
    while (!(UART0_FR & FR_RXFE)) {
        uint8_t byte = (uint8_t)UART0_DR; /* bits 11:8 are the error flags: ignored */
        uint32_t head = rx_head;
        if (head - rx_tail < RX_SIZE) {
            rx_buf[head & (RX_SIZE - 1u)] = byte;
            rx_head = head + 1u;
        } else {
            rx_dropped++;
        }
    }
}

static void clock_init(void)
{
    uint32_t rcc = SYSCTL_RCC;
    /* Run from the raw oscillator while the PLL is set up. */
    rcc = (rcc | RCC_BYPASS) & ~RCC_USESYSDIV;
    SYSCTL_RCC = rcc;
    /* Main oscillator, 8 MHz crystal, PLL powered and its output enabled. */
    rcc &= ~(RCC_MOSCDIS | RCC_OSCSRC_M | RCC_XTAL_M | RCC_PWRDN | RCC_OEN | RCC_SYSDIV_M);
    rcc |= RCC_XTAL_8MHZ | RCC_SYSDIV_4 | RCC_USESYSDIV;
    SYSCTL_RIS = RIS_PLLLRIS; /* (write-one-to-clear on hardware; QEMU ignores it) */
    SYSCTL_RCC = rcc;
    {
        /* Wait for lock (a few hundred us on hardware; QEMU sets it at once). */
        uint32_t spins = 1000000u;
        while (!(SYSCTL_RIS & RIS_PLLLRIS) && --spins) {
        }
    }
    SYSCTL_RCC = rcc & ~RCC_BYPASS;
}

static void uart_init(void)
{
    /* 50 MHz / (16 * 115200) = 27.127: IBRD 27, FBRD round(0.127 * 64) = 8 (-0.01 %). */
    const uint32_t div64 = (SYSCLK_HZ * 4u + BAUD / 2u) / BAUD; /* 64 * divisor, rounded */
    SYSCTL_RCGC1 |= 1u << 0; /* UART0 */
    SYSCTL_RCGC2 |= 1u << 0; /* GPIO A */
    (void)SYSCTL_RCGC2;      /* a few cycles before the peripherals may be touched */
    (void)SYSCTL_RCGC2;
    GPIOA_AFSEL |= 0x3u;     /* PA0 = U0Rx, PA1 = U0Tx */
    GPIOA_DEN |= 0x3u;

    UART0_CTL = 0;
    UART0_IBRD = div64 / 64u;
    UART0_FBRD = div64 % 64u;
    /* 8N1, FIFOs on (writing LCRH latches the divisor). Turning the FIFO on empties it, in
     * QEMU too: a byte that arrived before board_init is lost, as on any UART. */
    UART0_LCRH = LCRH_WLEN8 | LCRH_FEN;
    UART0_IFLS = 0;                     /* RX interrupt at 1/8 full; RT catches the rest */
    UART0_RSR = 0;
    UART0_ICR = 0x7FFu;
    UART0_IM = INT_RX | INT_RT;
    UART0_CTL = CTL_UARTEN | CTL_TXE | CTL_RXE;
    NVIC_ISER0 = 1u << UART0_IRQ;
}

void board_init(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    clock_init();
    uart_init();
    SYST_RVR = SYSCLK_HZ / 1000u - 1u; /* 49 999: a 1 ms tick */
    SYST_CVR = 0;
    SYST_CSR = 7u; /* core clock, interrupt, enable */
    __asm__ volatile("cpsie i" ::: "memory");
}

uint32_t board_millis(void)
{
    return millis; /* a 32-bit load is atomic on the M3 */
}

size_t board_read(uint8_t *buf, size_t max)
{
    uint32_t tail = rx_tail;
    uint32_t avail = rx_head - tail;
    size_t n = 0;
    while (n < max && n < avail) {
        buf[n++] = rx_buf[tail & (RX_SIZE - 1u)];
        tail++;
    }
    rx_tail = tail;
    return n;
}

void board_write(void *ctx, const uint8_t *data, size_t len)
{
    (void)ctx;
    while (len--) {
        while (UART0_FR & FR_TXFF) {
        }
        UART0_DR = *data++;
    }
}

void board_uid(uint8_t uid[8])
{
    static const uint8_t id[8] = {'L', 'M', '3', 'S', 0x69, 0x65, 0x00, 0x01};
    size_t i;
    for (i = 0; i < 8; i++) {
        uid[i] = id[i];
    }
}

void board_idle(void)
{
    /* An interrupt between the caller's last board_read and here is taken before the
     * wfi; the wfi then waits for the next one: SysTick, within 1 ms at the latest. */
    __asm__ volatile("wfi" ::: "memory");
}

uint32_t board_entropy(void)
{
    return 0x4C4D3353u; /* "LM3S": no entropy source on this chip */
}
