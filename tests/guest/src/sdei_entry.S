/*
 * SDEI handler entry trampoline (register sdei_entry as ep_addr and a
 * struct sdei_handler * as ep_arg).
 *
 * The dispatcher enters at EL1h with DAIF masked, x0 = event, x1 = ep_arg,
 * x2 = interrupted PC, x3 = interrupted PSTATE, x4..x17 still holding the
 * interrupted values, and SP = the interrupted SP_EL1. It restores x0..x17
 * itself on completion, but everything else (x18..x30, SP) must come back
 * as we found it.
 *
 * We record x0..x17 exactly as found, plus the live DAIF, CurrentEL and
 * SPSel, in this CPU's sdei_cpu_state record for the current nesting
 * level, call
 *     u64 sdei_dispatch(struct sdei_record *rec);
 * and finish with SDEI_EVENT_COMPLETE(x1 = ret) if ret <= 1 (0 handled,
 * 1 failed) or SDEI_EVENT_COMPLETE_AND_RESUME(x1 = ret) otherwise -- the
 * same convention as Linux's __sdei_asm_handler -- through the run-time
 * conduit. A completion call that returns is reported to C
 * (sdei_complete_returned), which does not come back.
 */
#include "asm_defs.h"
#include "platform.h"

#define FID_COMPLETE            0xC4000025
#define FID_COMPLETE_AND_RESUME 0xC4000026

.macro MOVFID reg, fid
    movz    \reg, #((\fid) & 0xffff)
    movk    \reg, #((\fid) >> 16), lsl #16
.endm

/* \out = &sdei_cpu_state[MPIDR.Aff0]; clobbers \t1, \t2 */
.macro SDEI_CPU_PTR out, t1, t2
    mrs     \t1, mpidr_el1
    and     \t1, \t1, #0xff
    cmp     \t1, #MAX_CPUS
    mov     \t2, #(MAX_CPUS - 1)
    csel    \t1, \t1, \t2, lo
    adrp    \out, sdei_cpu_state
    add     \out, \out, :lo12:sdei_cpu_state
    mov     \t2, #SDEI_CPU_SIZE
    madd    \out, \t1, \t2, \out
.endm

    .text
    .balign 8
    .global sdei_entry
    .type sdei_entry, %function
sdei_entry:
    /* Save before touching anything, so x4..x17 are recorded as found. */
    sub     sp, sp, #SDEI_TRAMP_FRAME
    stp     x0, x1, [sp, #0]
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x30, [sp, #144]
    mrs     x9, daif
    mrs     x10, CurrentEL
    mrs     x11, SPSel

    SDEI_CPU_PTR x5, x4, x6
    ldr     w7, [x5, #SDEI_CPU_DEPTH]
    add     w8, w7, #1
    str     w8, [x5, #SDEI_CPU_DEPTH]
    mov     x17, x7                 /* true depth, for the record */
    cmp     w7, #SDEI_MAX_NEST
    b.lo    1f
    ldr     w6, [x5, #SDEI_CPU_OVERFLOW]
    add     w6, w6, #1
    str     w6, [x5, #SDEI_CPU_OVERFLOW]
    mov     x7, #(SDEI_MAX_NEST - 1)    /* reuse the innermost slot */
1:  ldr     x13, [x5, #SDEI_CPU_ENTRIES]
    add     x13, x13, #1
    str     x13, [x5, #SDEI_CPU_ENTRIES]
    mov     x6, #SDEI_REC_SIZE
    madd    x12, x7, x6, x5
    add     x12, x12, #SDEI_CPU_REC

    mov     x14, sp                 /* copy the 18 saved registers */
    mov     x15, x12
    mov     x16, #9
2:  ldp     x0, x1, [x14], #16
    stp     x0, x1, [x15], #16
    subs    x16, x16, #1
    b.ne    2b
    str     x9, [x12, #SDEI_REC_DAIF]
    str     x10, [x12, #SDEI_REC_CURRENTEL]
    str     x11, [x12, #SDEI_REC_SPSEL]
    add     x14, sp, #SDEI_TRAMP_FRAME
    str     x14, [x12, #SDEI_REC_SP]
    str     x17, [x12, #SDEI_REC_DEPTH]
    str     x13, [x12, #SDEI_REC_SEQ]

    mov     x0, x12
    bl      sdei_dispatch
    mov     x1, x0                  /* completion argument */

    SDEI_CPU_PTR x5, x4, x6
    ldr     w7, [x5, #SDEI_CPU_DEPTH]
    sub     w7, w7, #1
    str     w7, [x5, #SDEI_CPU_DEPTH]
    MOVFID  x0, FID_COMPLETE
    cmp     x1, #1
    b.ls    3f
    MOVFID  x0, FID_COMPLETE_AND_RESUME
3:  str     x0, [x5, #SDEI_CPU_COMPLETE_FID]
    str     x1, [x5, #SDEI_CPU_COMPLETE_ARG]

    ldp     x18, x30, [sp, #144]
    add     sp, sp, #SDEI_TRAMP_FRAME
    adrp    x2, smccc_conduit
    ldr     w2, [x2, :lo12:smccc_conduit]
    cbnz    w2, 4f
    hvc     #0
    b       5f
4:  smc     #0
5:  /* The completion returned: it failed. */
    SDEI_CPU_PTR x5, x1, x2
    str     x0, [x5, #SDEI_CPU_COMPLETE_RET]
    bl      sdei_complete_returned
6:  wfe
    b       6b
    .size sdei_entry, . - sdei_entry

/*
 * Load x0..x17 from regs[18] and enter sdei_entry as a dispatcher would
 * (DAIF masked, EL1h, current SP). For self-tests without a dispatcher:
 * the completion then returns an error and sdei_complete_returned longjmps
 * back to the caller's recovery point.
 *     void sdei_fake_dispatch(const u64 regs[18]);
 */
    .global sdei_fake_dispatch
    .type sdei_fake_dispatch, %function
sdei_fake_dispatch:
    msr     daifset, #0xf
    mov     x18, x0
    ldp     x0, x1, [x18, #0]
    ldp     x2, x3, [x18, #16]
    ldp     x4, x5, [x18, #32]
    ldp     x6, x7, [x18, #48]
    ldp     x8, x9, [x18, #64]
    ldp     x10, x11, [x18, #80]
    ldp     x12, x13, [x18, #96]
    ldp     x14, x15, [x18, #112]
    ldp     x16, x17, [x18, #128]
    b       sdei_entry
    .size sdei_fake_dispatch, . - sdei_fake_dispatch

/*
 * COMPLETE_AND_RESUME target used to abort a test from inside an SDEI
 * handler: the dispatcher has unwound the event, we are at EL1h with DAIF
 * masked on the interrupted stack. Hand over to C, which longjmps.
 */
    .global sdei_abort_resume
    .type sdei_abort_resume, %function
    .balign 4
sdei_abort_resume:
    bl      sdei_abort_resumed
7:  wfe
    b       7b
    .size sdei_abort_resume, . - sdei_abort_resume
