/*
 * EL1 vector table. Every entry saves the full register state into a
 * struct exc_frame on the current stack and calls
 *     void exception_handler(u64 vector_offset, struct exc_frame *frame);
 * On return the (possibly modified) frame is restored, ELR/SPSR included,
 * so a handler can skip an instruction or redirect the return.
 *
 * An SDEI COMPLETE_AND_RESUME to VBAR_EL1+0x280 lands here exactly as a real
 * IRQ would (ELR/SPSR = interrupted context), which is what Linux relies on.
 */
#include "asm_defs.h"

.macro VENTRY offset
    .balign 0x80
    sub     sp, sp, #EXC_FRAME_SIZE
    stp     x0, x1, [sp, #0]
    mov     x1, #\offset
    b       exc_common
.endm

    .text
    .balign 0x800
    .global vector_table
vector_table:
    VENTRY 0x000    /* current EL, SP_EL0: sync */
    VENTRY 0x080    /*                     IRQ */
    VENTRY 0x100    /*                     FIQ */
    VENTRY 0x180    /*                     SError */
    VENTRY 0x200    /* current EL, SP_ELx: sync */
    VENTRY 0x280    /*                     IRQ */
    VENTRY 0x300    /*                     FIQ */
    VENTRY 0x380    /*                     SError */
    VENTRY 0x400    /* lower EL, AArch64:  sync */
    VENTRY 0x480    /*                     IRQ */
    VENTRY 0x500    /*                     FIQ */
    VENTRY 0x580    /*                     SError */
    VENTRY 0x600    /* lower EL, AArch32:  sync */
    VENTRY 0x680    /*                     IRQ */
    VENTRY 0x700    /*                     FIQ */
    VENTRY 0x780    /*                     SError */

exc_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    add     x2, sp, #EXC_FRAME_SIZE /* SP before the exception (same-EL, SPx) */
    stp     x30, x2, [sp, #EXC_X30]
    mrs     x2, elr_el1
    mrs     x3, spsr_el1
    stp     x2, x3, [sp, #EXC_ELR]
    mrs     x2, esr_el1
    mrs     x3, far_el1
    stp     x2, x3, [sp, #EXC_ESR]

    mov     x0, x1
    mov     x1, sp
    mov     x29, #0                 /* terminate frame-pointer chains here */
    bl      exception_handler

    ldp     x2, x3, [sp, #EXC_ELR]
    msr     elr_el1, x2
    msr     spsr_el1, x3
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    ldr     x30, [sp, #EXC_X30]
    ldp     x0, x1, [sp, #0]
    add     sp, sp, #EXC_FRAME_SIZE
    eret
