/* EL1 exception handling: register frame, per-CPU observation counters and
 * an optional per-CPU hook that tests use to expect exceptions. */
#ifndef GUEST_EXCEPTIONS_H
#define GUEST_EXCEPTIONS_H

#include "types.h"
#include "asm_defs.h"

struct exc_frame {
    u64 x[31];
    u64 sp;         /* SP before the exception (meaningful for same-EL entries) */
    u64 elr, spsr;  /* written back on return */
    u64 esr, far;
};
_Static_assert(sizeof(struct exc_frame) == EXC_FRAME_SIZE, "exc_frame layout");
_Static_assert(__builtin_offsetof(struct exc_frame, elr) == EXC_ELR, "exc_frame layout");

/* Vector offsets (VBAR_EL1 + offset) */
#define VEC_CUR_SP0_SYNC    0x000
#define VEC_CUR_SPX_SYNC    0x200
#define VEC_CUR_SPX_IRQ     0x280
#define VEC_CUR_SPX_FIQ     0x300
#define VEC_CUR_SPX_SERROR  0x380
#define VEC_LOWER64_IRQ     0x480
#define VEC_KIND(off)       (((off) >> 7) & 3)  /* 0 sync, 1 IRQ, 2 FIQ, 3 SError */

#define ESR_EC(esr)         (((esr) >> 26) & 0x3f)

/* Return true if the exception was handled (frame may be edited). Runs
 * before the default IRQ dispatch, so it can also watch IRQ entries. */
typedef bool (*exc_hook_fn)(u64 offset, struct exc_frame *f);

struct exc_stats {
    volatile u64 count[16];         /* per vector slot (offset / 0x80) */
    volatile u64 last_offset, last_esr, last_elr, last_spsr, last_far;
};

void exception_set_hook(exc_hook_fn fn);    /* for the calling CPU */
void exception_clear_hooks(void);           /* all CPUs */
const struct exc_stats *exception_stats(unsigned cpu);
u64 vbar(void);
void exception_handler(u64 offset, struct exc_frame *f);

#endif
