/*
 * startup.c - vector table and reset handler for the LM3S6965 (Cortex-M3).
 *
 * Reset copies .data from flash, zeroes .bss and calls main(0, NULL) (board.h: argc/argv
 * are 0/NULL on a microcontroller). If main returns, the core sleeps forever.
 * Interrupts the port does not use go to Default_Handler, which stops in a loop (a
 * debugger shows where).
 */
#include <stdint.h>

extern uint32_t _estack, _sidata, _sdata, _edata, _sbss, _ebss;
extern int main(int argc, char **argv);

void Reset_Handler(void);
void Default_Handler(void);
/* board.c defines these two. */
void SysTick_Handler(void);
void UART0_Handler(void);

void Default_Handler(void)
{
    for (;;) {
    }
}

void Reset_Handler(void)
{
    const uint32_t *src = &_sidata;
    uint32_t *dst;
    for (dst = &_sdata; dst < &_edata; dst++) {
        *dst = *src++;
    }
    for (dst = &_sbss; dst < &_ebss; dst++) {
        *dst = 0;
    }
    (void)main(0, (char **)0);
    for (;;) {
        __asm__ volatile("wfi");
    }
}

#define NUM_IRQ 54 /* the LM3S6965's interrupt lines, numbered 0..53 */
typedef void (*handler_t)(void);

/* The first word is the initial stack pointer (a data address), the rest are handlers:
 * a struct keeps ISO C happy (no object-to-function pointer casts). */
struct vector_table {
    uint32_t *initial_sp;
    handler_t core[15];
    handler_t irq[NUM_IRQ];
};

__attribute__((section(".isr_vector"), used))
const struct vector_table vector_table = {
    &_estack,
    {
        Reset_Handler,
        Default_Handler, /* NMI */
        Default_Handler, /* HardFault */
        Default_Handler, /* MemManage */
        Default_Handler, /* BusFault */
        Default_Handler, /* UsageFault */
        0, 0, 0, 0,      /* reserved */
        Default_Handler, /* SVCall */
        Default_Handler, /* DebugMonitor */
        0,               /* reserved */
        Default_Handler, /* PendSV */
        SysTick_Handler,
    },
    {
        Default_Handler, Default_Handler, Default_Handler, Default_Handler, /* GPIO A-D */
        Default_Handler,                                                     /* GPIO E */
        UART0_Handler,                                                       /* IRQ 5 */
        Default_Handler, Default_Handler, Default_Handler, Default_Handler,
        Default_Handler, Default_Handler, Default_Handler, Default_Handler,
        Default_Handler, Default_Handler, Default_Handler, Default_Handler,
        Default_Handler, Default_Handler, Default_Handler, Default_Handler,
        Default_Handler, Default_Handler, Default_Handler, Default_Handler,
        Default_Handler, Default_Handler, Default_Handler, Default_Handler,
        Default_Handler, Default_Handler, Default_Handler, Default_Handler,
        Default_Handler, Default_Handler, Default_Handler, Default_Handler,
        Default_Handler, Default_Handler, Default_Handler, Default_Handler,
        Default_Handler, Default_Handler, Default_Handler, Default_Handler,
        Default_Handler, Default_Handler, Default_Handler, Default_Handler,
        Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    },
};
