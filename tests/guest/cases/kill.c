/*
 * outage_kill: an SDEI workload on every PE that a host driver
 * (scripts/kill-test, tests/test_kill.py) runs while it SIGKILLs and
 * restarts sdeid on its --state-file, or SIGSTOPs and SIGCONTs it, at
 * random moments.  Named-only (outage_*): it waits for the host to say stop.
 *
 * Each PE uses only its own resources (its instance of the private event 0,
 * its own PE mask), so every expectation is exact whatever the other PEs
 * do.  One iteration, starting masked with nothing registered:
 *
 *   REGISTER(0)          0        a second application would answer DENIED
 *   REGISTER(0)          DENIED   0 would mean the first one was lost
 *   ENABLE(0)            0
 *   STATUS(0)            REG|EN
 *   PE_UNMASK            0
 *   SIGNAL(0, self)      0        and exactly one handler entry follows, in
 *                                 which STATUS(0) = REG|EN|RUN and
 *                                 EVENT_CONTEXT(0) = 0 (SIGNAL's x0); the
 *                                 handler completes with COMPLETE
 *   STATUS(0)            REG|EN   RUN still set: the COMPLETE was lost
 *   PE_MASK              1        0: applied twice (or the UNMASK was lost)
 *   PE_MASK              0        1: the first one was lost
 *   SIGNAL(0, self)      INVALID  masked: 0 would mean the mask was lost
 *   PE_UNMASK            0
 *   DISABLE(0)           0
 *   STATUS(0)            REG
 *   UNREGISTER(0)        0        DENIED: applied twice
 *   STATUS(0)            0
 *   PE_MASK              1
 *
 * A check whose expected answer is that of a first application counts a
 * mismatch as "doubled", one whose expected answer proves an earlier effect
 * is there counts it as "lost" (docs/reliability.md: the two are not always
 * distinguishable, the total is what must be 0).  Handler entries are
 * counted against the SIGNALs answered 0: more is doubled, fewer is lost.
 *
 * CPU 0 polls the console between its iterations for a line "STOP" (the
 * host's), then every PE finishes its iteration and the case prints one
 *   SDEI-KILL pe=N iters=.. calls=.. mutating=.. entries=.. expected=.. mismatches=.. lost=.. doubled=..
 * line per PE and a SDEI-KILL-TOTAL line with the sums.  Progress lines
 * ("  [outage_kill] progress ...") come every 2 s.  Without a host it stops
 * by itself after KILL_MAX_S.
 */
#include "mmio.h"
#include "sdei.h"
#include "smccc.h"
#include "smp.h"
#include "test.h"

#define KILL_CPUS       4
#define KILL_MAX_S      3000
#define KILL_TIMEOUT_US ((KILL_MAX_S + 300) * 1000000UL)

#define ST_REG      SDEI_EVENT_STATUS_REGISTERED
#define ST_EN       SDEI_EVENT_STATUS_ENABLED
#define ST_RUN      SDEI_EVENT_STATUS_RUNNING

enum { K_OTHER, K_LOST, K_DOUBLED };

struct kill_pe {
    volatile u64 iters, calls, mutating, entries, expected;
    volatile u64 mismatches, lost, doubled;
    volatile u32 armed;         /* a SIGNAL answered 0 waits for its entry */
    volatile u32 done;
    u64 pad[6];
};

static struct kill_pe kp[MAX_CPUS] __aligned(64);
static volatile u32 kill_stop;

static void mismatch(unsigned cpu, const char *what, s64 got, s64 want, int kind)
{
    struct kill_pe *k = &kp[cpu];
    k->mismatches++;
    if (kind == K_LOST)
        k->lost++;
    else if (kind == K_DOUBLED)
        k->doubled++;
    if (k->mismatches <= 5)
        printf("  [outage_kill] cpu%u iter %lu: %s = %ld, expected %ld (%s)\n", cpu,
               k->iters, what, got, want,
               kind == K_LOST ? "an effect lost" : kind == K_DOUBLED ? "an effect doubled"
               : "wrong");
}

/* One call whose answer is checked; mutating calls are counted as such. */
static s64 kcall(unsigned cpu, const char *what, u64 fid, u64 a1, u64 a2, u64 a3,
                 bool mutating, s64 want, int kind)
{
    s64 got = (s64)smccc_call(fid, a1, a2, a3, 0, 0).a0;
    kp[cpu].calls++;
    if (mutating)
        kp[cpu].mutating++;
    if (got != want)
        mismatch(cpu, what, got, want, kind);
    return got;
}

static u64 kill_handler(struct sdei_record *rec, void *data);
static const struct sdei_handler h_kill = { kill_handler, NULL };

static u64 kill_handler(struct sdei_record *rec, void *data)
{
    unsigned cpu = cpu_id();
    struct kill_pe *k = &kp[cpu];

    k->entries++;
    if (!k->armed) {
        k->doubled++;
        k->mismatches++;
        printf("  [outage_kill] cpu%u iter %lu: a handler entry nobody signalled "
               "(an effect doubled)\n", cpu, k->iters);
    }
    k->armed = 0;
    if (rec->x[0] != SDEI_EVENT_SIGNAL_NUM || rec->x[1] != (u64)&h_kill)
        mismatch(cpu, "entry x0/x1", (s64)rec->x[0], SDEI_EVENT_SIGNAL_NUM, K_OTHER);
    kcall(cpu, "STATUS(0) in the handler", SDEI_EVENT_STATUS, 0, 0, 0, false,
          ST_REG | ST_EN | ST_RUN, K_LOST);
    kcall(cpu, "EVENT_CONTEXT(0)", SDEI_EVENT_CONTEXT, 0, 0, 0, false, 0, K_OTHER);
    /* The trampoline's COMPLETE: a call, and a mutating one. */
    k->calls++;
    k->mutating++;
    return SDEI_EV_HANDLED;
}

static void kill_iteration(unsigned cpu, u64 self)
{
    struct kill_pe *k = &kp[cpu];
    const u64 ep = sdei_entry_point(), arg = (u64)&h_kill;

    kcall(cpu, "REGISTER(0)", SDEI_EVENT_REGISTER, 0, ep, arg, true, 0, K_DOUBLED);
    kcall(cpu, "REGISTER(0) again", SDEI_EVENT_REGISTER, 0, ep, arg, true,
          SDEI_DENIED, K_LOST);
    kcall(cpu, "ENABLE(0)", SDEI_EVENT_ENABLE, 0, 0, 0, true, 0, K_LOST);
    kcall(cpu, "STATUS(0)", SDEI_EVENT_STATUS, 0, 0, 0, false, ST_REG | ST_EN, K_LOST);
    kcall(cpu, "PE_UNMASK", SDEI_PE_UNMASK, 0, 0, 0, true, 0, K_OTHER);

    k->armed = 1;
    s64 r = kcall(cpu, "SIGNAL(0, self)", SDEI_EVENT_SIGNAL, 0, self, 0, true, 0, K_LOST);
    if (r == 0) {
        k->expected++;
        /* The handler runs before the vCPU runs on (the reply asks for a
         * PULL), so it has run by now; bounded in case it has not. */
        if (!WAIT_FOR(k->entries == k->expected, 20000000)) {
            k->lost++;
            k->mismatches++;
            printf("  [outage_kill] cpu%u iter %lu: no handler entry after SIGNAL "
                   "(an effect lost)\n", cpu, k->iters);
        }
    }
    k->armed = 0;
    kcall(cpu, "STATUS(0) after the handler", SDEI_EVENT_STATUS, 0, 0, 0, false,
          ST_REG | ST_EN, K_LOST);
    kcall(cpu, "PE_MASK", SDEI_PE_MASK, 0, 0, 0, true, 1, K_DOUBLED);
    kcall(cpu, "PE_MASK again", SDEI_PE_MASK, 0, 0, 0, true, 0, K_LOST);
    kcall(cpu, "SIGNAL(0, self) masked", SDEI_EVENT_SIGNAL, 0, self, 0, true,
          SDEI_INVALID_PARAMETERS, K_LOST);
    kcall(cpu, "PE_UNMASK", SDEI_PE_UNMASK, 0, 0, 0, true, 0, K_OTHER);
    kcall(cpu, "DISABLE(0)", SDEI_EVENT_DISABLE, 0, 0, 0, true, 0, K_LOST);
    kcall(cpu, "STATUS(0) disabled", SDEI_EVENT_STATUS, 0, 0, 0, false, ST_REG, K_LOST);
    kcall(cpu, "UNREGISTER(0)", SDEI_EVENT_UNREGISTER, 0, 0, 0, true, 0, K_DOUBLED);
    kcall(cpu, "STATUS(0) unregistered", SDEI_EVENT_STATUS, 0, 0, 0, false, 0, K_LOST);
    kcall(cpu, "PE_MASK at the end", SDEI_PE_MASK, 0, 0, 0, true, 1, K_DOUBLED);
    k->iters++;
}

/* The host's "STOP" line on the console (CPU 0 only reads it). */
static bool stop_requested(void)
{
    return uart_line_is("STOP");
}

static void kill_loop(void *arg)
{
    unsigned cpu = cpu_id();
    u64 self = smp_cpu_mpidr(cpu_id());

    sdei_pe_mask();
    sdei_private_reset();
    while (!atomic_read(&kill_stop))
        kill_iteration(cpu, self);
    sdei_pe_mask();
    sdei_private_reset();
    atomic_set(&kp[cpu].done, 1);
}

TEST_TIMEOUT(outage_kill, KILL_TIMEOUT_US)
{
    unsigned n = smp_num_cpus() < KILL_CPUS ? smp_num_cpus() : KILL_CPUS;

    memset((void *)kp, 0, sizeof(kp));
    kill_stop = 0;
    for (unsigned cpu = 1; cpu < n; cpu++)
        ASSERT_EQ(cpu_start(cpu, kill_loop, NULL), PSCI_SUCCESS);

    printf("SDEI-KILL-START pes=%u\n", n);
    u64 self = smp_cpu_mpidr(cpu_id());
    u64 end = deadline_us(KILL_MAX_S * 1000000UL);
    u64 next = deadline_us(2000000);
    sdei_pe_mask();
    sdei_private_reset();
    while (!stop_requested() && !deadline_passed(end)) {
        kill_iteration(0, self);
        if (deadline_passed(next)) {
            u64 it = 0;
            for (unsigned cpu = 0; cpu < n; cpu++)
                it += kp[cpu].iters;
            tinfo("progress iters=%lu", it);
            next = deadline_us(2000000);
        }
    }
    atomic_set(&kill_stop, 1);
    sdei_pe_mask();
    sdei_private_reset();
    kp[0].done = 1;
    for (unsigned cpu = 1; cpu < n; cpu++)
        EXPECT_WAIT(atomic_read(&kp[cpu].done), 60000000);

    struct kill_pe t = { 0 };
    for (unsigned cpu = 0; cpu < n; cpu++) {
        struct kill_pe *k = &kp[cpu];
        printf("SDEI-KILL pe=%u iters=%lu calls=%lu mutating=%lu entries=%lu expected=%lu "
               "mismatches=%lu lost=%lu doubled=%lu\n", cpu, k->iters, k->calls,
               k->mutating, k->entries, k->expected, k->mismatches, k->lost, k->doubled);
        t.iters += k->iters;
        t.calls += k->calls;
        t.mutating += k->mutating;
        t.entries += k->entries;
        t.expected += k->expected;
        t.mismatches += k->mismatches;
        t.lost += k->lost;
        t.doubled += k->doubled;
    }
    printf("SDEI-KILL-TOTAL pes=%u iters=%lu calls=%lu mutating=%lu entries=%lu expected=%lu "
           "mismatches=%lu lost=%lu doubled=%lu\n", n, t.iters, t.calls, t.mutating,
           t.entries, t.expected, t.mismatches, t.lost, t.doubled);
    EXPECT_EQ(t.mismatches, 0);
    EXPECT_EQ(t.entries, t.expected);
    EXPECT_TRUE(t.iters > 0);
    for (unsigned cpu = 1; cpu < n; cpu++)
        EXPECT_TRUE(cpu_wait_off(cpu, 5000000));
}
