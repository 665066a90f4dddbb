/*
 * Entry for the primary CPU (from QEMU's ELF loader) and for secondaries
 * (from PSCI CPU_ON). Either may arrive at EL2 (-M virt,virtualization=on:
 * QEMU starts CPUs, and PSCI CPU_ON targets, at the highest non-secure EL)
 * or at EL1; both end up at EL1h with the MMU on, a per-CPU stack and
 * VBAR_EL1 set, then call C.
 */
#include "platform.h"

#define HCR_EL2_RW          (1 << 31)
#define SCTLR_EL1_RES1      0x30d00800      /* v8.0 RES1 bits; MMU/caches off */
#define SCTLR_M             (1 << 0)
#define SCTLR_C             (1 << 2)
#define SCTLR_I             (1 << 12)
#define SPSR_EL1H_MASKED    0x3c5           /* EL1h, DAIF all masked */

/* MAIR attr0 = Device-nGnRnE, attr1 = Normal write-back RW-allocate */
#define MAIR_VALUE          0xff00
/* 4 GiB VA (T0SZ=32, walk starts at level 1), 4K granule, WB-WA inner
 * shareable walks, TTBR1 walks disabled (EPD1), 32-bit PA. */
#define TCR_VALUE           ((32 << 0) | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23))

    .section .text.boot, "ax"
/*
 * arm64 Linux Image header, so the raw binary (build/sdei-guest.bin) can be
 * loaded with -kernel too: QEMU then treats it as a Linux kernel, loads it
 * at RAM base + text_offset (= our link address) and passes the DTB in x0.
 * For the ELF, QEMU passes no DTB pointer and only puts the (1 MiB) DTB at
 * the base of RAM if it fits below the image, which it does not at
 * 0x40080000; C code then falls back (see main.c). code0 is a branch, so
 * the ELF entry point is the same address.
 */
    .global _start
_start:
    b       primary_entry           /* code0 */
    .word   0                       /* code1 */
    .quad   0x80000                 /* text_offset: 0x40080000 - RAM base */
    .quad   __image_size            /* image_size, including BSS and stacks */
    .quad   0x2                     /* flags: little-endian, 4K pages */
    .quad   0, 0, 0                 /* res2..res4 */
    .ascii  "ARM\x64"               /* magic */
    .word   0                       /* res5 */

primary_entry:
    mov     x19, x0                 /* DTB pointer if the loader passed one */
    mrs     x20, CurrentEL
    lsr     x20, x20, #2
    bl      drop_to_el1
    bl      mmu_enable

    /* Zero BSS before any C runs (stacks live outside it, in .stacks). */
    adrp    x0, __bss_start
    add     x0, x0, :lo12:__bss_start
    adrp    x1, __bss_end
    add     x1, x1, :lo12:__bss_end
1:  cmp     x0, x1
    b.hs    2f
    stp     xzr, xzr, [x0], #16
    b       1b
2:
    adrp    x0, boot_x0
    str     x19, [x0, :lo12:boot_x0]
    adrp    x0, boot_el
    str     x20, [x0, :lo12:boot_el]

    bl      cpu_stack_vbar
    bl      main
    b       halt

    .global secondary_entry
secondary_entry:                    /* x0 = PSCI context id */
    mov     x19, x0
    mrs     x20, CurrentEL
    lsr     x20, x20, #2
    bl      drop_to_el1
    bl      mmu_enable
    bl      cpu_stack_vbar
    mov     x0, x19
    mov     x1, x20
    bl      secondary_main
    b       halt

/*
 * If at EL2, configure it to stay out of the way and return to the caller
 * at EL1h. EL3 (secure=on) is not supported: park.
 */
drop_to_el1:
    mrs     x0, CurrentEL
    cmp     x0, #(1 << 2)
    b.ne    1f
    ret
1:  cmp     x0, #(2 << 2)
    b.ne    park
    mov     x0, #HCR_EL2_RW         /* EL1 is AArch64; no traps, no stage 2, IRQs not routed to EL2 */
    msr     hcr_el2, x0
    mrs     x0, cnthctl_el2
    orr     x0, x0, #3              /* EL1PCTEN | EL1PCEN: EL1 may use the physical counter and timer */
    msr     cnthctl_el2, x0
    msr     cntvoff_el2, xzr
    mrs     x0, midr_el1
    msr     vpidr_el2, x0
    mrs     x0, mpidr_el1
    msr     vmpidr_el2, x0
    mov     x0, #0x33ff             /* CPTR_EL2: no FP/SIMD traps (RES1 bits only) */
    msr     cptr_el2, x0
    msr     hstr_el2, xzr
    /* Let EL1 use the GICv3 system registers. ICC_SRE_EL2 only exists with
     * a GICv3 CPU interface (ID_AA64PFR0_EL1.GIC != 0). */
    mrs     x0, id_aa64pfr0_el1
    ubfx    x0, x0, #24, #4
    cbz     x0, 2f
    mrs     x0, icc_sre_el2
    orr     x0, x0, #0x1            /* SRE */
    orr     x0, x0, #0x8            /* Enable: EL1 accesses to ICC_SRE_EL1 not trapped */
    msr     icc_sre_el2, x0
    isb
2:  ldr     x0, =SCTLR_EL1_RES1
    msr     sctlr_el1, x0
    mov     x0, #SPSR_EL1H_MASKED
    msr     spsr_el2, x0
    msr     elr_el2, x30
    isb
    eret

/*
 * Identity map with the MMU on, so RAM is Normal memory: exclusives
 * (spinlocks, atomics) are only architecturally guaranteed on Normal
 * memory, and with the MMU off every data access is Device-nGnRnE.
 * The table is constant (.rodata), so it needs no setup and no BSS.
 */
mmu_enable:
    adrp    x0, mmu_l1_table
    add     x0, x0, :lo12:mmu_l1_table
    msr     ttbr0_el1, x0
    mov     x0, #MAIR_VALUE
    msr     mair_el1, x0
    ldr     x0, =TCR_VALUE
    msr     tcr_el1, x0
    isb
    tlbi    vmalle1
    dsb     nsh
    isb
    mrs     x0, sctlr_el1
    mov     x1, #(SCTLR_M | SCTLR_C)
    orr     x1, x1, #SCTLR_I
    orr     x0, x0, x1
    msr     sctlr_el1, x0
    isb
    ret

/* SP = top of this CPU's stack (indexed by MPIDR.Aff0), VBAR_EL1 = vectors. */
cpu_stack_vbar:
    mrs     x0, mpidr_el1
    and     x1, x0, #0xff
    and     x2, x0, #0xffff00       /* Aff2.Aff1 */
    ubfx    x3, x0, #32, #8         /* Aff3 */
    orr     x2, x2, x3
    cbnz    x2, park
    cmp     x1, #MAX_CPUS
    b.hs    park
    adrp    x2, cpu_stacks
    add     x2, x2, :lo12:cpu_stacks
    add     x1, x1, #1
    mov     x3, #STACK_SIZE
    madd    x2, x1, x3, x2
    mov     sp, x2
    adrp    x0, vector_table
    add     x0, x0, :lo12:vector_table
    msr     vbar_el1, x0
    isb
    ret

park:
    wfe
    b       park

    .ltorg

    .section .rodata
    .balign 4096
/* Level-1 blocks, 1 GiB each: [0,1G) devices (Device-nGnRnE, never
 * executable), [1G,4G) RAM (Normal WB, inner shareable). */
#define BLK_DEVICE  ((0 << 2) | (1 << 10) | (3 << 53) | 1)     /* attr0, AF, PXN|UXN, block */
#define BLK_NORMAL  ((1 << 2) | (3 << 8) | (1 << 10) | 1)      /* attr1, ISH, AF, block */
mmu_l1_table:
    .quad   0x00000000 | BLK_DEVICE
    .quad   0x40000000 | BLK_NORMAL
    .quad   0x80000000 | BLK_NORMAL
    .quad   0xc0000000 | BLK_NORMAL
