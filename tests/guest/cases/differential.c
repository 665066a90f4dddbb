/*
 * bench_differential: seeded random SDEI calls from every PE through the
 * real stack (this guest -> QEMU's smccc-user -> sdeid --protocol 2), for
 * scripts/differential and tests/test_differential.py, which run the very
 * same generator against the pure model (sdeid.model) in-process and
 * compare.  Named-only (bench_*: a long run): it waits for the host's "GO".
 *
 *   -append "tests=bench_differential diff.seed=S diff.calls=N diff.chunk=K
 *            [diff.trace=PE:FROM:COUNT]"
 *
 * The generator (mirrored line by line in scripts/differential, `Gen`):
 * splitmix64 per PE, seeded from S and the PE index; every call picks a
 * function (all 19, and IDs that are not SDEI calls) and arguments from
 * tables of valid and invalid values, with random 64-bit values mixed in.
 * Each PE folds into a running 64-bit hash, in this order: a call's
 * function ID and x1-x5 before the call, the handler entries that happen
 * before it returns (event, ep_arg, and whether x2/x3 name the interrupted
 * context), and x0-x3 after it (EVENT_CONTEXT of x4-x17, which hold this
 * code's own registers, as a token once checked against the handler's
 * entry record).  A handler makes 0-3 random calls itself,
 * then completes with COMPLETE(0), COMPLETE(1) or COMPLETE_AND_RESUME to
 * its IRQ vector (folded as the call and a "resumed" token; COMPLETE(0)
 * instead of the last when the handler interrupted that vector itself).  Every K
 * calls a PE prints
 *     SDEI-DIFF pe=P chunk=C calls=N entries=E hash=H
 * and at the end SDEI-DIFF-END with the same fields.
 *
 * Determinism across PEs: each PE's answers depend only on its own calls.
 * PEs 1-3 touch only their own resources: their instances of the private
 * events 0, 200 and 201, their PE mask, their handler frames, SIGNAL to
 * themselves, and arguments that are invalid whatever the others do
 * (unknown events, SGIs and out-of-range INTIDs for INTERRUPT_BIND, events
 * that are not bound slots for INTERRUPT_RELEASE).  PE 0 alone also owns
 * everything global: the shared events 100 and 101, INTERRUPT_BIND and
 * INTERRUPT_RELEASE of real lines (whose levels stay low: no device raises
 * them), the bound slots and SHARED_RESET.  The only events that are ever
 * dispatched are event 0s signalled by their own PE, which the reply's PULL
 * enters before the caller runs on.  So the model can replay each PE's
 * stream on its own, in any order of PEs.
 *
 * Before the run: every PE masks and resets; PE 0 finds which of its line
 * candidates the front-end can intercept (bind, release) and prints them
 * (SDEI-DIFF-LINES), prints the addresses the model needs (SDEI-DIFF-ADDR)
 * and SDEI-DIFF-READY, then waits for "GO" (the host takes the daemon's
 * state blob as the model's start in between).
 */
#include "exceptions.h"
#include "fdt.h"
#include "mmio.h"
#include "sdei.h"
#include "smccc.h"
#include "smp.h"
#include "test.h"

#define DIFF_CPUS       4
#define M_GOLD          0x9E3779B97F4A7C15UL
#define TAG_ENTRY       0xE7E7E7E7E7E7E7E7UL
#define TAG_RESUMED     0x5E5E5E5E5E5E5E5EUL
#define TAG_CONTEXT     0xC7C7C7C7C7C7C7C7UL

/* Table markers, resolved after the pick. */
#define RAND            0x5EED5EED5EED5EEDUL
#define TOK_SELF        0x70C0000000000001UL
#define TOK_RESUME      0x70C0000000000002UL
#define TOK_SELF_BIT31  0x70C0000000000003UL    /* our MPIDR with bit 31 (RES1) set */
#define TOK_MPIDR(k)    (0x70C0000000000010UL + (k))

struct dpe {
    u64 s;                      /* splitmix64 state */
    u64 hash, calls, entries, chunk;
    u64 self;
    u64 trace_from, trace_to;   /* calls [from, to) are printed */
    struct sdei_record *rec;    /* the running handler's entry record */
    volatile u32 done;
    u64 pad[6];
};

static struct dpe dp[MAX_CPUS] __aligned(64);
static volatile u32 diff_go, diff_ready[MAX_CPUS];
static u64 per_pe, chunk_k;
static u64 ep_abs, vbar0, resume_addr, hvc_ret;
static u64 mpidr[DIFF_CPUS];


static u64 diff_handler(struct sdei_record *rec, void *data);
static const struct sdei_handler h_diff[2] = {
    { diff_handler, (void *)0 }, { diff_handler, (void *)1 },
};

/* ------------------------------------------------------------ generator */

static u64 rnext(struct dpe *d)
{
    d->s += M_GOLD;
    u64 z = d->s;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
    return z ^ (z >> 31);
}

static u64 rpick(struct dpe *d, u64 n) { return rnext(d) % n; }

static u64 resolve(struct dpe *d, u64 v)
{
    if (v == TOK_SELF)
        return d->self;
    if (v == TOK_SELF_BIT31)
        return d->self | (1UL << 31);
    if (v == TOK_RESUME)
        return resume_addr;
    if (v >= TOK_MPIDR(0) && v < TOK_MPIDR(DIFF_CPUS))
        return mpidr[v - TOK_MPIDR(0)];
    return v;
}

#define CHOOSE(d, t) choose((d), (t), sizeof(t) / sizeof((t)[0]))
static u64 choose(struct dpe *d, const u64 *t, u64 n)
{
    u64 v = t[rpick(d, n)];
    return v == RAND ? rnext(d) : resolve(d, v);
}

#define EV_COMMON 0, 0, 0, 0, 0, 0, 0, 0, 200, 201, 12345, 0x80000000UL, 0xFFFFFFFFUL, \
                  0x100000000UL, 1016, 2032, RAND
static const u64 ev_common[] = { EV_COMMON };
static const u64 ev_pe0[] = { EV_COMMON, 100, 101, 1000, 1001, 2000, 2001 };
static const u64 flags_t[] = { 0, 0, 1, 2, 3, 4, RAND };
static const u64 aff_t[] = { 0, TOK_MPIDR(0), TOK_MPIDR(1), TOK_MPIDR(2), TOK_MPIDR(3),
                             0xFF, 0x100, RAND };
static const u64 info_t[] = { 0, 1, 2, 3, 4, 5, RAND };
static const u64 mode_t[] = { 0, 1, 2, RAND };
static const u64 status_t[] = { 0, 1, RAND };
static const u64 resume_t[] = { TOK_RESUME, RAND };
static const u64 sig_ev_t[] = { 0, 0, 0, 0, 0, 0, 1, 200, RAND };
static const u64 target_t[] = { TOK_SELF, TOK_SELF, TOK_SELF, TOK_SELF_BIT31, 0x7,
                                0x100, 0xFF00000000UL, RAND };
static const u64 feat_t[] = { 0, 1, 2, RAND };
static const u64 intid_common[] = { 0, 5, 15, 1020, 1023, 5000, RAND };
/* PE 0's real lines: PPIs (not 27, the harness's watchdog) and SPIs. */
#define LINE_CANDIDATES 10
static const u64 intid_pe0[] = { 0, 5, 15, 1020, 1023, 5000, RAND,
                                 23, 26, 30, 33, 34, 40, 50, 100, 200, 255 };
static const u64 unknown_t[] = { 0xC4000033, 0xC400003F, 0x84000020, 0x84000025 };

enum { F_VERSION, F_REGISTER, F_REGISTER2, F_ENABLE, F_ENABLE2, F_DISABLE, F_CONTEXT,
       F_COMPLETE, F_CAR, F_UNREGISTER, F_STATUS, F_GET_INFO, F_ROUTING, F_MASK,
       F_UNMASK, F_UNMASK2, F_BIND, F_RELEASE, F_SIGNAL, F_SIGNAL2, F_SIGNAL3,
       F_FEATURES, F_PRIVATE_RESET, F_SHARED_RESET, F_UNKNOWN, F_COUNT };

/* How often each is picked: enough REGISTER/ENABLE/UNMASK/SIGNAL of event 0
 * and few resets, so that handlers are entered often. */
static const u8 ftab[] = {
    F_VERSION,
    F_REGISTER, F_REGISTER, F_REGISTER, F_REGISTER, F_REGISTER2,
    F_ENABLE, F_ENABLE, F_ENABLE, F_ENABLE2,
    F_DISABLE, F_CONTEXT, F_CONTEXT, F_COMPLETE, F_CAR, F_UNREGISTER,
    F_STATUS, F_STATUS, F_STATUS, F_GET_INFO, F_GET_INFO, F_ROUTING, F_ROUTING,
    F_MASK, F_MASK, F_UNMASK, F_UNMASK, F_UNMASK, F_UNMASK, F_UNMASK2,
    F_BIND, F_BIND, F_RELEASE,
    F_SIGNAL, F_SIGNAL, F_SIGNAL, F_SIGNAL, F_SIGNAL, F_SIGNAL2, F_SIGNAL2, F_SIGNAL2,
    F_SIGNAL3, F_SIGNAL3, F_SIGNAL3,
    F_FEATURES, F_PRIVATE_RESET, F_SHARED_RESET, F_UNKNOWN,
};

static u64 ev(struct dpe *d, unsigned cpu)
{
    return cpu == 0 ? CHOOSE(d, ev_pe0) : CHOOSE(d, ev_common);
}

/* One call's function ID and x1-x5. */
static void gen(struct dpe *d, unsigned cpu, bool in_handler, u64 *fid, u64 a[5])
{
    u64 k = ftab[rpick(d, sizeof(ftab))];

    a[0] = a[1] = a[2] = a[3] = a[4] = 0;
    if (in_handler && (k == F_COMPLETE || k == F_CAR))
        k = F_STATUS;
    if (cpu != 0 && k == F_SHARED_RESET)
        k = F_FEATURES;
    switch (k) {
    case F_VERSION: *fid = SDEI_VERSION; break;
    case F_REGISTER: case F_REGISTER2:
        *fid = SDEI_EVENT_REGISTER;
        a[0] = ev(d, cpu);
        a[3] = CHOOSE(d, flags_t);
        a[1] = (a[3] & SDEI_EVENT_REGISTER_RELATIVE) ? ep_abs - vbar() : ep_abs;
        a[2] = (u64)&h_diff[rpick(d, 2)];
        a[4] = CHOOSE(d, aff_t);
        break;
    case F_ENABLE: case F_ENABLE2: *fid = SDEI_EVENT_ENABLE; a[0] = ev(d, cpu); break;
    case F_DISABLE: *fid = SDEI_EVENT_DISABLE; a[0] = ev(d, cpu); break;
    case F_CONTEXT: {
        u64 r = rpick(d, 24);
        *fid = SDEI_EVENT_CONTEXT;
        a[0] = r < 18 ? r : r == 18 ? 18 : r == 19 ? 100 : r == 20 ? rnext(d) : rpick(d, 4);
        break;
    }
    case F_COMPLETE: *fid = SDEI_EVENT_COMPLETE; a[0] = CHOOSE(d, status_t); break;
    case F_CAR: *fid = SDEI_EVENT_COMPLETE_AND_RESUME; a[0] = CHOOSE(d, resume_t); break;
    case F_UNREGISTER: *fid = SDEI_EVENT_UNREGISTER; a[0] = ev(d, cpu); break;
    case F_STATUS: *fid = SDEI_EVENT_STATUS; a[0] = ev(d, cpu); break;
    case F_GET_INFO:
        *fid = SDEI_EVENT_GET_INFO;
        a[0] = ev(d, cpu);
        a[1] = CHOOSE(d, info_t);
        break;
    case F_ROUTING:
        *fid = SDEI_EVENT_ROUTING_SET;
        a[0] = ev(d, cpu);
        a[1] = CHOOSE(d, mode_t);
        a[2] = CHOOSE(d, aff_t);
        break;
    case F_MASK: *fid = SDEI_PE_MASK; break;
    case F_UNMASK: case F_UNMASK2: *fid = SDEI_PE_UNMASK; break;
    case F_BIND:
        *fid = SDEI_INTERRUPT_BIND;
        a[0] = cpu == 0 ? CHOOSE(d, intid_pe0) : CHOOSE(d, intid_common);
        break;
    case F_RELEASE: *fid = SDEI_INTERRUPT_RELEASE; a[0] = ev(d, cpu); break;
    case F_SIGNAL: case F_SIGNAL2: case F_SIGNAL3:
        *fid = SDEI_EVENT_SIGNAL;
        a[0] = CHOOSE(d, sig_ev_t);
        a[1] = CHOOSE(d, target_t);
        break;
    case F_FEATURES: *fid = SDEI_FEATURES; a[0] = CHOOSE(d, feat_t); break;
    case F_PRIVATE_RESET: *fid = SDEI_PRIVATE_RESET; break;
    case F_SHARED_RESET: *fid = SDEI_SHARED_RESET; break;
    default: *fid = CHOOSE(d, unknown_t); break;
    }
}

static void fold(struct dpe *d, u64 w)
{
    u64 h = (d->hash ^ w) * M_GOLD;
    d->hash = h ^ (h >> 32);
}

static bool tracing(struct dpe *d) { return d->calls >= d->trace_from && d->calls < d->trace_to; }

/* One generated call, folded. */
static void dcall(struct dpe *d, unsigned cpu, bool in_handler)
{
    u64 fid, a[5];

    gen(d, cpu, in_handler, &fid, a);
    u64 n = d->calls++;
    fold(d, fid);
    for (int i = 0; i < 5; i++)
        fold(d, a[i]);
    struct smccc_res r = smccc_call(fid, a[0], a[1], a[2], a[3], a[4]);
    /* x4-x17 of the interrupted context are this C code's registers, which
     * the model cannot know: EVENT_CONTEXT of one of them is checked here,
     * against what the handler found at entry, and folded as a token. */
    if (in_handler && fid == SDEI_EVENT_CONTEXT && a[0] >= 4 && a[0] < 18 && d->rec &&
        r.a0 == d->rec->x[a[0]])
        r.a0 = TAG_CONTEXT;
    fold(d, r.a0);
    fold(d, r.a1);
    fold(d, r.a2);
    fold(d, r.a3);
    if (n >= d->trace_from && n < d->trace_to)
        printf("SDEI-DIFF-CALL pe=%u n=%lu fid=0x%lx a=0x%lx,0x%lx,0x%lx,0x%lx,0x%lx "
               "r=0x%lx,0x%lx,0x%lx,0x%lx\n", cpu, n, fid, a[0], a[1], a[2], a[3], a[4],
               r.a0, r.a1, r.a2, r.a3);
}

static u64 diff_handler(struct sdei_record *rec, void *data)
{
    unsigned cpu = cpu_id();
    struct dpe *d = &dp[cpu];
    u64 pc = rec->x[2];
    bool ok = (pc == hvc_ret || pc == resume_addr) && (rec->x[3] & 0xf) == 0x5;

    struct sdei_record *outer = d->rec;
    d->rec = rec;
    d->entries++;
    fold(d, TAG_ENTRY);
    fold(d, rec->x[0]);
    fold(d, rec->x[1]);
    fold(d, ok);
    if (tracing(d))
        printf("SDEI-DIFF-ENTRY pe=%u n=%lu x0=0x%lx x1=0x%lx ok=%d\n", cpu, d->calls,
               rec->x[0], rec->x[1], ok);
    for (u64 n = rpick(d, 4); n; n--)
        dcall(d, cpu, true);
    u64 c = rpick(d, 3);
    /* Interrupted at the first instruction of the IRQ vector (entered
     * after a COMPLETE_AND_RESUME): resuming there again would overwrite
     * the ELR_EL1 that vector still needs, so complete instead (Linux
     * too completes when the interrupted context has IRQs masked). */
    if (c == 2 && pc == resume_addr)
        c = 0;
    u64 fid = c == 2 ? SDEI_EVENT_COMPLETE_AND_RESUME : SDEI_EVENT_COMPLETE;
    u64 x1 = c == 2 ? resume_addr : c;
    if (tracing(d))
        printf("SDEI-DIFF-CALL pe=%u n=%lu fid=0x%lx a=0x%lx completion\n", cpu, d->calls,
               fid, x1);
    d->calls++;
    fold(d, fid);
    fold(d, x1);
    fold(d, TAG_RESUMED);
    d->rec = outer;
    return x1;      /* 0 or 1: COMPLETE(x1); an address: COMPLETE_AND_RESUME */
}

/* ------------------------------------------------------------ the run */

/* diff.trace=PE:FROM:COUNT */
static void trace_arg(unsigned cpu, u64 *from, u64 *to)
{
    const char *args = fdt_getprop_str("/chosen", "bootargs");
    *from = *to = 0;
    for (const char *p = args; p && *p; p++) {
        if ((p == args || p[-1] == ' ') && !strncmp(p, "diff.trace=", 11)) {
            u64 v[3] = { 0, 0, 0 };
            p += 11;
            for (int i = 0; i < 3; i++) {
                for (; *p >= '0' && *p <= '9'; p++)
                    v[i] = v[i] * 10 + (u64)(*p - '0');
                if (*p == ':')
                    p++;
            }
            if (v[0] == cpu) {
                *from = v[1];
                *to = v[1] + v[2];
            }
            return;
        }
    }
}

static bool go_line(void)
{
    return uart_line_is("GO");
}

static void diff_run(unsigned cpu)
{
    struct dpe *d = &dp[cpu];

    while (d->calls < per_pe) {
        dcall(d, cpu, false);
        if (d->calls >= (d->chunk + 1) * chunk_k) {
            printf("SDEI-DIFF pe=%u chunk=%lu calls=%lu entries=%lu hash=0x%016lx\n", cpu,
                   d->chunk, d->calls, d->entries, d->hash);
            d->chunk++;
        }
    }
    printf("SDEI-DIFF-END pe=%u calls=%lu entries=%lu hash=0x%016lx\n", cpu, d->calls,
           d->entries, d->hash);
    sdei_pe_mask();
    sdei_private_reset();
}

static void diff_prepare(unsigned cpu, u64 seed)
{
    struct dpe *d = &dp[cpu];

    memset(d, 0, sizeof(*d));
    /* The splitmix64 finalizer of seed and PE: unrelated starting points
     * (seed * constant would make seed+1 the same stream one step on). */
    u64 z = seed ^ ((cpu + 1) * 0xD1B54A32D192ED03UL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
    d->s = z ^ (z >> 31);
    d->self = smp_cpu_mpidr(cpu);
    trace_arg(cpu, &d->trace_from, &d->trace_to);
    sdei_pe_mask();
    sdei_private_reset();
}

static u64 diff_seed;

static void diff_secondary(void *arg)
{
    unsigned cpu = cpu_id();

    diff_prepare(cpu, diff_seed);
    if (vbar() != vbar0)
        test_fail(__FILE__, __LINE__, "cpu%u VBAR_EL1 0x%lx differs from cpu0's", cpu, vbar());
    atomic_set(&diff_ready[cpu], 1);
    if (!WAIT_FOR(atomic_read(&diff_go), 600000000))
        return;
    diff_run(cpu);
    atomic_set(&dp[cpu].done, 1);
}

TEST_TIMEOUT(bench_differential, 7200000000UL)
{
    unsigned n = smp_num_cpus() < DIFF_CPUS ? smp_num_cpus() : DIFF_CPUS;

    ASSERT_EQ(n, DIFF_CPUS);
    diff_seed = fdt_bootarg_u64("diff.seed", 1);
    per_pe = fdt_bootarg_u64("diff.calls", 1000000) / n;
    chunk_k = fdt_bootarg_u64("diff.chunk", 10000);
    if (!chunk_k)
        chunk_k = 10000;
    ep_abs = sdei_entry_point();
    vbar0 = vbar();
    resume_addr = vbar0 + VEC_CUR_SPX_IRQ;
    hvc_ret = (u64)(smccc_conduit == CONDUIT_SMC ? smccc_smc : smccc_hvc) + 8;
    for (unsigned cpu = 0; cpu < n; cpu++)
        mpidr[cpu] = smp_cpu_mpidr(cpu);
    diff_go = 0;
    for (unsigned cpu = 1; cpu < n; cpu++)
        diff_ready[cpu] = 0;

    diff_prepare(0, diff_seed);
    sdei_shared_reset();
    for (unsigned cpu = 1; cpu < n; cpu++)
        ASSERT_EQ(cpu_start(cpu, diff_secondary, NULL), PSCI_SUCCESS);
    for (unsigned cpu = 1; cpu < n; cpu++)
        ASSERT_TRUE(WAIT_FOR(atomic_read(&diff_ready[cpu]), 10000000));

    /* Which of PE 0's line candidates can the front-end intercept? */
    char lines[160];
    size_t len = 0;
    lines[0] = '\0';
    for (unsigned i = 0; i < LINE_CANDIDATES; i++) {
        u64 intid = intid_pe0[sizeof(intid_pe0) / sizeof(intid_pe0[0]) - LINE_CANDIDATES + i];
        s64 ev = sdei_interrupt_bind((u32)intid);
        if (ev >= 0) {
            EXPECT_EQ(sdei_interrupt_release((u32)ev), 0);
            len += snprintf(lines + len, sizeof(lines) - len, "%s%lu", len ? "," : "", intid);
        }
    }
    printf("SDEI-DIFF-LINES %s\n", len ? lines : "-");
    printf("SDEI-DIFF-ADDR ep=0x%lx vbar=0x%lx h0=0x%lx h1=0x%lx resume=0x%lx "
           "per_pe=%lu chunk=%lu seed=%lu\n", ep_abs, vbar0, (u64)&h_diff[0],
           (u64)&h_diff[1], resume_addr, per_pe, chunk_k, diff_seed);
    printf("SDEI-DIFF-READY\n");
    if (!WAIT_FOR(go_line(), 120000000)) {
        atomic_set(&diff_go, 1);    /* let the others leave */
        FAIL("no GO from the host (run this under scripts/differential)");
    }

    u64 t0 = timer_count();
    atomic_set(&diff_go, 1);
    diff_run(0);
    for (unsigned cpu = 1; cpu < n; cpu++)
        EXPECT_WAIT(atomic_read(&dp[cpu].done), 3600000000UL);
    u64 us = ticks_to_us(timer_count() - t0);
    u64 calls = 0;
    for (unsigned cpu = 0; cpu < n; cpu++)
        calls += dp[cpu].calls;
    tinfo("%lu calls on %u PEs in %lu ms of guest time", calls, n, us / 1000);
    sdei_shared_reset();
    for (unsigned cpu = 1; cpu < n; cpu++)
        EXPECT_TRUE(cpu_wait_off(cpu, 5000000));
}
