/* MMIO accessors. Device memory is mapped nGnRnE; the barriers order MMIO
 * against normal-memory accesses (e.g. a flag written before poking the GIC). */
#ifndef GUEST_MMIO_H
#define GUEST_MMIO_H

#include "sysreg.h"

static inline u32 readl(u64 addr)
{
    u32 v = *(volatile u32 *)addr;
    dmb(oshld);
    return v;
}
static inline void writel(u64 addr, u32 v)
{
    dmb(oshst);
    *(volatile u32 *)addr = v;
}
static inline u64 readq(u64 addr)
{
    u64 v = *(volatile u64 *)addr;
    dmb(oshld);
    return v;
}
static inline void writeq(u64 addr, u64 v)
{
    dmb(oshst);
    *(volatile u64 *)addr = v;
}
static inline void writeb(u64 addr, u8 v)
{
    dmb(oshst);
    *(volatile u8 *)addr = v;
}

#endif
