# boards.mk - compilers, flags and link steps for the microcontroller board ports.
#
# Include it from a Makefile (device-sdk/Makefile: `include boards.mk`; from elsewhere give
# its path) and build firmware for a board with the `firmware` macro:
#
#     $(call firmware,BOARD,NAME,SOURCES)
#
# BOARD is lm3s6965 (Cortex-M3, QEMU -M lm3s6965evb) or atmega328p (16 MHz, simavr);
# SOURCES are the firmware's own .c files (the board's port files are added). It defines
# the rule for $(BOARDS_BUILD)/BOARD/NAME.elf (and NAME.hex for the AVR) and prints the
# size after linking. Or use the variables directly:
#
#     ARM_CC ARM_CFLAGS ARM_LDFLAGS LM3S_SOURCES     (LM3S_SOURCES: startup.c board.c)
#     AVR_CC AVR_CFLAGS AVR_LDFLAGS M328_SOURCES
#     $(SIMAVR_PTY): the host harness that runs AVR firmware with UART0 on a pty
#
# Everything goes under $(BOARDS_BUILD) (default: build/ next to this file). Including this
# file does not change the including Makefile's default goal.
#
# Self-check, standalone: make -C device-sdk -f boards.mk selftest
# builds ports/selftest.c for both boards and the simavr harness. Then:
#     qemu-system-arm -M lm3s6965evb -display none -monitor none -serial pty \
#         -kernel build/lm3s6965/selftest.elf     (prints "char device redirected to /dev/pts/N")
#     build/tools/simavr_pty build/atmega328p/selftest.elf   (prints "pty /dev/pts/N")

BOARDS_SAVED_GOAL := $(.DEFAULT_GOAL)

BOARDS_SDK := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
BOARDS_BUILD ?= $(BOARDS_SDK)/build
BOARDS_PORTS := $(BOARDS_SDK)/ports

BOARDS_WARN := -std=c99 -Wall -Wextra -Werror -pedantic
BOARDS_INCLUDE := -I$(BOARDS_SDK)/include -I$(BOARDS_PORTS)
BOARDS_HEADERS := $(wildcard $(BOARDS_SDK)/include/*.h $(BOARDS_PORTS)/*.h)

# --- TI Stellaris LM3S6965 (Cortex-M3, 50 MHz) -------------------------------------------
ARM_CC ?= arm-none-eabi-gcc
ARM_SIZE ?= arm-none-eabi-size
ARM_OBJCOPY ?= arm-none-eabi-objcopy
ARM_CFLAGS := -mcpu=cortex-m3 -mthumb -Os -g $(BOARDS_WARN) $(BOARDS_INCLUDE) \
              -ffunction-sections -fdata-sections
ARM_LDFLAGS := -mcpu=cortex-m3 -mthumb -nostartfiles --specs=nano.specs \
               -T $(BOARDS_PORTS)/lm3s6965/lm3s6965.ld -Wl,--gc-sections
LM3S_SOURCES := $(BOARDS_PORTS)/lm3s6965/startup.c $(BOARDS_PORTS)/lm3s6965/board.c
LM3S_DEPS := $(LM3S_SOURCES) $(BOARDS_PORTS)/lm3s6965/lm3s6965.ld

# --- ATmega328P (Arduino Uno, 16 MHz) ----------------------------------------------------
AVR_CC ?= avr-gcc
AVR_SIZE ?= avr-size
AVR_OBJCOPY ?= avr-objcopy
AVR_MCU ?= atmega328p
AVR_F_CPU ?= 16000000UL
AVR_CFLAGS := -mmcu=$(AVR_MCU) -DF_CPU=$(AVR_F_CPU) -Os -g $(BOARDS_WARN) $(BOARDS_INCLUDE) \
              -ffunction-sections -fdata-sections
AVR_LDFLAGS := -mmcu=$(AVR_MCU) -Wl,--gc-sections
M328_SOURCES := $(BOARDS_PORTS)/atmega328p/board.c
M328_DEPS := $(M328_SOURCES)

# --- the simavr harness (host) -----------------------------------------------------------
HOST_CC ?= cc
SIMAVR_INCLUDE ?= /usr/include/simavr
SIMAVR_CFLAGS := -O2 $(BOARDS_WARN) -isystem $(SIMAVR_INCLUDE)
SIMAVR_LIBS ?= -lsimavrparts -lsimavr -lpthread
SIMAVR_PTY := $(BOARDS_BUILD)/tools/simavr_pty

$(SIMAVR_PTY): $(BOARDS_SDK)/tools/simavr_pty.c
	@mkdir -p $(@D)
	$(HOST_CC) $(SIMAVR_CFLAGS) $< $(SIMAVR_LIBS) -o $@

# --- $(call firmware,BOARD,NAME,SOURCES) -------------------------------------------------
define boards_rule_lm3s6965
$(BOARDS_BUILD)/lm3s6965/$(1).elf: $(2) $(LM3S_DEPS) $(BOARDS_HEADERS)
	@mkdir -p $$(@D)
	$$(ARM_CC) $$(ARM_CFLAGS) $(2) $$(LM3S_SOURCES) $$(ARM_LDFLAGS) \
		-Wl,-Map=$$(@:.elf=.map) -o $$@
	$$(ARM_SIZE) $$@
endef

define boards_rule_atmega328p
$(BOARDS_BUILD)/atmega328p/$(1).elf: $(2) $(M328_DEPS) $(BOARDS_HEADERS)
	@mkdir -p $$(@D)
	$$(AVR_CC) $$(AVR_CFLAGS) $(2) $$(M328_SOURCES) $$(AVR_LDFLAGS) \
		-Wl,-Map=$$(@:.elf=.map) -o $$@
	$$(AVR_SIZE) $$@

$(BOARDS_BUILD)/atmega328p/$(1).hex: $(BOARDS_BUILD)/atmega328p/$(1).elf
	$$(AVR_OBJCOPY) -O ihex -R .eeprom $$< $$@
endef

firmware = $(if $(boards_rule_$(1)),$(eval $(call boards_rule_$(1),$(2),$(3))),\
             $(error boards.mk: no board named '$(1)' (lm3s6965, atmega328p)))

# --- the self-test firmware for both boards ----------------------------------------------
$(call firmware,lm3s6965,selftest,$(BOARDS_PORTS)/selftest.c)
$(call firmware,atmega328p,selftest,$(BOARDS_PORTS)/selftest.c)

.PHONY: selftest boards-clean
selftest: $(BOARDS_BUILD)/lm3s6965/selftest.elf $(BOARDS_BUILD)/atmega328p/selftest.elf \
          $(SIMAVR_PTY)

boards-clean:
	rm -rf $(BOARDS_BUILD)/lm3s6965 $(BOARDS_BUILD)/atmega328p $(BOARDS_BUILD)/tools

# Standalone (make -f boards.mk): selftest is the default; included: the includer's stays.
ifeq ($(words $(MAKEFILE_LIST)),1)
.DEFAULT_GOAL := selftest
else
.DEFAULT_GOAL := $(BOARDS_SAVED_GOAL)
endif
