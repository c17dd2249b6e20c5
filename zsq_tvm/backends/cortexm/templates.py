"""C / linker / make templates of the Cortex-M firmware (kept as strings: nothing to package)."""

MATH_STUB = "/* empty: the TVM-generated kernels include <math.h> but call nothing from it */\n"

SUPPORT_C = r"""/* zsq-tvm runtime support for TVM `c` kernels: no malloc, no libc. */
#include <stddef.h>
#include <stdint.h>
#include "tvm/runtime/c_backend_api.h"
#include "tvm/ffi/c_api.h"
#include "zsq_config.h"

static uint8_t zsq_ws[ZSQ_WORKSPACE_BYTES] __attribute__((aligned(16)));
static size_t zsq_ws_top;
static int zsq_ws_live;

void *TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int dtype_code_hint,
                               int dtype_bits_hint) {
  (void)device_type; (void)device_id; (void)dtype_code_hint; (void)dtype_bits_hint;
  size_t n = (size_t)((nbytes + 15u) & ~(uint64_t)15u);
  if (zsq_ws_top + n > sizeof(zsq_ws)) return NULL;
  void *p = zsq_ws + zsq_ws_top;
  zsq_ws_top += n;
  zsq_ws_live++;
  return p;
}

int TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr) {
  (void)device_type; (void)device_id; (void)ptr;
  if (zsq_ws_live > 0 && --zsq_ws_live == 0) zsq_ws_top = 0;
  return 0;
}

void TVMFFIErrorSetRaisedFromCStr(const char *kind, const char *message) { (void)kind; (void)message; }
void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **messages, int32_t num_messages) {
  (void)kind; (void)messages; (void)num_messages;
}

/* gcc may emit calls to these even with -ffreestanding */
void *memcpy(void *d, const void *s, size_t n) {
  uint8_t *dd = (uint8_t *)d; const uint8_t *ss = (const uint8_t *)s;
  while (n--) *dd++ = *ss++;
  return d;
}
void *memmove(void *d, const void *s, size_t n) {
  uint8_t *dd = (uint8_t *)d; const uint8_t *ss = (const uint8_t *)s;
  if (dd < ss) { while (n--) *dd++ = *ss++; } else { dd += n; ss += n; while (n--) *--dd = *--ss; }
  return d;
}
void *memset(void *d, int c, size_t n) {
  uint8_t *dd = (uint8_t *)d;
  while (n--) *dd++ = (uint8_t)c;
  return d;
}
"""

STARTUP_C = r"""/* Cortex-M startup: vector table at 0x0, .data/.bss init, stack painting, semihosting. */
#include <stdint.h>
#include <stddef.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _sstack, _estack;
int main(void);
void zsq_sh_exit(int code);
volatile uint32_t zsq_systick_wraps;

int zsq_semihost(int op, void *arg) {
  register int r0 __asm__("r0") = op;
  register void *r1 __asm__("r1") = arg;
  __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}

void zsq_sh_exit(int code) {
  uint32_t blk[2] = {0x20026u /* ADP_Stopped_ApplicationExit */, (uint32_t)code};
  zsq_semihost(0x20 /* SYS_EXIT_EXTENDED */, blk);
  for (;;) {}
}

void Default_Handler(void) { zsq_sh_exit(90); }
void HardFault_Handler(void) { zsq_sh_exit(91); }
void SysTick_Handler(void) { zsq_systick_wraps++; }

__attribute__((naked, noreturn)) void Reset_Handler(void) {
  __asm__ volatile("ldr r0, =_estack\n mov sp, r0\n b zsq_reset_c\n");
}

__attribute__((noreturn, used)) void zsq_reset_c(void) {
  uint32_t *s = &_sidata, *d = &_sdata;
  while (d < &_edata) *d++ = *s++;
  for (d = &_sbss; d < &_ebss; ) *d++ = 0;
  /* paint the stack below the current frame to measure its high-water mark */
  uint32_t sp;
  __asm__ volatile("mov %0, sp" : "=r"(sp));
  for (d = &_sstack; (uint32_t)d < sp - 64u; ) *d++ = 0xA5A5A5A5u;
  zsq_sh_exit(main());
}

uint32_t zsq_stack_used(void) {
  uint32_t *p = &_sstack;
  while (p < &_estack && *p == 0xA5A5A5A5u) p++;
  return (uint32_t)((uint8_t *)&_estack - (uint8_t *)p);
}

__attribute__((section(".vectors"), used)) void (*const zsq_vectors[16])(void) = {
  (void (*)(void))(&_estack), Reset_Handler, Default_Handler, HardFault_Handler,
  Default_Handler, Default_Handler, Default_Handler, 0, 0, 0, 0,
  Default_Handler, Default_Handler, 0, Default_Handler, SysTick_Handler,
};
"""

DRIVER_C = r"""/* Test driver: input.bin -> zsq_run -> output.bin (+ stats.bin) over semihosting. */
#include <stdint.h>
#include "model.h"

int zsq_semihost(int op, void *arg);
uint32_t zsq_stack_used(void);
extern volatile uint32_t zsq_systick_wraps;

static ZSQ_IN_T in_buf[ZSQ_IN_ELEMS];
static ZSQ_OUT_T out_buf[ZSQ_OUT_ELEMS];

static int sh_open(const char *name, int mode) {
  uint32_t n = 0; while (name[n]) n++;
  uint32_t blk[3] = {(uint32_t)name, (uint32_t)mode, n};
  return zsq_semihost(0x01, blk);
}
static int sh_read(int fd, void *buf, uint32_t n) { uint32_t b[3] = {(uint32_t)fd, (uint32_t)buf, n}; return zsq_semihost(0x06, b); }
static int sh_write(int fd, const void *buf, uint32_t n) { uint32_t b[3] = {(uint32_t)fd, (uint32_t)buf, n}; return zsq_semihost(0x05, b); }
static void sh_close(int fd) { uint32_t b[1] = {(uint32_t)fd}; zsq_semihost(0x02, b); }

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)

int main(void) {
  int fd = sh_open("input.bin", 1 /* rb */);
  if (fd < 0) return 10;
  if (sh_read(fd, in_buf, sizeof(in_buf)) != 0) return 11; /* returns the bytes NOT read */
  sh_close(fd);
#ifdef ZSQ_HAS_LENGTH
  static int32_t len_buf[ZSQ_LEN_ELEMS];
  fd = sh_open("length.bin", 1);
  if (fd < 0) return 13;
  if (sh_read(fd, len_buf, sizeof(len_buf)) != 0) return 14;
  sh_close(fd);
#endif
  SYST_RVR = 0x00FFFFFFu; SYST_CVR = 0; SYST_CSR = 7u; /* processor clock, interrupt, enable */
#ifdef ZSQ_HAS_LENGTH
  int rc = zsq_run(in_buf, len_buf, out_buf);
#else
  int rc = zsq_run(in_buf, out_buf);
#endif
  uint32_t cvr = SYST_CVR, wraps = zsq_systick_wraps;
  SYST_CSR = 0;
  uint64_t ticks = (uint64_t)wraps * 0x01000000u + (0x00FFFFFFu - cvr);
  fd = sh_open("output.bin", 5 /* wb */);
  if (fd < 0) return 12;
  sh_write(fd, out_buf, sizeof(out_buf));
  sh_close(fd);
  uint32_t stats[4] = {(uint32_t)rc, (uint32_t)ticks, (uint32_t)(ticks >> 32), zsq_stack_used()};
  fd = sh_open("stats.bin", 5);
  if (fd >= 0) { sh_write(fd, stats, sizeof(stats)); sh_close(fd); }
  return rc == 0 ? 0 : 20;
}
"""

HOST_MAIN_C = r"""/* x86/host driver of the same generated C (bit-exactness check against the firmware). */
#include <stdio.h>
#include <stdint.h>
#include "model.h"

static ZSQ_IN_T in_buf[ZSQ_IN_ELEMS];
static ZSQ_OUT_T out_buf[ZSQ_OUT_ELEMS];

int main(int argc, char **argv) {
#ifdef ZSQ_HAS_LENGTH
  static int32_t len_buf[ZSQ_LEN_ELEMS];
  if (argc != 4) { fprintf(stderr, "usage: %s input.bin output.bin length.bin\n", argv[0]); return 2; }
  FILE *lf = fopen(argv[3], "rb");
  if (!lf || fread(len_buf, 1, sizeof(len_buf), lf) != sizeof(len_buf)) return 3;
  fclose(lf);
#else
  if (argc != 3) { fprintf(stderr, "usage: %s input.bin output.bin\n", argv[0]); return 2; }
#endif
  FILE *f = fopen(argv[1], "rb");
  if (!f || fread(in_buf, 1, sizeof(in_buf), f) != sizeof(in_buf)) return 3;
  fclose(f);
#ifdef ZSQ_HAS_LENGTH
  int rc = zsq_run(in_buf, len_buf, out_buf);
#else
  int rc = zsq_run(in_buf, out_buf);
#endif
  if (rc) { fprintf(stderr, "zsq_run failed: %d\n", rc); return 4; }
  f = fopen(argv[2], "wb");
  if (!f || fwrite(out_buf, 1, sizeof(out_buf), f) != sizeof(out_buf)) return 5;
  fclose(f);
  return 0;
}
"""

LINKER_LD = """/* {board}: flash budget {flash} B at 0x0, RAM budget {ram} B at 0x20000000 */
MEMORY
{{
  FLASH (rx)  : ORIGIN = 0x00000000, LENGTH = {flash}
  RAM   (rwx) : ORIGIN = 0x20000000, LENGTH = {ram}
}}
ENTRY(Reset_Handler)
SECTIONS
{{
  .text : {{ KEEP(*(.vectors)) *(.text*) *(.rodata*) . = ALIGN(4); }} > FLASH
  .ARM.exidx : {{ *(.ARM.exidx*) }} > FLASH
  _sidata = LOADADDR(.data);
  .data : {{ _sdata = .; *(.data*) . = ALIGN(4); _edata = .; }} > RAM AT > FLASH
  .bss (NOLOAD) : {{ _sbss = .; *(.bss*) *(COMMON) . = ALIGN(4); _ebss = .; }} > RAM
  .stack (NOLOAD) : {{ . = ALIGN(8); _sstack = .; . = . + {stack}; _estack = .; }} > RAM
  /DISCARD/ : {{ *(.comment) *(.ARM.attributes) }}
}}
"""

MAKEFILE = """# Cortex-M firmware of a zsq-tvm model ({mcpu}); `make` -> fw.elf, `make host` -> host_run (x86 check)
CC      = arm-none-eabi-gcc
HOSTCC  = cc
CFLAGS  = -mcpu={mcpu} -mthumb -mfloat-abi=soft -O2 -std=gnu11 -ffreestanding -fno-builtin \\
          -fno-tree-loop-distribute-patterns -ffunction-sections -fdata-sections -Wall -Wno-unused-variable \\
          -Wno-unused-but-set-variable -Iinclude -Iinclude/stub
LDFLAGS = -nostdlib -T link.ld -Wl,--gc-sections -Wl,-Map=fw.map
SRCS    = kernels.c model.c weights.c support.c startup.c driver.c
OBJS    = $(SRCS:.c=.o)

fw.elf: $(OBJS) link.ld
\t$(CC) $(CFLAGS) $(OBJS) $(LDFLAGS) -lgcc -o $@

%.o: %.c model.h zsq_config.h
\t$(CC) $(CFLAGS) -c $< -o $@

host_run: kernels.c model.c weights.c host_support.c host_main.c model.h zsq_config.h
\t$(HOSTCC) -O2 -std=gnu11 -Iinclude -DZSQ_HOST kernels.c model.c weights.c host_support.c host_main.c -o $@

clean:
\trm -f *.o fw.elf fw.map host_run
.PHONY: clean
"""

HOST_SUPPORT_C = r"""/* host build: the same static workspace pool as the firmware (no malloc) */
#include <stddef.h>
#include <stdint.h>
#include "tvm/runtime/c_backend_api.h"
#include "tvm/ffi/c_api.h"
#include "zsq_config.h"
static uint8_t zsq_ws[ZSQ_WORKSPACE_BYTES] __attribute__((aligned(16)));
static size_t zsq_ws_top;
static int zsq_ws_live;
void *TVMBackendAllocWorkspace(int dt, int di, uint64_t nbytes, int c, int b) {
  (void)dt; (void)di; (void)c; (void)b;
  size_t n = (size_t)((nbytes + 15u) & ~(uint64_t)15u);
  if (zsq_ws_top + n > sizeof(zsq_ws)) return NULL;
  void *p = zsq_ws + zsq_ws_top; zsq_ws_top += n; zsq_ws_live++; return p;
}
int TVMBackendFreeWorkspace(int dt, int di, void *ptr) {
  (void)dt; (void)di; (void)ptr; if (zsq_ws_live > 0 && --zsq_ws_live == 0) zsq_ws_top = 0; return 0;
}
void TVMFFIErrorSetRaisedFromCStr(const char *kind, const char *message) { (void)kind; (void)message; }
void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **m, int32_t n) { (void)kind; (void)m; (void)n; }
"""
