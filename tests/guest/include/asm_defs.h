/*
 * Layouts shared between C and assembly. Plain #defines only; the C
 * headers that declare the matching structs check these with
 * _Static_assert(offsetof(...)).
 */
#ifndef GUEST_ASM_DEFS_H
#define GUEST_ASM_DEFS_H

/* struct exc_frame (exceptions.h): built by the vectors */
#define EXC_FRAME_SIZE      288
#define EXC_X30             240
#define EXC_SP              248
#define EXC_ELR             256
#define EXC_SPSR            264
#define EXC_ESR             272
#define EXC_FAR             280

/* struct jmpbuf (lib/setjmp) */
#define JB_SP               96
#define JB_DAIF             104
#define JB_SIZE             112

/* struct sdei_record / struct sdei_cpu (sdei.h), written by sdei_entry */
#define SDEI_MAX_NEST       2       /* a critical event may preempt a normal one */
#define SDEI_REC_X          0       /* x0..x17 */
#define SDEI_REC_DAIF       144
#define SDEI_REC_CURRENTEL  152
#define SDEI_REC_SPSEL      160
#define SDEI_REC_SP         168
#define SDEI_REC_DEPTH      176
#define SDEI_REC_SEQ        184
#define SDEI_REC_SIZE       192

#define SDEI_CPU_DEPTH      0       /* u32: handlers currently running on this CPU */
#define SDEI_CPU_OVERFLOW   4       /* u32: entries beyond SDEI_MAX_NEST */
#define SDEI_CPU_ENTRIES    8       /* u64: total handler entries */
#define SDEI_CPU_COMPLETE_FID 16    /* u64: last completion call issued */
#define SDEI_CPU_COMPLETE_ARG 24    /* u64: its x1 */
#define SDEI_CPU_COMPLETE_RET 32    /* u64: x0 if it returned (it shouldn't) */
#define SDEI_CPU_REC        64      /* struct sdei_record rec[SDEI_MAX_NEST] */
#define SDEI_CPU_LAST       (SDEI_CPU_REC + SDEI_MAX_NEST * SDEI_REC_SIZE)
#define SDEI_CPU_SIZE       (SDEI_CPU_LAST + SDEI_REC_SIZE)

/* Trampoline stack frame: x0..x17, x18, x30 */
#define SDEI_TRAMP_FRAME    160

#endif
