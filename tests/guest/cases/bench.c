/*
 * Guest-side measurements for scripts/bench-guest (not tests: they only
 * run when selected by name, see selected() in src/harness.c).
 *
 * bench_call_cost: the cost of a call seen from the guest, in counter ticks
 * converted to ns: PSCI_VERSION (answered by QEMU itself) next to
 * SDEI_VERSION (forwarded to sdeid and back), and PE_MASK/PE_UNMASK
 * alternating (a call that changes the dispatcher's state).
 *
 * bench_delivery: event delivery latency, trigger to handler entry:
 *  - signal: EVENT_SIGNAL(0) to this PE, until the handler runs;
 *  - timer: the EL1 physical timer bound as an SDEI event (PPI 30), from
 *    the compare value the timer fires at until the handler runs.
 *
 * bench_two_pe_calls: SDEI_VERSION on CPU 0 and CPU 1 at the same time;
 * each CPU's p50/p99 and its calls per second over the common window (a
 * front-end that serializes vCPUs halves each one's rate).
 *
 * bench_delivery_remote: EVENT_SIGNAL(0) from CPU 0 to CPU 1, trigger to
 * handler entry on CPU 1, with CPU 1 busy (spinning) and idle (in WFI);
 * and the EL1 physical timer bound as an event on CPU 0 while CPU 0 waits
 * in WFI (the busy-timer figure is bench_delivery's).
 *
 * Each result is one line: SDEI-BENCH <name> n=<N> p50_ns=<..> p99_ns=<..>
 * min_ns=<..>, then SDEI-BENCH-Q <name> and the sample at each percentile
 * 0..100 in ns (for plots); bench_two_pe_calls adds SDEI-BENCH-RATE <name>
 * calls_per_s=<..>
 */
#include "fdt.h"
#include "test.h"
#include "sdei.h"
#include "smccc.h"
#include "timer.h"
#include "lib.h"
#include "smp.h"

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

static void report(const char *name, u64 *s, unsigned n)
{
    sort_u64(s, n);
    printf("SDEI-BENCH %s n=%u p50_ns=%lu p99_ns=%lu min_ns=%lu\n", name, n,
           ticks_to_ns(s[n / 2]), ticks_to_ns(s[(n * 99) / 100]), ticks_to_ns(s[0]));
    /* The distribution for plots: the sample at every percentile, 0..100 */
    printf("SDEI-BENCH-Q %s", name);
    for (unsigned i = 0; i <= 100; i++)
        printf(" %lu", ticks_to_ns(s[(u64)(n - 1) * i / 100]));
    printf("\n");
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
    /* A state-changing call: what a journal (--state-file) costs. */
    for (unsigned i = 0; i < N_CALLS; i++) {
        u64 t0 = cntpct();
        s64 r = sdei_call0(i % 2 ? SDEI_PE_UNMASK : SDEI_PE_MASK);
        samples[i] = cntpct() - t0;
        ASSERT_TRUE(r >= 0);
    }
    report("sdei_pe_mask_unmask", samples, N_CALLS);
    sdei_pe_mask();
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

/*
 * The EL1 physical timer bound as an event, N_EVENTS times: from the compare
 * value the timer fires at until the handler runs, into samples[].  The PE
 * spins meanwhile, or with `wfi` waits in WFI (IRQs stay masked: only the
 * dispatch wakes it).
 */
static void timer_rounds(bool wfi)
{
    s64 ev = sdei_interrupt_bind(PPI_PTIMER);

    ASSERT_TRUE(ev > 0);
    ASSERT_EQ(sdei_event_register((u32)ev, sdei_entry_point(), (u64)&h_stamp_timer, 0, 0), 0);
    ASSERT_EQ(sdei_event_enable((u32)ev), 0);
    ASSERT_EQ(sdei_call0(SDEI_PE_UNMASK), 0);
    for (unsigned i = 0; i < N_EVENTS; i++) {
        entered_at = 0;
        ptimer_arm(timer_freq() / 2000);      /* fires in 0.5 ms */
        u64 fire = read_sysreg(cntp_cval_el0);
        u64 deadline = fire + timer_freq();
        while (!entered_at && cntpct() < deadline) {
            if (wfi)
                __asm__ volatile("wfi");
        }
        ASSERT_TRUE(entered_at != 0);
        samples[i] = entered_at > fire ? entered_at - fire : 0;
    }
    ASSERT_EQ(sdei_event_unregister((u32)ev), 0);
    ASSERT_EQ(sdei_interrupt_release((u32)ev), 0);
}

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

    /* Under KVM the timer PPI cannot be bound (ppi-bind=refused): no figure */
    if (!fdt_bootarg_is("ppi-bind", "refused")) {
        timer_rounds(false);
        report("deliver_timer_ppi", samples, N_EVENTS);
    }
    sdei_quiesce();
}

/* ---- two PEs calling at once */

#define N_PAR 1000

static u64 par_samples[2][N_PAR];
static volatile u32 par_go, par_done[2];
static volatile u64 par_span[2];

static void par_calls(unsigned cpu)
{
    while (!atomic_read(&par_go))
        cpu_relax();
    u64 start = cntpct();
    for (unsigned i = 0; i < N_PAR; i++) {
        u64 t0 = cntpct();
        sdei_version();
        par_samples[cpu][i] = cntpct() - t0;
    }
    par_span[cpu] = cntpct() - start;
    atomic_set(&par_done[cpu], 1);
}

static void par_fn(void *arg)
{
    par_calls(1);
}

static void report_rate(const char *name, u64 calls, u64 ticks)
{
    u64 ns = ticks_to_ns(ticks);
    printf("SDEI-BENCH-RATE %s calls_per_s=%lu\n", name, ns ? calls * (u64)1000000000 / ns : 0);
}

TEST_TIMEOUT(bench_two_pe_calls, 60000000)
{
    ASSERT_TRUE(smp_num_cpus() >= 2);
    par_go = 0;
    par_done[0] = par_done[1] = 0;
    ASSERT_EQ(cpu_start(1, par_fn, NULL), PSCI_SUCCESS);
    atomic_set(&par_go, 1);
    par_calls(0);
    ASSERT_TRUE(WAIT_FOR(atomic_read(&par_done[1]), 30000000));
    ASSERT_TRUE(cpu_wait_off(1, 2000000));
    report("sdei_version_pe0", par_samples[0], N_PAR);
    report("sdei_version_pe1", par_samples[1], N_PAR);
    report_rate("sdei_version_pe0", N_PAR, par_span[0]);
    report_rate("sdei_version_pe1", N_PAR, par_span[1]);
}

/* ---- delivery to another PE, busy or in WFI */

static volatile u32 rem_ready, rem_quit, rem_wfi;

static void rem_fn(void *arg)
{
    u64 dl = deadline_us(60000000);

    sdei_private_reset();
    if (sdei_event_register(0, sdei_entry_point(), (u64)&h_stamp, 0, 0) ||
        sdei_event_enable(0) || sdei_call0(SDEI_PE_UNMASK)) {
        return;
    }
    atomic_set(&rem_ready, 1);
    while (!atomic_read(&rem_quit) && !deadline_passed(dl)) {
        if (atomic_read(&rem_wfi))
            __asm__ volatile("wfi");
        else
            cpu_relax();
    }
    sdei_pe_mask();
    sdei_private_reset();
}

static bool rem_round(u64 target, unsigned n, u64 *s)
{
    for (unsigned i = 0; i < n; i++) {
        entered_at = 0;
        /* Give an idle target time to be back in WFI after the last one. */
        u64 settle = cntpct() + timer_freq() / 2000;
        while (cntpct() < settle)
            ;
        u64 t0 = cntpct();
        if (sdei_event_signal(0, target) != 0)
            return false;
        if (!WAIT_FOR(entered_at != 0, 1000000))
            return false;
        s[i] = entered_at - t0;
    }
    return true;
}

TEST_TIMEOUT(bench_delivery_remote, 120000000)
{
    ASSERT_TRUE(smp_num_cpus() >= 2);
    u64 target = smp_cpu_mpidr(1);

    sdei_quiesce();
    rem_ready = rem_quit = rem_wfi = 0;
    ASSERT_EQ(cpu_start(1, rem_fn, NULL), PSCI_SUCCESS);
    ASSERT_TRUE(WAIT_FOR(atomic_read(&rem_ready), 5000000));
    ASSERT_TRUE(rem_round(target, N_EVENTS, samples));
    report("deliver_signal_remote_busy", samples, N_EVENTS);
    atomic_set(&rem_wfi, 1);
    ASSERT_TRUE(rem_round(target, N_EVENTS, samples));
    report("deliver_signal_remote_wfi", samples, N_EVENTS);
    atomic_set(&rem_quit, 1);
    /* A CPU in WFI needs a wake-up to see quit: one more signal. */
    sdei_event_signal(0, target);
    ASSERT_TRUE(cpu_wait_off(1, 2000000));

    /* The bound timer, with this PE waiting in WFI. */
    if (!fdt_bootarg_is("ppi-bind", "refused")) {
        timer_rounds(true);
        report("deliver_timer_ppi_wfi", samples, N_EVENTS);
    }
    sdei_quiesce();
}
