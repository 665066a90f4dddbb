/* Entry of every CPU (boot CPU and PSCI CPU_ON): a stack per CPU, then main(cpu) */
    .section .text.start
    .global _start
_start:
    mrs     x0, mpidr_el1
    and     x0, x0, #0xff
    adrp    x1, stacks_end
    add     x1, x1, :lo12:stacks_end
    lsl     x2, x0, #14
    sub     sp, x1, x2
    bl      main
1:  wfe
    b       1b

    /* u64 smccc(u64 fid, u64 a1, u64 a2, u64 a3): HVC at EL1, SMC at EL2 */
    .global smccc
smccc:
    mrs     x9, CurrentEL
    cmp     x9, #8
    b.eq    2f
    hvc     #0
    ret
2:  smc     #0
    ret

    .bss
    .balign 16
stacks:
    .space  4 * 16384
stacks_end:
