/* setjmp/longjmp for aborting a test case out of nested code, IRQ handlers
 * or SDEI handlers. DAIF is part of the saved state so that jumping out of
 * an exception handler leaves the interrupt mask as it was at setjmp. */
#include "asm_defs.h"

    .text
    .global guest_setjmp
    .type guest_setjmp, %function
guest_setjmp:
    stp     x19, x20, [x0, #0]
    stp     x21, x22, [x0, #16]
    stp     x23, x24, [x0, #32]
    stp     x25, x26, [x0, #48]
    stp     x27, x28, [x0, #64]
    stp     x29, x30, [x0, #80]
    mov     x1, sp
    str     x1, [x0, #JB_SP]
    mrs     x1, daif
    str     x1, [x0, #JB_DAIF]
    mov     x0, #0
    ret
    .size guest_setjmp, . - guest_setjmp

    .global guest_longjmp
    .type guest_longjmp, %function
guest_longjmp:
    ldp     x19, x20, [x0, #0]
    ldp     x21, x22, [x0, #16]
    ldp     x23, x24, [x0, #32]
    ldp     x25, x26, [x0, #48]
    ldp     x27, x28, [x0, #64]
    ldp     x29, x30, [x0, #80]
    ldr     x2, [x0, #JB_SP]
    mov     sp, x2
    ldr     x2, [x0, #JB_DAIF]
    msr     daif, x2
    cmp     x1, #0
    csinc   x0, x1, xzr, ne         /* never return 0 from setjmp twice */
    ret
    .size guest_longjmp, . - guest_longjmp
