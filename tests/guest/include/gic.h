/*
 * Minimal GICv3 driver for QEMU virt (run with -M virt,gic-version=3).
 * Everything is Non-secure Group 1, delivered as IRQ at EL1. INTIDs < 32
 * (SGI/PPI) are per-CPU and are configured in the calling CPU's
 * redistributor unless a cpu index is given.
 */
#ifndef GUEST_GIC_H
#define GUEST_GIC_H

#include "types.h"

#define GIC_SPURIOUS        1023
#define GIC_PRIO_DEFAULT    0xa0
#define GIC_PRIO_HIGH       0x20

typedef void (*irq_handler_fn)(u32 intid, void *arg);

bool gic_present(void);             /* GICv3 detected by gic_init */
const char *gic_absent_reason(void);
bool gic_init(void);                /* distributor + this CPU; CPU 0, once */
void gic_cpu_init(void);            /* redistributor + CPU interface of the caller */
u32 gic_num_intids(void);           /* SPI lines + 32 */

void gic_enable(u32 intid);
void gic_disable(u32 intid);
void gic_set_priority(u32 intid, u8 prio);
void gic_set_edge(u32 intid, bool edge);
void gic_set_pending(u32 intid);    /* software-trigger (SPI/PPI) */
void gic_clear_pending(u32 intid);
bool gic_is_pending(u32 intid);
bool gic_is_active(u32 intid);
void gic_route_spi(u32 intid, u64 mpidr);
void gic_send_sgi(u32 intid, u64 target_mpidr);

/* Per-CPU variants for SGIs/PPIs of another CPU's redistributor. */
void gic_enable_on(unsigned cpu, u32 intid);
void gic_disable_on(unsigned cpu, u32 intid);

u32 gic_ack(void);                  /* ICC_IAR1_EL1; intid in [23:0] */
void gic_eoi(u32 intid);            /* ICC_EOIR1_EL1 (EOImode 0: drop + deactivate) */

/* Handler table used by the IRQ vector: ack, call, EOI. */
void irq_register(u32 intid, irq_handler_fn fn, void *arg);
void irq_unregister(u32 intid);
u64 irq_count(u32 intid);           /* handled so far, all CPUs */
void gic_handle_irq(void);
/* If this CPU is inside an IRQ handler, EOI what it acked (used when a test
 * is aborted out of a handler by longjmp). */
void gic_abort_active(void);
/* Mask every interrupt except those in `keep` (harness cleanup). */
void gic_disable_all_except(const u32 *keep, int n);

#endif
