/* System-register, barrier and interrupt-mask helpers. */
#ifndef GUEST_SYSREG_H
#define GUEST_SYSREG_H

#include "types.h"
#include "platform.h"

#define read_sysreg(r) ({                                       \
    u64 __v;                                                    \
    asm volatile("mrs %0, " #r : "=r"(__v) :: "memory");        \
    __v; })

#define write_sysreg(r, v) do {                                 \
    u64 __v = (u64)(v);                                         \
    asm volatile("msr " #r ", %0" :: "r"(__v) : "memory");      \
} while (0)

#define isb()      asm volatile("isb" ::: "memory")
#define dsb(opt)   asm volatile("dsb " #opt ::: "memory")
#define dmb(opt)   asm volatile("dmb " #opt ::: "memory")

/* Let other vCPU threads run while spinning (TCG) without needing an SEV. */
static inline void cpu_relax(void) { asm volatile("yield" ::: "memory"); }

#define DAIF_D  BIT(9)
#define DAIF_A  BIT(8)
#define DAIF_I  BIT(7)
#define DAIF_F  BIT(6)
#define DAIF_ALL (DAIF_D | DAIF_A | DAIF_I | DAIF_F)

static inline u64 irq_save(void)
{
    u64 daif = read_sysreg(daif);
    asm volatile("msr daifset, #2" ::: "memory");
    return daif;
}
static inline void irq_restore(u64 daif) { write_sysreg(daif, daif); }
static inline void irq_enable(void) { asm volatile("msr daifclr, #2" ::: "memory"); }
static inline void irq_disable(void) { asm volatile("msr daifset, #2" ::: "memory"); }

static inline u64 current_el(void) { return (read_sysreg(CurrentEL) >> 2) & 3; }
static inline u64 read_mpidr(void) { return read_sysreg(mpidr_el1) & 0xff00ffffffUL; }

/* Index of the calling CPU (MPIDR.Aff0); start.S parks any CPU that doesn't fit. */
static inline unsigned cpu_id(void) { return read_sysreg(mpidr_el1) & 0xff; }

#endif
