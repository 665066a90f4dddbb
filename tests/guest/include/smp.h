/*
 * Secondary CPUs. CPU index = MPIDR.Aff0 (start.S parks anything else).
 * cpu_start() powers a CPU on with PSCI CPU_ON; it initialises its GIC
 * redistributor/CPU interface, runs fn(arg) with IRQs masked, then turns
 * itself off with PSCI CPU_OFF. ASSERT/FAIL inside fn ends fn early.
 */
#ifndef GUEST_SMP_H
#define GUEST_SMP_H

#include "types.h"

void smp_init(void);
unsigned smp_num_cpus(void);            /* from the DT /cpus, capped at MAX_CPUS */
u64 smp_cpu_mpidr(unsigned cpu);

s64 cpu_start(unsigned cpu, void (*fn)(void *), void *arg);   /* PSCI return code */
bool cpu_wait_off(unsigned cpu, u64 timeout_us);               /* via AFFINITY_INFO */
bool cpu_is_off(unsigned cpu);
u64 cpu_entry_el(unsigned cpu);         /* EL the CPU was started at (1 or 2) */

#endif
