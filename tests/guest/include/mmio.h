/* MMIO accessors. Device memory is mapped nGnRnE; the barriers order MMIO
 * against normal-memory accesses (e.g. a flag written before poking the GIC).
 * Each access is one plain LDR/STR in asm, never what the compiler picks for a
 * volatile pointer: under KVM a trapped access must carry a valid instruction
 * syndrome (ESR ISV), which a post-indexed or paired access does not, and KVM
 * answers those with an external abort. */
#ifndef GUEST_MMIO_H
#define GUEST_MMIO_H

#include "sysreg.h"

static inline u32 readl(u64 addr)
{
    u32 v;
    asm volatile("ldr %w0, [%1]" : "=r"(v) : "r"(addr) : "memory");
    dmb(oshld);
    return v;
}
static inline void writel(u64 addr, u32 v)
{
    dmb(oshst);
    asm volatile("str %w0, [%1]" : : "rZ"(v), "r"(addr) : "memory");
}
static inline u64 readq(u64 addr)
{
    u64 v;
    asm volatile("ldr %0, [%1]" : "=r"(v) : "r"(addr) : "memory");
    dmb(oshld);
    return v;
}
static inline void writeq(u64 addr, u64 v)
{
    dmb(oshst);
    asm volatile("str %x0, [%1]" : : "rZ"(v), "r"(addr) : "memory");
}
static inline void writeb(u64 addr, u8 v)
{
    dmb(oshst);
    asm volatile("strb %w0, [%1]" : : "rZ"(v), "r"(addr) : "memory");
}

#endif
