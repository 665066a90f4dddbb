/*
 * Guest-side measurements for scripts/bench-guest (not tests: they only
 * run when selected by name, see selected() in src/harness.c).
 *
 * bench_call_cost: the cost of a call seen from the guest, in counter ticks
 * converted to ns: PSCI_VERSION (answered by QEMU itself) next to
 * SDEI_VERSION (forwarded to sdeid and back).
 *
 * bench_delivery: event delivery latency, trigger to handler entry:
 *  - signal: EVENT_SIGNAL(0) to this PE, until the handler runs;
 *  - timer: the EL1 physical timer bound as an SDEI event (PPI 30), from
 *    the compare value the timer fires at until the handler runs.
 *
 * Each result is one line: SDEI-BENCH <name> n=<N> p50_ns=<..> p99_ns=<..>
 * min_ns=<..>
 */
#include "test.h"
#include "sdei.h"
#include "smccc.h"
#include "timer.h"
#include "lib.h"

#define N_CALLS 2000
#define N_EVENTS 300
#define PPI_PTIMER 30

static u64 samples[N_CALLS];

static void sort_u64(u64 *a, unsigned n)
{
    /* Shell sort: small, no recursion, fine for a few thousand samples. */
    for (unsigned gap = n / 2; gap; gap /= 2)
        for (unsigned i = gap; i < n; i++)
            for (unsigned j = i; j >= gap && a[j - gap] > a[j]; j -= gap) {
                u64 t = a[j];
                a[j] = a[j - gap];
                a[j - gap] = t;
            }
}

static void sdei_quiesce(void)
{
    sdei_pe_mask();
    sdei_private_reset();
    sdei_shared_reset();
}

static void report(const char *name, u64 *s, unsigned n)
{
    sort_u64(s, n);
    printf("SDEI-BENCH %s n=%u p50_ns=%lu p99_ns=%lu min_ns=%lu\n", name, n,
           ticks_to_ns(s[n / 2]), ticks_to_ns(s[(n * 99) / 100]), ticks_to_ns(s[0]));
}

static inline u64 cntpct(void)
{
    u64 v;
    __asm__ volatile("isb; mrs %0, cntpct_el0" : "=r"(v));
    return v;
}

TEST_TIMEOUT(bench_call_cost, 60000000)
{
    for (unsigned i = 0; i < N_CALLS; i++) {
        u64 t0 = cntpct();
        psci_version();
        samples[i] = cntpct() - t0;
    }
    report("psci_version", samples, N_CALLS);
    for (unsigned i = 0; i < N_CALLS; i++) {
        u64 t0 = cntpct();
        s64 v = sdei_version();
        samples[i] = cntpct() - t0;
        ASSERT_TRUE(v > 0);
    }
    report("sdei_version", samples, N_CALLS);
}

static volatile u64 entered_at;

static u64 stamp_handler(struct sdei_record *rec, void *data)
{
    entered_at = cntpct();
    if ((u64)data)
        ptimer_stop();      /* lower the timer line before completing */
    return SDEI_EV_HANDLED;
}

static const struct sdei_handler h_stamp = { stamp_handler, (void *)0 };
static const struct sdei_handler h_stamp_timer = { stamp_handler, (void *)1 };

TEST_TIMEOUT(bench_delivery, 60000000)
{
    u64 mpidr = read_sysreg(mpidr_el1) & 0xff00ffffffull;

    sdei_quiesce();
    ASSERT_EQ(sdei_event_register(0, sdei_entry_point(), (u64)&h_stamp, 0, 0), 0);
    ASSERT_EQ(sdei_event_enable(0), 0);
    ASSERT_EQ(sdei_call0(SDEI_PE_UNMASK), 0);
    for (unsigned i = 0; i < N_EVENTS; i++) {
        entered_at = 0;
        u64 t0 = cntpct();
        ASSERT_EQ(sdei_event_signal(0, mpidr), 0);
        u64 deadline = t0 + timer_freq();
        while (!entered_at && cntpct() < deadline)
            ;
        ASSERT_TRUE(entered_at != 0);
        samples[i] = entered_at - t0;
    }
    report("deliver_signal", samples, N_EVENTS);
    ASSERT_EQ(sdei_event_unregister(0), 0);

    s64 ev = sdei_interrupt_bind(PPI_PTIMER);
    ASSERT_TRUE(ev > 0);
    ASSERT_EQ(sdei_event_register((u32)ev, sdei_entry_point(), (u64)&h_stamp_timer, 0, 0), 0);
    ASSERT_EQ(sdei_event_enable((u32)ev), 0);
    for (unsigned i = 0; i < N_EVENTS; i++) {
        entered_at = 0;
        ptimer_arm(timer_freq() / 2000);      /* fires in 0.5 ms */
        u64 fire = read_sysreg(cntp_cval_el0);
        u64 deadline = fire + timer_freq();
        while (!entered_at && cntpct() < deadline)
            ;
        ASSERT_TRUE(entered_at != 0);
        samples[i] = entered_at > fire ? entered_at - fire : 0;
    }
    report("deliver_timer_ppi", samples, N_EVENTS);
    ASSERT_EQ(sdei_event_unregister((u32)ev), 0);
    ASSERT_EQ(sdei_interrupt_release((u32)ev), 0);
    sdei_quiesce();
}
