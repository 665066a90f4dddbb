/*
 * SMCCC call back ends. SMCCC v1.0 (what QEMU advertises) lets the callee
 * clobber x4-x17, so keep the result pointer on the stack across the call.
 */
    .text

.macro SMCCC_CALL name, insn
    .global \name
    .type \name, %function
\name:
    str     x6, [sp, #-16]!
    \insn   #0
    ldr     x6, [sp], #16
    stp     x0, x1, [x6]
    stp     x2, x3, [x6, #16]
    ret
    .size \name, . - \name
.endm

    SMCCC_CALL smccc_hvc, hvc
    SMCCC_CALL smccc_smc, smc
