/* Generic timer: counter reads, bounded delays/deadlines, EL1 physical timer
 * (CNTP_*, PPI 14 = INTID 30) and virtual timer (CNTV_*, INTID 27; the
 * harness uses it as a per-test watchdog on CPU 0). */
#ifndef GUEST_TIMER_H
#define GUEST_TIMER_H

#include "sysreg.h"

#define CNT_CTL_ENABLE  BIT(0)
#define CNT_CTL_IMASK   BIT(1)
#define CNT_CTL_ISTATUS BIT(2)

static inline u64 timer_count(void)
{
    isb();      /* don't let the read be speculated early */
    return read_sysreg(cntvct_el0);
}
static inline u64 timer_freq(void) { return read_sysreg(cntfrq_el0); }

static inline u64 us_to_ticks(u64 us) { return us * timer_freq() / 1000000; }
static inline u64 ticks_to_us(u64 t) { return t * 1000000 / timer_freq(); }
static inline u64 ticks_to_ns(u64 t)
{
    u64 f = timer_freq();
    return (t / f) * 1000000000 + (t % f) * 1000000000 / f;
}

static inline u64 deadline_us(u64 us) { return timer_count() + us_to_ticks(us); }
static inline bool deadline_passed(u64 deadline) { return (s64)(timer_count() - deadline) >= 0; }

void delay_us(u64 us);

/*
 * Spin until cond is true or timeout_us elapses; evaluates to the final
 * value of cond. Use this (or EXPECT_WAIT) for every wait in a test.
 */
#define WAIT_FOR(cond, timeout_us) ({                                   \
    u64 __dl = deadline_us(timeout_us);                                 \
    bool __ok;                                                          \
    while (!(__ok = !!(cond)) && !deadline_passed(__dl))                \
        cpu_relax();                                                    \
    __ok || !!(cond); })

/* EL1 physical timer: fire after `ticks` (and raise INTID 30 if unmasked). */
void ptimer_arm(u64 ticks);
void ptimer_stop(void);
static inline u64 ptimer_ctl(void) { return read_sysreg(cntp_ctl_el0); }

void vtimer_arm(u64 ticks);
void vtimer_stop(void);
static inline u64 vtimer_ctl(void) { return read_sysreg(cntv_ctl_el0); }

#endif
