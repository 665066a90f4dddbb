/*
 * SDEI conformance cases: every call in every state, dispatch, completion,
 * nesting, routing, masks, power, bindings and resets, against a real
 * dispatcher (sdeid behind the patched QEMU).
 *
 * Expected platform (tests/test_guest_conformance.py sets it up):
 *   sdeid --event 100:shared:normal --event 101:shared:critical
 *         --event 200:private:normal --event 201:private:critical
 *   -smp 4, GICv3, default bind slots (16 private from 1000, 32 shared from
 *   2000), SDEI v1.1.
 *
 * Static events have no guest-side trigger. A case that needs one prints
 *     SDEI-WAIT-TRIGGER <event> [<pe>]
 * and waits (bounded) for a line on the UART: the host runs sdei-trigger
 * on the control socket and answers "+<event>" (done) or "!<event>". Run by
 * hand without that host those cases fail after a timeout, saying why.
 *
 * Triggers the guest owns: event 0 with EVENT_SIGNAL; the PL031 RTC (SPI 2,
 * INTID 34) bound as a shared event and raised at once by setting the match
 * register to the current count; the EL1 physical timer (PPI, INTID 30)
 * bound as a private event. Handlers deassert their level line.
 */
#include "exceptions.h"
#include "fdt.h"
#include "gic.h"
#include "mmio.h"
#include "rtc.h"
#include "sdei.h"
#include "smccc.h"
#include "smp.h"
#include "test.h"

#define EV_SHARED_NORMAL    100
#define EV_SHARED_CRIT      101
#define EV_PRIV_NORMAL      200
#define EV_PRIV_CRIT        201
#define EV_UNKNOWN          12345
#define PRIV_SLOT_BASE      1000
#define SHARED_SLOT_BASE    2000
#define NCPUS               4

#define INVALID     SDEI_INVALID_PARAMETERS
#define DENIED      SDEI_DENIED
#define PENDING     SDEI_PENDING

#define ST_REG      SDEI_EVENT_STATUS_REGISTERED
#define ST_EN       SDEI_EVENT_STATUS_ENABLED
#define ST_RUN      SDEI_EVENT_STATUS_RUNNING
/*
 * A handler on another PE bumps its counters before it calls COMPLETE, so
 * seeing the count is not seeing the completion: wait for that too before
 * an UNREGISTER that must not answer PENDING.
 */
#define WAIT_NOT_RUNNING(ev) \
    EXPECT_WAIT(!(sdei_event_status(ev) & ST_RUN), 2000000)

/* ------------------------------------------------------------------ helpers */

/* Put this PE back to a known SDEI state: masked, nothing registered,
 * nothing bound. Called at the start and end of every case. */
static bool need_cpus(unsigned n)
{
    if (smp_num_cpus() < n) {
        test_fail(__FILE__, __LINE__, "needs %u CPUs (-smp %u), have %u", n, n, smp_num_cpus());
        return false;
    }
    return true;
}

/* Raise the RTC interrupt now: match register = current count (QEMU's
 * PL031 interrupts at once when they are equal). Exactly once: a handler
 * may clear the interrupt before we look again, so retry only when the
 * count ticked between our read and write and nothing fired. */
static void rtc_fire_now(void)
{
    rtc_irq_enable(true);
    for (int i = 0; i < 4; i++) {
        u32 now = rtc_read();
        writel(RTC_BASE + 0x04 /* RTCMR */, now);
        if (rtc_irq_raw() || rtc_read() == now)
            return;
    }
}

/* UART receive (uart_getc_nowait) is the host's acknowledgement channel. */

/*
 * Acknowledgements are lines "+<event>" or "!<event>". They are tagged
 * because a trigger can nest: the event the host raised may preempt the
 * waiter before it reads the ack, and the handler's own host_trigger then
 * reads it first. Whoever reads an ack files it here for its owner.
 */
#define ACK_SLOTS 8
static struct {
    volatile u32 event[ACK_SLOTS];
    volatile s32 status[ACK_SLOTS];     /* 0 free, 1 done, -1 failed */
    char line[16];
    unsigned len;
} acks;

static void ack_file(u32 event, s32 status)
{
    for (unsigned i = 0; i < ACK_SLOTS; i++)
        if (!acks.status[i]) {
            acks.event[i] = event;
            acks.status[i] = status;
            return;
        }
}

static s32 ack_take(u32 event)
{
    for (unsigned i = 0; i < ACK_SLOTS; i++)
        if (acks.status[i] && acks.event[i] == event) {
            s32 st = acks.status[i];
            acks.status[i] = 0;
            return st;
        }
    return 0;
}

static void ack_poll(void)
{
    int c;
    while ((c = uart_getc_nowait()) >= 0) {
        if (c == '\r' || c == '\n') {
            acks.line[acks.len] = '\0';
            if (acks.len > 1 && (acks.line[0] == '+' || acks.line[0] == '!')) {
                u32 ev = 0;
                for (unsigned i = 1; i < acks.len; i++)
                    ev = ev * 10 + (u32)(acks.line[i] - '0');
                ack_file(ev, acks.line[0] == '+' ? 1 : -1);
            }
            acks.len = 0;
        } else if (acks.len < sizeof(acks.line) - 1) {
            acks.line[acks.len++] = (char)c;
        }
    }
}

/*
 * Announce "SDEI-WAIT-<what> <tag> [<pe>]" and wait (bounded) for the host's
 * "+<tag>" (done) or "!<tag>" (failed).  True once it says it did.
 */
static bool host_wait(const char *what, u32 tag, int pe, u64 timeout_us)
{
    ack_poll();
    ack_take(tag);                      /* a stale ack is not ours */
    if (pe < 0)
        printf("SDEI-WAIT-%s %u\n", what, tag);
    else
        printf("SDEI-WAIT-%s %u %d\n", what, tag, pe);
    u64 dl = deadline_us(timeout_us);
    while (!deadline_passed(dl)) {
        ack_poll();
        s32 st = ack_take(tag);
        if (st > 0)
            return true;
        if (st < 0) {
            test_fail(__FILE__, __LINE__, "the host could not do %s %u", what, tag);
            return false;
        }
        cpu_relax();
    }
    test_fail(__FILE__, __LINE__, "no host acknowledgement for %s %u (run this under "
              "tests/test_guest_conformance.py)", what, tag);
    return false;
}

/* Ask the host to trigger a static event; true once it says it did. */
static bool host_trigger(u32 event, int pe)
{
    return host_wait("TRIGGER", event, pe, 15000000);
}

/* A handler that counts, logs and deasserts its source. */
enum { SRC_NONE, SRC_RTC, SRC_PTIMER };

#define LOG_MAX 64
static struct {
    volatile u32 count[MAX_CPUS];
    volatile u32 total;
    volatile u32 nlog;
    volatile u32 log_event[LOG_MAX];
    volatile u32 log_cpu[LOG_MAX];
    volatile u32 log_depth[LOG_MAX];
    struct sdei_record last[MAX_CPUS];
} hs;

static void hs_reset(void) { memset((void *)&hs, 0, sizeof(hs)); }

static void hs_log(struct sdei_record *rec)
{
    u32 n = atomic_inc(&hs.nlog) - 1;
    if (n < LOG_MAX) {
        hs.log_event[n] = (u32)rec->x[0];
        hs.log_cpu[n] = cpu_id();
        hs.log_depth[n] = (u32)rec->depth;
    }
}

static u64 count_handler(struct sdei_record *rec, void *data)
{
    unsigned cpu = cpu_id();

    if ((u64)data == SRC_RTC)
        rtc_irq_clear();
    else if ((u64)data == SRC_PTIMER)
        ptimer_stop();
    hs.last[cpu] = *rec;
    hs_log(rec);
    atomic_inc(&hs.count[cpu]);
    atomic_inc(&hs.total);
    return SDEI_EV_HANDLED;
}

static const struct sdei_handler h_count = { count_handler, (void *)SRC_NONE };
static const struct sdei_handler h_rtc = { count_handler, (void *)SRC_RTC };
static const struct sdei_handler h_ptimer = { count_handler, (void *)SRC_PTIMER };

#define EP      sdei_entry_point()
#define ARG(h)  ((u64)&(h))

/*
 * Under KVM the timer PPIs are the kernel's: the front-end cannot intercept
 * them and INTERRUPT_BIND refuses them (INVALID_PARAMETERS).  The host says
 * so with `ppi-bind=refused` on the command line.  The cases that only need
 * some bound interrupt to interrupt this PE (the context and masking cases)
 * then bind the PL031's SPI instead, routed to this PE; the PPI cases check
 * the refusal.
 */
static bool ppi_bind_refused(void)
{
    return fdt_bootarg_is("ppi-bind", "refused");
}

struct vehicle {
    s64 ev;
    bool spi;
};

static s64 vehicle_bind(struct vehicle *v)
{
    v->spi = ppi_bind_refused();
    if (v->spi) {
        rtc_irq_enable(false);
        rtc_irq_clear();
    }
    v->ev = sdei_interrupt_bind(v->spi ? INTID_RTC : INTID_PTIMER);
    return v->ev;
}

static bool vehicle_bound(const struct vehicle *v)
{
    return v->spi ? v->ev >= SHARED_SLOT_BASE && v->ev < SHARED_SLOT_BASE + 32
                  : v->ev >= PRIV_SLOT_BASE && v->ev < PRIV_SLOT_BASE + 16;
}

static s64 vehicle_register(const struct vehicle *v, u64 arg)
{
    if (v->spi)
        return sdei_event_register(v->ev, EP, arg, SDEI_EVENT_REGISTER_RM_PE, read_mpidr());
    return sdei_event_register(v->ev, EP, arg, 0, 0);
}

/* Raise the line later: the timer in `us`, the RTC at its next-but-one second. */
static void vehicle_fire(const struct vehicle *v, u64 us)
{
    if (v->spi) {
        rtc_irq_enable(true);
        rtc_set_alarm(2);
    } else {
        ptimer_arm(us_to_ticks(us));
    }
}

static void vehicle_lower(const struct vehicle *v)
{
    if (v->spi)
        rtc_irq_clear();
    else
        ptimer_stop();
}

static bool vehicle_asserted(const struct vehicle *v)
{
    return v->spi ? rtc_irq_raw() : (ptimer_ctl() & CNT_CTL_ISTATUS) != 0;
}

static void vehicle_done(const struct vehicle *v)
{
    if (v->spi)
        rtc_irq_enable(false);
    vehicle_lower(v);
}

/* Secondary CPUs that run SDEI calls on request. They spin with IRQs
 * masked (SDEI dispatch does not care) until told to quit (bounded). */
static struct {
    volatile u32 alive[MAX_CPUS];
    volatile u32 busy[MAX_CPUS];
    volatile u64 a[MAX_CPUS][6];
    volatile s64 ret[MAX_CPUS];
    volatile u32 quit;
} wk;

static void worker_fn(void *arg)
{
    unsigned cpu = cpu_id();
    u64 dl = deadline_us(60000000);

    atomic_set(&wk.alive[cpu], 1);
    while (!atomic_read(&wk.quit) && !deadline_passed(dl)) {
        if (atomic_read(&wk.busy[cpu])) {
            const volatile u64 *a = wk.a[cpu];
            wk.ret[cpu] = (s64)smccc_call(a[0], a[1], a[2], a[3], a[4], a[5]).a0;
            atomic_set(&wk.busy[cpu], 0);
        }
        cpu_relax();
    }
    /* Leave SDEI state as CPU_OFF would find it anyway. */
    sdei_pe_mask();
    sdei_private_reset();
}

static bool workers_start(unsigned n)
{
    memset((void *)&wk, 0, sizeof(wk));
    for (unsigned cpu = 1; cpu < n; cpu++) {
        s64 r = cpu_start(cpu, worker_fn, NULL);
        if (r != PSCI_SUCCESS) {
            test_fail(__FILE__, __LINE__, "CPU_ON(cpu%u) = %ld", cpu, r);
            return false;
        }
    }
    for (unsigned cpu = 1; cpu < n; cpu++)
        if (!EXPECT_WAIT(atomic_read(&wk.alive[cpu]), 2000000))
            return false;
    return true;
}

static void workers_stop(unsigned n)
{
    atomic_set(&wk.quit, 1);
    for (unsigned cpu = 1; cpu < n; cpu++)
        EXPECT_TRUE(cpu_wait_off(cpu, 2000000));
}

/* Run an SDEI call on `cpu` (0 = here) and return x0. */
static s64 call_on(unsigned cpu, u64 fid, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
    if (cpu == 0)
        return (s64)smccc_call(fid, a1, a2, a3, a4, a5).a0;
    volatile u64 *a = wk.a[cpu];
    a[0] = fid; a[1] = a1; a[2] = a2; a[3] = a3; a[4] = a4; a[5] = a5;
    atomic_set(&wk.busy[cpu], 1);
    if (!WAIT_FOR(!atomic_read(&wk.busy[cpu]), 2000000)) {
        test_fail(__FILE__, __LINE__, "cpu%u did not run call 0x%lx", cpu, fid);
        return -100;
    }
    return wk.ret[cpu];
}

#define CALL_ON(cpu, fid, ...) call_on((cpu), (fid), ##__VA_ARGS__, 0, 0, 0, 0, 0)
#define call_on(cpu, fid, a1, a2, a3, a4, a5, ...) call_on(cpu, fid, a1, a2, a3, a4, a5)

/* ---------------------------------------------------------------- the ABI */

TEST(conf_version_features)
{
    sdei_quiesce();
    s64 v = sdei_version();
    ASSERT_TRUE(v >= 0);
    EXPECT_EQ(SDEI_VERSION_MAJOR((u64)v), 1);
    EXPECT_EQ(SDEI_VERSION_MINOR((u64)v), 1);
    tinfo("SDEI v%lu.%lu vendor 0x%lx", SDEI_VERSION_MAJOR((u64)v),
          SDEI_VERSION_MINOR((u64)v), SDEI_VERSION_VENDOR((u64)v));
    EXPECT_EQ(sdei_features(SDEI_FEATURE_BIND_SLOTS), (32UL << 16) | 16);
    EXPECT_EQ(sdei_features(SDEI_FEATURE_RELATIVE_MODE), 1);
    EXPECT_EQ(sdei_features(2), INVALID);
    /* Unknown IDs in the SDEI range, and the SMC32 encoding. */
    EXPECT_EQ(sdei_call0(0xC4000033), SDEI_NOT_SUPPORTED);
    EXPECT_EQ(sdei_call0(0xC400003F), SDEI_NOT_SUPPORTED);
    EXPECT_EQ(sdei_call0(0x84000020), SDEI_NOT_SUPPORTED);
    /* Always-available calls work while masked with nothing registered. */
    EXPECT_EQ(sdei_private_reset(), 0);
    EXPECT_EQ(sdei_shared_reset(), 0);
    EXPECT_EQ(sdei_pe_mask(), 0);       /* already masked */
    EXPECT_EQ(sdei_pe_unmask(), 0);
    EXPECT_EQ(sdei_pe_mask(), 1);
    sdei_quiesce();
}

TEST(conf_get_info)
{
    sdei_quiesce();
    struct { u32 ev; s64 type, sig, prio; } t[] = {
        { 0, SDEI_EVENT_TYPE_PRIVATE, 1, SDEI_EVENT_PRIORITY_NORMAL },
        { EV_SHARED_NORMAL, SDEI_EVENT_TYPE_SHARED, 0, SDEI_EVENT_PRIORITY_NORMAL },
        { EV_SHARED_CRIT, SDEI_EVENT_TYPE_SHARED, 0, SDEI_EVENT_PRIORITY_CRITICAL },
        { EV_PRIV_NORMAL, SDEI_EVENT_TYPE_PRIVATE, 0, SDEI_EVENT_PRIORITY_NORMAL },
        { EV_PRIV_CRIT, SDEI_EVENT_TYPE_PRIVATE, 0, SDEI_EVENT_PRIORITY_CRITICAL },
    };
    for (unsigned i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        EXPECT_EQ(sdei_event_get_info(t[i].ev, SDEI_EVENT_INFO_EV_TYPE), t[i].type);
        EXPECT_EQ(sdei_event_get_info(t[i].ev, SDEI_EVENT_INFO_EV_SIGNALED), t[i].sig);
        EXPECT_EQ(sdei_event_get_info(t[i].ev, SDEI_EVENT_INFO_EV_PRIORITY), t[i].prio);
        EXPECT_EQ(sdei_event_get_info(t[i].ev, 5), INVALID);
        if (t[i].type == SDEI_EVENT_TYPE_PRIVATE) {
            EXPECT_EQ(sdei_event_get_info(t[i].ev, SDEI_EVENT_INFO_EV_ROUTING_MODE), INVALID);
            EXPECT_EQ(sdei_event_get_info(t[i].ev, SDEI_EVENT_INFO_EV_ROUTING_AFF), INVALID);
        } else {
            EXPECT_EQ(sdei_event_get_info(t[i].ev, SDEI_EVENT_INFO_EV_ROUTING_MODE), DENIED);
            EXPECT_EQ(sdei_event_get_info(t[i].ev, SDEI_EVENT_INFO_EV_ROUTING_AFF), DENIED);
        }
    }
    EXPECT_EQ(sdei_event_get_info(EV_UNKNOWN, SDEI_EVENT_INFO_EV_TYPE), INVALID);
    EXPECT_EQ(sdei_event_get_info(0x80000000u, SDEI_EVENT_INFO_EV_TYPE), INVALID);
    /* An unbound dynamic slot exists (type known) but cannot be registered. */
    EXPECT_EQ(sdei_event_get_info(SHARED_SLOT_BASE + 5, SDEI_EVENT_INFO_EV_TYPE),
              SDEI_EVENT_TYPE_SHARED);
    EXPECT_EQ(sdei_event_get_info(PRIV_SLOT_BASE + 5, SDEI_EVENT_INFO_EV_TYPE),
              SDEI_EVENT_TYPE_PRIVATE);

    /* Routing of a registered shared event. */
    ASSERT_EQ(sdei_event_register(EV_SHARED_NORMAL, EP, ARG(h_count),
                                  SDEI_EVENT_REGISTER_RM_ANY, 0), 0);
    EXPECT_EQ(sdei_event_get_info(EV_SHARED_NORMAL, SDEI_EVENT_INFO_EV_ROUTING_MODE),
              SDEI_EVENT_REGISTER_RM_ANY);
    EXPECT_EQ(sdei_event_get_info(EV_SHARED_NORMAL, SDEI_EVENT_INFO_EV_ROUTING_AFF), INVALID);
    EXPECT_EQ(sdei_event_unregister(EV_SHARED_NORMAL), 0);
    u64 aff = smp_cpu_mpidr(smp_num_cpus() - 1);
    ASSERT_EQ(sdei_event_register(EV_SHARED_NORMAL, EP, ARG(h_count),
                                  SDEI_EVENT_REGISTER_RM_PE, aff), 0);
    EXPECT_EQ(sdei_event_get_info(EV_SHARED_NORMAL, SDEI_EVENT_INFO_EV_ROUTING_MODE),
              SDEI_EVENT_REGISTER_RM_PE);
    EXPECT_EQ(sdei_event_get_info(EV_SHARED_NORMAL, SDEI_EVENT_INFO_EV_ROUTING_AFF), aff);
    EXPECT_EQ(sdei_event_unregister(EV_SHARED_NORMAL), 0);
    sdei_quiesce();
}

/* Every call in the three idle states (reg, reG, rEG), for one shared and
 * one private event. */
static void idle_states(u32 ev, bool shared)
{
    tinfo("event %u (%s)", ev, shared ? "shared" : "private");
    s64 route_bad = shared ? DENIED : INVALID;

    /* reg: unregistered */
    EXPECT_EQ(sdei_event_status(ev), 0);
    EXPECT_EQ(sdei_event_enable(ev), DENIED);
    EXPECT_EQ(sdei_event_disable(ev), DENIED);
    EXPECT_EQ(sdei_event_unregister(ev), DENIED);
    EXPECT_EQ(sdei_event_routing_set(ev, SDEI_EVENT_REGISTER_RM_ANY, 0), route_bad);
    EXPECT_EQ(sdei_event_context(0), DENIED);
    EXPECT_EQ(sdei_call0(SDEI_EVENT_COMPLETE), DENIED);
    EXPECT_EQ(smccc_call(SDEI_EVENT_COMPLETE_AND_RESUME, vbar() + VEC_CUR_SPX_IRQ,
                         0, 0, 0, 0).a0, (u64)DENIED);
    EXPECT_EQ(sdei_interrupt_release(ev), INVALID);        /* not a bound event */
    /* bad REGISTER arguments */
    EXPECT_EQ(sdei_event_register(ev, EP, ARG(h_count), 1UL << 2, 0), INVALID);
    EXPECT_EQ(sdei_event_register(ev, EP, ARG(h_count), 1UL << 63, 0), INVALID);
    if (shared) {
        EXPECT_EQ(sdei_event_register(ev, EP, ARG(h_count), SDEI_EVENT_REGISTER_RM_PE,
                                      0xff00), INVALID);
        EXPECT_EQ(sdei_event_register(ev, EP, ARG(h_count), SDEI_EVENT_REGISTER_RM_PE,
                                      0x7f), INVALID);
    }
    EXPECT_EQ(sdei_event_status(ev), 0);

    /* reg -> reG */
    EXPECT_EQ(sdei_event_register(ev, EP, ARG(h_count), SDEI_EVENT_REGISTER_RM_ANY, 0), 0);
    EXPECT_EQ(sdei_event_status(ev), ST_REG);
    EXPECT_EQ(sdei_event_register(ev, EP, ARG(h_count), SDEI_EVENT_REGISTER_RM_ANY, 0), DENIED);
    EXPECT_EQ(sdei_event_disable(ev), 0);                   /* NOP */
    EXPECT_EQ(sdei_event_status(ev), ST_REG);
    EXPECT_EQ(sdei_event_routing_set(ev, SDEI_EVENT_REGISTER_RM_ANY, 0), shared ? 0 : INVALID);
    if (shared) {
        EXPECT_EQ(sdei_event_routing_set(ev, SDEI_EVENT_REGISTER_RM_PE, read_mpidr()), 0);
        EXPECT_EQ(sdei_event_get_info(ev, SDEI_EVENT_INFO_EV_ROUTING_AFF), read_mpidr());
        EXPECT_EQ(sdei_event_routing_set(ev, SDEI_EVENT_REGISTER_RM_PE, 0xff00), INVALID);
        EXPECT_EQ(sdei_event_routing_set(ev, 2, 0), INVALID);
        EXPECT_EQ(sdei_event_routing_set(ev, SDEI_EVENT_REGISTER_RM_ANY, 0), 0);
        EXPECT_EQ(sdei_event_get_info(ev, SDEI_EVENT_INFO_EV_ROUTING_MODE), 0);
    }
    EXPECT_EQ(sdei_event_context(0), DENIED);
    EXPECT_EQ(sdei_call0(SDEI_EVENT_COMPLETE), DENIED);
    EXPECT_EQ(sdei_interrupt_release(ev), INVALID);

    /* reG -> rEG */
    EXPECT_EQ(sdei_event_enable(ev), 0);
    EXPECT_EQ(sdei_event_status(ev), ST_REG | ST_EN);
    EXPECT_EQ(sdei_event_enable(ev), 0);                    /* NOP */
    EXPECT_EQ(sdei_event_register(ev, EP, ARG(h_count), SDEI_EVENT_REGISTER_RM_ANY, 0), DENIED);
    EXPECT_EQ(sdei_event_routing_set(ev, SDEI_EVENT_REGISTER_RM_ANY, 0), route_bad);
    EXPECT_EQ(sdei_event_context(0), DENIED);
    EXPECT_EQ(sdei_call0(SDEI_EVENT_COMPLETE), DENIED);
    EXPECT_EQ(sdei_interrupt_release(ev), INVALID);
    /* rEG -> reG -> rEG -> reg (UNREGISTER also disables) */
    EXPECT_EQ(sdei_event_disable(ev), 0);
    EXPECT_EQ(sdei_event_status(ev), ST_REG);
    EXPECT_EQ(sdei_event_enable(ev), 0);
    EXPECT_EQ(sdei_event_unregister(ev), 0);
    EXPECT_EQ(sdei_event_status(ev), 0);
    EXPECT_EQ(sdei_event_enable(ev), DENIED);
    /* reG -> reg */
    EXPECT_EQ(sdei_event_register(ev, EP, ARG(h_count), SDEI_EVENT_REGISTER_RM_ANY, 0), 0);
    EXPECT_EQ(sdei_event_unregister(ev), 0);
    EXPECT_EQ(sdei_event_status(ev), 0);
}

TEST(conf_states_idle)
{
    sdei_quiesce();
    idle_states(EV_SHARED_NORMAL, true);
    idle_states(EV_PRIV_NORMAL, false);
    idle_states(0, false);
    /* Calls on events that do not exist, or cannot be registered yet. */
    u32 bad[] = { EV_UNKNOWN, 0x80000000u, 0xffffffffu };
    for (unsigned i = 0; i < 3; i++) {
        EXPECT_EQ(sdei_event_register(bad[i], EP, ARG(h_count), 0, 0), INVALID);
        EXPECT_EQ(sdei_event_enable(bad[i]), INVALID);
        EXPECT_EQ(sdei_event_disable(bad[i]), INVALID);
        EXPECT_EQ(sdei_event_unregister(bad[i]), INVALID);
        EXPECT_EQ(sdei_event_status(bad[i]), INVALID);
        EXPECT_EQ(sdei_event_routing_set(bad[i], 0, 0), INVALID);
        EXPECT_EQ(sdei_interrupt_release(bad[i]), INVALID);
    }
    EXPECT_EQ(sdei_event_register(SHARED_SLOT_BASE + 7, EP, ARG(h_count), 0, 0), DENIED);
    EXPECT_EQ(sdei_event_register(PRIV_SLOT_BASE + 7, EP, ARG(h_count), 0, 0), DENIED);
    EXPECT_EQ(sdei_interrupt_release(SHARED_SLOT_BASE + 7), INVALID);   /* not bound */
    sdei_quiesce();
}

/* Every call in the running states, from inside a handler. */
static struct {
    u32 ev;
    bool shared;
    volatile u32 ran;
    u64 ctx[18];
} rs;

static u64 running_handler(struct sdei_record *rec, void *data)
{
    u32 ev = rs.ev;
    s64 route_bad = rs.shared ? DENIED : INVALID;

    if ((u64)data == SRC_RTC)
        rtc_irq_clear();
    atomic_inc(&rs.ran);
    EXPECT_EQ(rec->x[0], ev);

    /* REG: enabled, running */
    EXPECT_EQ(sdei_event_status(ev), ST_REG | ST_EN | ST_RUN);
    EXPECT_EQ(sdei_event_register(ev, EP, ARG(h_count), 0, 0), DENIED);
    EXPECT_EQ(sdei_event_enable(ev), 0);
    EXPECT_EQ(sdei_event_routing_set(ev, 0, 0), route_bad);
    for (int i = 0; i < 18; i++)
        rs.ctx[i] = (u64)sdei_event_context(i);
    EXPECT_EQ(sdei_event_context(18), INVALID);
    EXPECT_EQ(sdei_event_context(0x100), INVALID);
    EXPECT_EQ(sdei_private_reset(), rs.shared ? 0 : DENIED);
    EXPECT_EQ(sdei_shared_reset(), rs.shared ? DENIED : 0);
    /* REG -> ReG */
    EXPECT_EQ(sdei_event_disable(ev), 0);
    EXPECT_EQ(sdei_event_status(ev), ST_REG | ST_RUN);
    EXPECT_EQ(sdei_event_disable(ev), 0);
    EXPECT_EQ(sdei_event_register(ev, EP, ARG(h_count), 0, 0), DENIED);
    EXPECT_EQ(sdei_event_routing_set(ev, 0, 0), route_bad);
    EXPECT_EQ(sdei_event_context(1), (s64)rs.ctx[1]);
    /* ReG -> REG -> ReG */
    EXPECT_EQ(sdei_event_enable(ev), 0);
    EXPECT_EQ(sdei_event_status(ev), ST_REG | ST_EN | ST_RUN);
    EXPECT_EQ(sdei_event_disable(ev), 0);
    /* ReG -> Reg: unregister pending */
    EXPECT_EQ(sdei_event_unregister(ev), PENDING);
    EXPECT_EQ(sdei_event_status(ev), ST_RUN);
    EXPECT_EQ(sdei_event_unregister(ev), PENDING);
    EXPECT_EQ(sdei_event_register(ev, EP, ARG(h_count), 0, 0), DENIED);
    EXPECT_EQ(sdei_event_enable(ev), DENIED);
    EXPECT_EQ(sdei_event_disable(ev), DENIED);
    EXPECT_EQ(sdei_event_routing_set(ev, 0, 0), route_bad);
    EXPECT_EQ(sdei_event_context(2), (s64)rs.ctx[2]);
    EXPECT_EQ(sdei_private_reset(), rs.shared ? 0 : DENIED);
    EXPECT_EQ(sdei_shared_reset(), rs.shared ? DENIED : 0);
    /* Always-available calls still answer. */
    EXPECT_TRUE(sdei_version() > 0);
    EXPECT_EQ(sdei_features(SDEI_FEATURE_BIND_SLOTS), (32UL << 16) | 16);
    return SDEI_EV_HANDLED;                     /* Reg -> reg */
}

static const struct sdei_handler h_running = { running_handler, (void *)SRC_NONE };
static const struct sdei_handler h_running_rtc = { running_handler, (void *)SRC_RTC };

TEST(conf_states_running)
{
    sdei_quiesce();

    /* Private: event 0, signalled to ourselves. */
    memset((void *)&rs, 0, sizeof(rs));
    rs.ev = 0;
    ASSERT_EQ(sdei_event_register(0, EP, ARG(h_running), 0, 0), 0);
    ASSERT_EQ(sdei_event_enable(0), 0);
    ASSERT_EQ(sdei_pe_unmask(), 0);
    ASSERT_EQ(sdei_event_signal(0, read_mpidr()), 0);
    EXPECT_WAIT(atomic_read(&rs.ran) == 1, 1000000);
    EXPECT_EQ(sdei_event_status(0), 0);         /* the pending unregister finished */
    EXPECT_EQ(sdei_event_enable(0), DENIED);
    EXPECT_EQ(sdei_event_register(0, EP, ARG(h_count), 0, 0), 0);   /* can register again */
    EXPECT_EQ(sdei_event_unregister(0), 0);

    /* Shared: the RTC bound to a dynamic shared event. */
    memset((void *)&rs, 0, sizeof(rs));
    s64 ev = sdei_interrupt_bind(INTID_RTC);
    ASSERT_TRUE(ev >= SHARED_SLOT_BASE && ev < SHARED_SLOT_BASE + 32);
    rs.ev = (u32)ev;
    rs.shared = true;
    ASSERT_EQ(sdei_event_register(rs.ev, EP, ARG(h_running_rtc), 0, 0), 0);
    ASSERT_EQ(sdei_event_enable(rs.ev), 0);
    rtc_fire_now();
    EXPECT_WAIT(atomic_read(&rs.ran) == 1, 2000000);
    EXPECT_EQ(sdei_event_status(rs.ev), 0);
    EXPECT_EQ(sdei_interrupt_release(rs.ev), 0);
    sdei_quiesce();
}

/* --------------------------------------- dispatch, entry and exact restore */

/*
 * conf_ctx_loop(io): load x0..x17 and NZCV from io, spin (without touching
 * x0..x17 or the flags) until io->flag is set or the counter passes
 * io->deadline, then store x0..x17, NZCV and DAIF back into io. An SDEI
 * event taken inside the loop must leave all of them exactly as they were.
 *
 * conf_resume_target: a COMPLETE_AND_RESUME target that records x0..x17,
 * ELR_EL1, SPSR_EL1, DAIF, CurrentEL, SPSel and SP in conf_resume_io and
 * returns to the interrupted context with ERET, as Linux's IRQ vector would.
 */
struct ctx_io {
    u64 in[18];             /* 0 */
    u64 out[18];            /* 144 */
    u64 nzcv_in;            /* 288 */
    u64 nzcv_out;           /* 296 */
    u64 daif_out;           /* 304 */
    u64 deadline;           /* 312 */
    volatile u64 flag;      /* 320 */
    u64 timed_out;          /* 328 */
};
_Static_assert(__builtin_offsetof(struct ctx_io, flag) == 320, "ctx_io layout");

struct resume_io {
    u64 x[18];              /* 0 */
    u64 elr, spsr, daif, current_el, spsel, sp;   /* 144.. */
    volatile u64 hits;      /* 192 */
};
_Static_assert(__builtin_offsetof(struct resume_io, hits) == 192, "resume_io layout");

void conf_ctx_loop(struct ctx_io *io);
extern char conf_ctx_loop_start[], conf_ctx_loop_end[], conf_resume_target[];
struct resume_io conf_resume_io;

asm(
"   .text\n"
"   .balign 4\n"
"   .global conf_ctx_loop\n"
"conf_ctx_loop:\n"
"   stp x29, x30, [sp, #-64]!\n"
"   mov x29, sp\n"
"   stp x19, x20, [sp, #16]\n"
"   stp x21, x22, [sp, #32]\n"
"   str x23, [sp, #48]\n"
"   mov x19, x0\n"
"   ldr x20, [x19, #312]\n"             /* deadline */
"   ldr x21, [x19, #288]\n"
"   msr nzcv, x21\n"
"   ldp x0, x1, [x19, #0]\n"
"   ldp x2, x3, [x19, #16]\n"
"   ldp x4, x5, [x19, #32]\n"
"   ldp x6, x7, [x19, #48]\n"
"   ldp x8, x9, [x19, #64]\n"
"   ldp x10, x11, [x19, #80]\n"
"   ldp x12, x13, [x19, #96]\n"
"   ldp x14, x15, [x19, #112]\n"
"   ldp x16, x17, [x19, #128]\n"
"   mov x23, #0\n"
"   .global conf_ctx_loop_start\n"
"conf_ctx_loop_start:\n"
"1: ldr x21, [x19, #320]\n"             /* flag */
"   cbnz x21, 2f\n"
"   isb\n"
"   mrs x22, cntvct_el0\n"
"   sub x22, x22, x20\n"                /* no flags touched: sub, tbz */
"   tbnz x22, #63, 1b\n"
"   mov x23, #1\n"                      /* deadline passed */
"2:\n"
"   .global conf_ctx_loop_end\n"
"conf_ctx_loop_end:\n"
"   stp x0, x1, [x19, #144]\n"
"   stp x2, x3, [x19, #160]\n"
"   stp x4, x5, [x19, #176]\n"
"   stp x6, x7, [x19, #192]\n"
"   stp x8, x9, [x19, #208]\n"
"   stp x10, x11, [x19, #224]\n"
"   stp x12, x13, [x19, #240]\n"
"   stp x14, x15, [x19, #256]\n"
"   stp x16, x17, [x19, #272]\n"
"   mrs x21, nzcv\n"
"   str x21, [x19, #296]\n"
"   mrs x21, daif\n"
"   str x21, [x19, #304]\n"
"   str x23, [x19, #328]\n"
"   ldr x23, [sp, #48]\n"
"   ldp x21, x22, [sp, #32]\n"
"   ldp x19, x20, [sp, #16]\n"
"   ldp x29, x30, [sp], #64\n"
"   ret\n"
"\n"
"   .balign 4\n"
"   .global conf_resume_target\n"
"conf_resume_target:\n"
"   stp x0, x1, [sp, #-16]!\n"
"   adrp x0, conf_resume_io\n"
"   add x0, x0, :lo12:conf_resume_io\n"
"   stp x2, x3, [x0, #16]\n"
"   stp x4, x5, [x0, #32]\n"
"   stp x6, x7, [x0, #48]\n"
"   stp x8, x9, [x0, #64]\n"
"   stp x10, x11, [x0, #80]\n"
"   stp x12, x13, [x0, #96]\n"
"   stp x14, x15, [x0, #112]\n"
"   stp x16, x17, [x0, #128]\n"
"   ldp x2, x3, [sp]\n"
"   stp x2, x3, [x0, #0]\n"
"   mrs x2, elr_el1\n"
"   str x2, [x0, #144]\n"
"   mrs x2, spsr_el1\n"
"   str x2, [x0, #152]\n"
"   mrs x2, daif\n"
"   str x2, [x0, #160]\n"
"   mrs x2, CurrentEL\n"
"   str x2, [x0, #168]\n"
"   mrs x2, SPSel\n"
"   str x2, [x0, #176]\n"
"   add x2, sp, #16\n"
"   str x2, [x0, #184]\n"
"   ldr x2, [x0, #192]\n"
"   add x2, x2, #1\n"
"   str x2, [x0, #192]\n"
"   ldp x2, x3, [x0, #16]\n"
"   ldp x0, x1, [sp], #16\n"
"   eret\n"
);

static struct {
    struct ctx_io io;
    struct sdei_record rec;
    s64 context[18];
    s64 context18;
    u64 elr_in_handler;
    bool resume;
    volatile u32 ran;
} cx;

static struct vehicle ctx_vehicle;

static u64 ctx_handler(struct sdei_record *rec, void *data)
{
    vehicle_lower(&ctx_vehicle);        /* deassert the bound line */
    cx.rec = *rec;
    cx.elr_in_handler = read_sysreg(elr_el1);
    for (int i = 0; i < 18; i++)
        cx.context[i] = sdei_event_context(i);
    cx.context18 = sdei_event_context(18);
    cx.io.flag = 1;
    atomic_inc(&cx.ran);
    return cx.resume ? (u64)conf_resume_target : SDEI_EV_HANDLED;
}

static const struct sdei_handler h_ctx = { ctx_handler, NULL };

/* Bind the EL1 physical timer, register and enable it on this PE, fire it
 * while conf_ctx_loop spins, and check entry and restore. */
static void run_ctx_case(bool resume)
{
    sdei_quiesce();
    memset((void *)&cx, 0, sizeof(cx));
    memset(&conf_resume_io, 0, sizeof(conf_resume_io));
    cx.resume = resume;

    struct vehicle *v = &ctx_vehicle;
    s64 ev = vehicle_bind(v);
    ASSERT_TRUE(vehicle_bound(v));
    EXPECT_EQ(sdei_interrupt_bind(v->spi ? INTID_RTC : INTID_PTIMER), ev); /* same binding */
    EXPECT_EQ(sdei_event_get_info(ev, SDEI_EVENT_INFO_EV_TYPE),
              v->spi ? SDEI_EVENT_TYPE_SHARED : SDEI_EVENT_TYPE_PRIVATE);
    EXPECT_EQ(sdei_event_get_info(ev, SDEI_EVENT_INFO_EV_PRIORITY), SDEI_EVENT_PRIORITY_NORMAL);
    ASSERT_EQ(vehicle_register(v, ARG(h_ctx)), 0);
    ASSERT_EQ(sdei_event_enable(ev), 0);
    ASSERT_EQ(sdei_pe_unmask(), 0);

    for (int i = 0; i < 18; i++)
        cx.io.in[i] = 0xc0de000000000000UL | ((u64)i << 40) | (0x1234567 * (u64)(i + 1));
    cx.io.nzcv_in = 0xA0000000;                 /* N and C set, Z and V clear */
    cx.io.deadline = timer_count() + us_to_ticks(4000000);
    u64 daif_before = read_sysreg(daif);
    vehicle_fire(v, 2000);
    conf_ctx_loop(&cx.io);
    vehicle_done(v);

    ASSERT_TRUE(!cx.io.timed_out && cx.ran == 1);
    EXPECT_EQ(sdei_event_status(ev), ST_REG | ST_EN);

    /* Handler entry: x0 event, x1 ep_arg, x2 PC in the loop, x3 PSTATE. */
    struct sdei_record *r = &cx.rec;
    EXPECT_EQ(r->x[0], ev);
    EXPECT_EQ(r->x[1], ARG(h_ctx));
    EXPECT_TRUE(r->x[2] >= (u64)conf_ctx_loop_start && r->x[2] < (u64)conf_ctx_loop_end);
    u64 pst = r->x[3];
    EXPECT_EQ(pst & 0xf0000000, cx.io.nzcv_in);         /* NZCV */
    EXPECT_EQ(pst & 0x3c0, daif_before & 0x3c0);        /* DAIF as interrupted */
    EXPECT_EQ(pst & 0x1f, 0x5);                         /* EL1h, AArch64 */
    for (int i = 4; i < 18; i++)
        if (r->x[i] != cx.io.in[i])
            test_fail(__FILE__, __LINE__, "x%d at entry 0x%lx, interrupted 0x%lx",
                      i, r->x[i], cx.io.in[i]);
    EXPECT_EQ(r->daif, DAIF_ALL);
    EXPECT_EQ(r->current_el, 1 << 2);
    EXPECT_EQ(r->spsel, 1);
    EXPECT_EQ(r->depth, 0);
    /* EVENT_CONTEXT: the interrupted x0..x17 exactly. */
    for (int i = 0; i < 18; i++)
        if ((u64)cx.context[i] != cx.io.in[i])
            test_fail(__FILE__, __LINE__, "EVENT_CONTEXT(%d) = 0x%lx, interrupted 0x%lx",
                      i, cx.context[i], cx.io.in[i]);
    EXPECT_EQ(cx.context18, INVALID);

    /* Back in the loop: x0..x17, NZCV, DAIF as they were. */
    for (int i = 0; i < 18; i++)
        if (cx.io.out[i] != cx.io.in[i])
            test_fail(__FILE__, __LINE__, "x%d after completion 0x%lx, was 0x%lx",
                      i, cx.io.out[i], cx.io.in[i]);
    EXPECT_EQ(cx.io.nzcv_out, cx.io.nzcv_in);
    EXPECT_EQ(cx.io.daif_out, daif_before);

    struct resume_io *ri = &conf_resume_io;
    if (!resume) {
        EXPECT_EQ(ri->hits, 0);
    } else {
        EXPECT_EQ(ri->hits, 1);
        EXPECT_EQ(ri->elr, r->x[2]);            /* interrupted PC */
        EXPECT_EQ(ri->spsr, r->x[3]);           /* interrupted PSTATE */
        EXPECT_EQ(ri->daif, DAIF_ALL);
        EXPECT_EQ(ri->current_el, 1 << 2);
        EXPECT_EQ(ri->spsel, 1);
        EXPECT_EQ(ri->sp, r->sp);               /* the interrupted SP_EL1 */
        for (int i = 0; i < 18; i++)
            if (ri->x[i] != cx.io.in[i])
                test_fail(__FILE__, __LINE__, "x%d at the resume address 0x%lx, was 0x%lx",
                          i, ri->x[i], cx.io.in[i]);
    }
    sdei_quiesce();
}

TEST(conf_dispatch_complete)
{
    run_ctx_case(false);
}

TEST(conf_dispatch_complete_and_resume)
{
    run_ctx_case(true);
}

/* ------------------------------------------------------------ PE masking */

TEST(conf_pe_mask)
{
    sdei_quiesce();
    hs_reset();
    EXPECT_EQ(sdei_pe_mask(), 0);
    EXPECT_EQ(sdei_pe_unmask(), 0);
    EXPECT_EQ(sdei_pe_unmask(), 0);
    EXPECT_EQ(sdei_pe_mask(), 1);
    EXPECT_EQ(sdei_pe_mask(), 0);

    /* A bound interrupt firing on a masked PE stays pending until unmask. */
    struct vehicle v;
    s64 ev = vehicle_bind(&v);
    ASSERT_TRUE(vehicle_bound(&v));
    ASSERT_EQ(vehicle_register(&v, v.spi ? ARG(h_rtc) : ARG(h_ptimer)), 0);
    ASSERT_EQ(sdei_event_enable(ev), 0);
    vehicle_fire(&v, 1000);
    EXPECT_WAIT(vehicle_asserted(&v), 3000000);
    delay_us(50000);
    EXPECT_EQ(atomic_read(&hs.total), 0);
    EXPECT_EQ(sdei_pe_unmask(), 0);
    EXPECT_WAIT(atomic_read(&hs.total) == 1, 1000000);
    EXPECT_EQ(hs.last[0].x[0], ev);
    vehicle_done(&v);

    /* SIGNAL to a masked PE is refused (nothing can take it). */
    ASSERT_EQ(sdei_event_register(0, EP, ARG(h_count), 0, 0), 0);
    ASSERT_EQ(sdei_event_enable(0), 0);
    EXPECT_EQ(sdei_pe_mask(), 1);
    EXPECT_EQ(sdei_event_signal(0, read_mpidr()), INVALID);
    EXPECT_EQ(atomic_read(&hs.total), 1);
    EXPECT_EQ(sdei_pe_unmask(), 0);
    EXPECT_EQ(sdei_event_signal(0, read_mpidr()), 0);
    EXPECT_WAIT(atomic_read(&hs.total) == 2, 1000000);
    sdei_quiesce();
}

/* PE_MASK inside a handler is legal and masks the PE. */
static volatile s64 mask_in_handler;
static u64 masking_handler(struct sdei_record *rec, void *data)
{
    mask_in_handler = sdei_pe_mask();
    atomic_inc(&hs.total);
    return SDEI_EV_HANDLED;
}
static const struct sdei_handler h_masking = { masking_handler, NULL };

TEST(conf_pe_mask_in_handler)
{
    sdei_quiesce();
    hs_reset();
    ASSERT_EQ(sdei_event_register(0, EP, ARG(h_masking), 0, 0), 0);
    ASSERT_EQ(sdei_event_enable(0), 0);
    ASSERT_EQ(sdei_pe_unmask(), 0);
    ASSERT_EQ(sdei_event_signal(0, read_mpidr()), 0);
    EXPECT_WAIT(atomic_read(&hs.total) == 1, 1000000);
    EXPECT_EQ(mask_in_handler, 1);
    EXPECT_EQ(sdei_pe_mask(), 0);               /* still masked after COMPLETE */
    EXPECT_EQ(sdei_event_status(0), ST_REG | ST_EN);
    sdei_quiesce();
}

/* --------------------------------------------------------- event 0, 4 PEs */

TEST(conf_signal_4pe)
{
    sdei_quiesce();
    hs_reset();
    if (!need_cpus(NCPUS))
        return;
    if (!workers_start(NCPUS))
        goto out;

    /* Not registered on the target yet: refused. */
    for (unsigned cpu = 0; cpu < NCPUS; cpu++)
        EXPECT_EQ(CALL_ON(cpu, SDEI_EVENT_SIGNAL, 0, smp_cpu_mpidr((cpu + 1) % NCPUS)),
                  INVALID);
    for (unsigned cpu = 0; cpu < NCPUS; cpu++) {
        EXPECT_EQ(CALL_ON(cpu, SDEI_EVENT_REGISTER, 0, EP, ARG(h_count), 0, 0), 0);
        EXPECT_EQ(CALL_ON(cpu, SDEI_EVENT_STATUS, 0), ST_REG);
        /* Registered but disabled, then masked: still refused. */
        EXPECT_EQ(CALL_ON(cpu, SDEI_EVENT_SIGNAL, 0, smp_cpu_mpidr(cpu)), INVALID);
        EXPECT_EQ(CALL_ON(cpu, SDEI_EVENT_ENABLE, 0), 0);
        EXPECT_EQ(CALL_ON(cpu, SDEI_EVENT_SIGNAL, 0, smp_cpu_mpidr(cpu)), INVALID);
        EXPECT_EQ(CALL_ON(cpu, SDEI_PE_UNMASK), 0);
    }
    /* Bad arguments. */
    EXPECT_EQ(sdei_event_signal(1, read_mpidr()), INVALID);
    EXPECT_EQ(sdei_event_signal(EV_PRIV_NORMAL, read_mpidr()), INVALID);
    EXPECT_EQ(sdei_event_signal(0, 0xff00), INVALID);
    EXPECT_EQ(sdei_event_signal(0, 0x7f), INVALID);

    /* Every PE signals every PE, one at a time (signals to a PE with the
     * event already pending would merge). */
    u32 want[MAX_CPUS] = { 0 };
    for (unsigned src = 0; src < NCPUS; src++) {
        for (unsigned dst = 0; dst < NCPUS; dst++) {
            s64 r = CALL_ON(src, SDEI_EVENT_SIGNAL, 0, smp_cpu_mpidr(dst));
            if (r != 0) {
                test_fail(__FILE__, __LINE__, "cpu%u SIGNAL to cpu%u = %ld", src, dst, r);
                continue;
            }
            want[dst]++;
            if (!WAIT_FOR(atomic_read(&hs.count[dst]) == want[dst], 1000000))
                test_fail(__FILE__, __LINE__, "cpu%u -> cpu%u: handler ran %u times, want %u",
                          src, dst, hs.count[dst], want[dst]);
        }
    }
    delay_us(20000);
    for (unsigned cpu = 0; cpu < NCPUS; cpu++) {
        EXPECT_EQ(hs.count[cpu], NCPUS);
        EXPECT_EQ(hs.last[cpu].x[0], 0);
        EXPECT_EQ(hs.last[cpu].x[1], ARG(h_count));
        EXPECT_EQ(hs.last[cpu].daif, DAIF_ALL);
    }
    EXPECT_EQ(hs.total, NCPUS * NCPUS);
out:
    workers_stop(NCPUS);
    sdei_quiesce();
}

/* ------------------------------------------------------ shared routing */

TEST(conf_shared_rm_any)
{
    sdei_quiesce();
    hs_reset();
    if (!need_cpus(NCPUS))
        return;
    if (!workers_start(NCPUS))
        goto out;

    s64 ev = sdei_interrupt_bind(INTID_RTC);
    ASSERT_TRUE(ev >= SHARED_SLOT_BASE);
    ASSERT_EQ(sdei_event_register(ev, EP, ARG(h_rtc), SDEI_EVENT_REGISTER_RM_ANY, 0), 0);
    ASSERT_EQ(sdei_event_enable(ev), 0);
    for (unsigned cpu = 0; cpu < NCPUS; cpu++)
        EXPECT_EQ(CALL_ON(cpu, SDEI_PE_UNMASK), 0);

    /* Each trigger is handled exactly once, by some PE. */
    const u32 n = 8;
    for (u32 i = 1; i <= n; i++) {
        rtc_fire_now();
        if (!WAIT_FOR(atomic_read(&hs.total) >= i, 2000000)) {
            test_fail(__FILE__, __LINE__, "trigger %u not handled", i);
            break;
        }
        delay_us(5000);
        if (atomic_read(&hs.total) != i)
            test_fail(__FILE__, __LINE__, "trigger %u handled %u times", i, hs.total - i + 1);
    }
    tinfo("per-PE: %u %u %u %u", hs.count[0], hs.count[1], hs.count[2], hs.count[3]);
    EXPECT_EQ(hs.total, n);

    /* Masked PEs are skipped: with only cpu3 unmasked, cpu3 takes it. */
    for (unsigned cpu = 0; cpu < NCPUS - 1; cpu++)
        CALL_ON(cpu, SDEI_PE_MASK);
    u32 c3 = hs.count[3];
    rtc_fire_now();
    EXPECT_WAIT(atomic_read(&hs.count[3]) == c3 + 1, 2000000);
    EXPECT_EQ(hs.total, n + 1);

    /* With every PE masked it waits, then goes to the first one unmasked. */
    CALL_ON(3, SDEI_PE_MASK);
    rtc_fire_now();
    delay_us(50000);
    EXPECT_EQ(hs.total, n + 1);
    EXPECT_EQ(CALL_ON(2, SDEI_PE_UNMASK), 0);
    EXPECT_WAIT(atomic_read(&hs.total) == n + 2, 2000000);
    EXPECT_EQ(hs.log_cpu[n + 1], 2);

    WAIT_NOT_RUNNING(ev);
    EXPECT_EQ(sdei_event_unregister(ev), 0);
    EXPECT_EQ(sdei_interrupt_release(ev), 0);
out:
    workers_stop(NCPUS);
    sdei_quiesce();
}

TEST(conf_shared_rm_pe)
{
    sdei_quiesce();
    hs_reset();
    if (!need_cpus(NCPUS))
        return;
    if (!workers_start(NCPUS))
        goto out;

    s64 ev = sdei_interrupt_bind(INTID_RTC);
    ASSERT_TRUE(ev >= SHARED_SLOT_BASE);
    for (unsigned cpu = 0; cpu < NCPUS; cpu++)
        EXPECT_EQ(CALL_ON(cpu, SDEI_PE_UNMASK), 0);

    /* ROUTING_SET while registered and disabled. */
    ASSERT_EQ(sdei_event_register(ev, EP, ARG(h_rtc), SDEI_EVENT_REGISTER_RM_ANY, 0), 0);
    EXPECT_EQ(sdei_event_routing_set(ev, SDEI_EVENT_REGISTER_RM_PE, smp_cpu_mpidr(2)), 0);
    EXPECT_EQ(sdei_event_get_info(ev, SDEI_EVENT_INFO_EV_ROUTING_MODE), 1);
    EXPECT_EQ(sdei_event_get_info(ev, SDEI_EVENT_INFO_EV_ROUTING_AFF), smp_cpu_mpidr(2));
    ASSERT_EQ(sdei_event_enable(ev), 0);
    EXPECT_EQ(sdei_event_routing_set(ev, SDEI_EVENT_REGISTER_RM_ANY, 0), DENIED);
    for (u32 i = 1; i <= 3; i++) {
        rtc_fire_now();
        EXPECT_WAIT(atomic_read(&hs.total) == i, 2000000);
    }
    EXPECT_EQ(hs.count[2], 3);

    /* The target masked: the event waits for it, no other PE takes it. */
    EXPECT_EQ(CALL_ON(2, SDEI_PE_MASK), 1);
    rtc_fire_now();
    delay_us(50000);
    EXPECT_EQ(hs.total, 3);
    EXPECT_EQ(CALL_ON(2, SDEI_PE_UNMASK), 0);
    EXPECT_WAIT(atomic_read(&hs.total) == 4, 2000000);
    EXPECT_EQ(hs.count[2], 4);

    /* REGISTER with RM_PE directly, from another PE. */
    WAIT_NOT_RUNNING(ev);
    EXPECT_EQ(sdei_event_unregister(ev), 0);
    EXPECT_EQ(CALL_ON(1, SDEI_EVENT_REGISTER, ev, EP, ARG(h_rtc), SDEI_EVENT_REGISTER_RM_PE,
                      smp_cpu_mpidr(3)), 0);
    EXPECT_EQ(CALL_ON(1, SDEI_EVENT_ENABLE, ev), 0);
    /* A shared event is one instance: cpu0 sees the same state. */
    EXPECT_EQ(sdei_event_status(ev), ST_REG | ST_EN);
    rtc_fire_now();
    EXPECT_WAIT(atomic_read(&hs.count[3]) == 1, 2000000);
    EXPECT_EQ(hs.total, 5);

    WAIT_NOT_RUNNING(ev);
    EXPECT_EQ(sdei_event_unregister(ev), 0);
    EXPECT_EQ(sdei_interrupt_release(ev), 0);
out:
    workers_stop(NCPUS);
    sdei_quiesce();
}

/* ------------------------------------------------------- PSCI and a PE */

static volatile s64 pwr[8];
static volatile u32 pwr_done;

static void pwr_first(void *arg)
{
    pwr[0] = sdei_event_register(0, EP, ARG(h_count), 0, 0);
    pwr[1] = sdei_event_enable(0);
    pwr[2] = sdei_event_register(EV_PRIV_NORMAL, EP, ARG(h_count), 0, 0);
    pwr[3] = sdei_pe_unmask();
    pwr[4] = sdei_event_status(0);
    atomic_set(&pwr_done, 1);
    /* Returning turns this CPU off (PSCI CPU_OFF) with SDEI state left in. */
}

static void pwr_second(void *arg)
{
    pwr[0] = sdei_event_status(0);
    pwr[1] = sdei_event_status(EV_PRIV_NORMAL);
    pwr[2] = sdei_pe_mask();                    /* 0: it came back masked */
    atomic_set(&pwr_done, 2);
}

TEST(conf_cpu_off_on_resets_pe)
{
    sdei_quiesce();
    hs_reset();
    if (!need_cpus(2))
        return;
    memset((void *)pwr, 0, sizeof(pwr));
    pwr_done = 0;

    ASSERT_EQ(cpu_start(1, pwr_first, NULL), PSCI_SUCCESS);
    ASSERT_TRUE(EXPECT_WAIT(atomic_read(&pwr_done) == 1, 2000000));
    EXPECT_EQ(pwr[0], 0);
    EXPECT_EQ(pwr[1], 0);
    EXPECT_EQ(pwr[2], 0);
    EXPECT_EQ(pwr[3], 0);
    EXPECT_EQ(pwr[4], ST_REG | ST_EN);
    ASSERT_TRUE(cpu_wait_off(1, 2000000));

    /* An OFF PE cannot be signalled (and is never woken by an event). */
    EXPECT_EQ(sdei_event_signal(0, smp_cpu_mpidr(1)), INVALID);
    delay_us(20000);
    EXPECT_TRUE(cpu_is_off(1));
    EXPECT_EQ(hs.total, 0);

    ASSERT_EQ(cpu_start(1, pwr_second, NULL), PSCI_SUCCESS);
    ASSERT_TRUE(EXPECT_WAIT(atomic_read(&pwr_done) == 2, 2000000));
    EXPECT_EQ(pwr[0], 0);                       /* no private registrations */
    EXPECT_EQ(pwr[1], 0);
    EXPECT_EQ(pwr[2], 0);                       /* masked */
    EXPECT_TRUE(cpu_wait_off(1, 2000000));
    EXPECT_EQ(hs.total, 0);
    sdei_quiesce();
}

/* ------------------------------------------------ bound interrupts */

static void rtc_irq_handler(u32 intid, void *arg)
{
    rtc_irq_clear();
    atomic_inc(&hs.total);
}

static void ptimer_irq_handler(u32 intid, void *arg)
{
    ptimer_stop();
    atomic_inc(&hs.total);
}

TEST(conf_bind_spi_rtc)
{
    sdei_quiesce();
    hs_reset();
    rtc_irq_enable(false);
    rtc_irq_clear();

    EXPECT_EQ(sdei_interrupt_bind(5), INVALID);         /* SGI */
    EXPECT_EQ(sdei_interrupt_bind(1020), INVALID);      /* special */
    EXPECT_EQ(sdei_interrupt_bind(0xffffffffu), INVALID);
    s64 ev = sdei_interrupt_bind(INTID_RTC);
    ASSERT_TRUE(ev >= SHARED_SLOT_BASE && ev < SHARED_SLOT_BASE + 32);
    EXPECT_EQ(sdei_interrupt_bind(INTID_RTC), ev);
    EXPECT_EQ(sdei_event_get_info(ev, SDEI_EVENT_INFO_EV_TYPE), SDEI_EVENT_TYPE_SHARED);
    EXPECT_EQ(sdei_event_get_info(ev, SDEI_EVENT_INFO_EV_PRIORITY), SDEI_EVENT_PRIORITY_NORMAL);
    ASSERT_EQ(sdei_event_register(ev, EP, ARG(h_rtc), 0, 0), 0);
    EXPECT_EQ(sdei_interrupt_release(ev), DENIED);      /* still registered */
    ASSERT_EQ(sdei_event_enable(ev), 0);
    ASSERT_EQ(sdei_pe_unmask(), 0);

    /* A real alarm, a second out. */
    u32 start = rtc_read();
    rtc_irq_enable(true);
    rtc_set_alarm(1);
    EXPECT_WAIT(atomic_read(&hs.total) == 1, 3000000);
    EXPECT_EQ(hs.last[0].x[0], ev);
    EXPECT_TRUE(rtc_read() >= start + 1);
    /* And an immediate one. */
    rtc_fire_now();
    EXPECT_WAIT(atomic_read(&hs.total) == 2, 2000000);
    delay_us(20000);
    EXPECT_EQ(hs.total, 2);                     /* the handler lowered the line */

    /* Release: the GIC gets the line back and delivers it as an IRQ. */
    WAIT_NOT_RUNNING(ev);
    EXPECT_EQ(sdei_event_unregister(ev), 0);
    EXPECT_EQ(sdei_interrupt_release(ev), 0);
    EXPECT_EQ(sdei_interrupt_release(ev), INVALID);
    EXPECT_EQ(sdei_event_register(ev, EP, ARG(h_rtc), 0, 0), DENIED);   /* unbound again */
    u64 irqs = irq_count(INTID_RTC);
    irq_register(INTID_RTC, rtc_irq_handler, NULL);
    gic_set_edge(INTID_RTC, false);
    gic_route_spi(INTID_RTC, read_mpidr());
    gic_enable(INTID_RTC);
    rtc_fire_now();
    if (!EXPECT_WAIT(atomic_read(&hs.total) == 3, 2000000))
        tinfo("rtc raw %d masked %d, GIC pending %d active %d, irqs %lu",
              rtc_irq_raw(), rtc_irq_pending(), gic_is_pending(INTID_RTC),
              gic_is_active(INTID_RTC), irq_count(INTID_RTC));
    EXPECT_EQ(irq_count(INTID_RTC), irqs + 1);
    rtc_irq_enable(false);
    sdei_quiesce();
}

TEST(conf_bind_ppi_timer)
{
    sdei_quiesce();
    hs_reset();
    if (!need_cpus(2))
        return;
    if (ppi_bind_refused()) {
        /* KVM's timers: refused with the spec's error, never bound and silent. */
        EXPECT_EQ(sdei_interrupt_bind(INTID_PTIMER), INVALID);
        EXPECT_EQ(sdei_interrupt_bind(INTID_VTIMER), INVALID);
        return;
    }
    if (!workers_start(2))
        goto out;

    s64 ev = sdei_interrupt_bind(INTID_PTIMER);
    ASSERT_TRUE(ev >= PRIV_SLOT_BASE && ev < PRIV_SLOT_BASE + 16);
    /* One binding for every PE's instance of the PPI. */
    EXPECT_EQ(CALL_ON(1, SDEI_INTERRUPT_BIND, INTID_PTIMER), ev);
    ASSERT_EQ(sdei_event_register(ev, EP, ARG(h_ptimer), 0, 0), 0);
    ASSERT_EQ(sdei_event_enable(ev), 0);
    ASSERT_EQ(sdei_pe_unmask(), 0);
    /* Private: cpu1 has its own, unregistered, instance. */
    EXPECT_EQ(CALL_ON(1, SDEI_EVENT_STATUS, ev), 0);
    EXPECT_EQ(sdei_event_status(ev), ST_REG | ST_EN);

    for (u32 i = 1; i <= 3; i++) {
        ptimer_arm(us_to_ticks(1000));
        EXPECT_WAIT(atomic_read(&hs.total) == i, 1000000);
    }
    EXPECT_EQ(hs.count[0], 3);
    EXPECT_EQ(hs.last[0].x[0], ev);

    /* RELEASE is refused while any PE has it registered. */
    EXPECT_EQ(CALL_ON(1, SDEI_EVENT_REGISTER, ev, EP, ARG(h_ptimer), 0, 0), 0);
    EXPECT_EQ(sdei_event_unregister(ev), 0);
    EXPECT_EQ(sdei_interrupt_release(ev), DENIED);
    EXPECT_EQ(CALL_ON(1, SDEI_EVENT_UNREGISTER, ev), 0);
    EXPECT_EQ(sdei_interrupt_release(ev), 0);

    /* The timer is an IRQ again. */
    irq_register(INTID_PTIMER, ptimer_irq_handler, NULL);
    gic_enable(INTID_PTIMER);
    u64 irqs = irq_count(INTID_PTIMER);
    ptimer_arm(us_to_ticks(1000));
    EXPECT_WAIT(atomic_read(&hs.total) == 4, 1000000);
    EXPECT_EQ(irq_count(INTID_PTIMER), irqs + 1);
out:
    workers_stop(2);
    sdei_quiesce();
}

/* ------------------------------------------------------------- resets */

TEST(conf_resets)
{
    sdei_quiesce();
    /* PRIVATE_RESET: every private event of this PE, nothing shared. */
    ASSERT_EQ(sdei_event_register(0, EP, ARG(h_count), 0, 0), 0);
    ASSERT_EQ(sdei_event_enable(0), 0);
    ASSERT_EQ(sdei_event_register(EV_PRIV_NORMAL, EP, ARG(h_count), 0, 0), 0);
    ASSERT_EQ(sdei_event_register(EV_SHARED_NORMAL, EP, ARG(h_count), 0, 0), 0);
    /* Without a bindable PPI (KVM), the private half is the static events'. */
    bool ppis = !ppi_bind_refused();
    s64 ppi = ppis ? sdei_interrupt_bind(INTID_PTIMER) : PRIV_SLOT_BASE;
    s64 spi = sdei_interrupt_bind(INTID_RTC);
    ASSERT_TRUE(ppi >= PRIV_SLOT_BASE && spi >= SHARED_SLOT_BASE);
    if (ppis)
        ASSERT_EQ(sdei_event_register(ppi, EP, ARG(h_ptimer), 0, 0), 0);
    EXPECT_EQ(sdei_private_reset(), 0);
    EXPECT_EQ(sdei_event_status(0), 0);
    EXPECT_EQ(sdei_event_status(EV_PRIV_NORMAL), 0);
    EXPECT_EQ(sdei_event_status(EV_SHARED_NORMAL), ST_REG);
    if (ppis) {
        EXPECT_EQ(sdei_event_status(ppi), 0);
        EXPECT_EQ(sdei_interrupt_bind(INTID_PTIMER), ppi);   /* bindings stay */
    }

    /* SHARED_RESET: every shared event, and every binding. */
    ASSERT_EQ(sdei_event_register(spi, EP, ARG(h_rtc), 0, 0), 0);
    ASSERT_EQ(sdei_event_enable(spi), 0);
    EXPECT_EQ(sdei_shared_reset(), 0);
    EXPECT_EQ(sdei_event_status(EV_SHARED_NORMAL), 0);
    EXPECT_EQ(sdei_event_status(spi), 0);
    EXPECT_EQ(sdei_interrupt_release(spi), INVALID);    /* released */
    if (ppis)
        EXPECT_EQ(sdei_interrupt_release(ppi), INVALID);
    EXPECT_EQ(sdei_event_register(spi, EP, ARG(h_rtc), 0, 0), DENIED);
    sdei_quiesce();
}

/* DENIED while running is checked in conf_states_running (PRIVATE_RESET
 * inside a private handler, SHARED_RESET inside a shared one). */

/* ------------------------------------- priorities: nesting and serialisation */

static struct {
    volatile u32 n_in, c_in, c_done, p_in, s_in;
    volatile u32 order[8];
    volatile u32 norder;
    u64 depth_c, depth_p, depth_s;
    u64 c_x3;
    s64 ctx0_before, ctx0_after;
    u64 n_seq;
    bool host_ok;
} np;

static void np_log(u32 what)
{
    u32 i = atomic_inc(&np.norder) - 1;
    if (i < 8)
        np.order[i] = what;
}

static u64 crit_handler(struct sdei_record *rec, void *data)
{
    np_log((u32)rec->x[0]);
    if (rec->x[0] == EV_SHARED_CRIT) {
        np.depth_c = rec->depth;
        np.c_x3 = rec->x[3];
        atomic_set(&np.c_in, 1);
        /* A critical event does not preempt a running critical one. */
        if (host_trigger(EV_PRIV_CRIT, 0)) {
            delay_us(100000);
            if (atomic_read(&np.p_in))
                test_fail(__FILE__, __LINE__, "event %u preempted critical event %u",
                          EV_PRIV_CRIT, EV_SHARED_CRIT);
        }
        atomic_set(&np.c_done, 1);
    } else {
        np.depth_p = rec->depth;
        atomic_set(&np.p_in, 1);
    }
    return SDEI_EV_HANDLED;
}

static u64 shared_normal_handler(struct sdei_record *rec, void *data)
{
    np_log((u32)rec->x[0]);
    np.depth_s = rec->depth;
    atomic_set(&np.s_in, 1);
    return SDEI_EV_HANDLED;
}

static u64 normal_handler(struct sdei_record *rec, void *data)
{
    np_log(0);
    np.n_seq = rec->seq;
    atomic_set(&np.n_in, 1);
    np.ctx0_before = sdei_event_context(0);

    /* A critical event preempts this normal one... */
    if (host_trigger(EV_SHARED_CRIT, -1)) {
        if (WAIT_FOR(atomic_read(&np.c_done), 5000000)) {
            /* ...and a critical one that was held back while it ran
             * follows it at once, still preempting us. */
            if (!WAIT_FOR(atomic_read(&np.p_in), 2000000))
                test_fail(__FILE__, __LINE__, "event %u did not run after %u completed",
                          EV_PRIV_CRIT, EV_SHARED_CRIT);
        } else {
            test_fail(__FILE__, __LINE__, "critical event %u did not preempt event 0",
                      EV_SHARED_CRIT);
        }
    }
    /* The frame popped back to ours. */
    np.ctx0_after = sdei_event_context(0);

    /* A normal event does not preempt a running normal one. */
    if (host_trigger(EV_SHARED_NORMAL, -1)) {
        delay_us(100000);
        if (atomic_read(&np.s_in))
            test_fail(__FILE__, __LINE__, "event %u preempted event 0", EV_SHARED_NORMAL);
        np.host_ok = true;
    }
    return SDEI_EV_HANDLED;
}

static const struct sdei_handler h_normal = { normal_handler, NULL };
static const struct sdei_handler h_crit = { crit_handler, NULL };
static const struct sdei_handler h_snormal = { shared_normal_handler, NULL };

TEST_TIMEOUT(conf_priorities, 60000000)
{
    sdei_quiesce();
    memset((void *)&np, 0, sizeof(np));

    ASSERT_EQ(sdei_event_register(0, EP, ARG(h_normal), 0, 0), 0);
    ASSERT_EQ(sdei_event_register(EV_SHARED_CRIT, EP, ARG(h_crit), SDEI_EVENT_REGISTER_RM_ANY, 0), 0);
    ASSERT_EQ(sdei_event_register(EV_PRIV_CRIT, EP, ARG(h_crit), 0, 0), 0);
    ASSERT_EQ(sdei_event_register(EV_SHARED_NORMAL, EP, ARG(h_snormal),
                                  SDEI_EVENT_REGISTER_RM_ANY, 0), 0);
    ASSERT_EQ(sdei_event_enable(0), 0);
    ASSERT_EQ(sdei_event_enable(EV_SHARED_CRIT), 0);
    ASSERT_EQ(sdei_event_enable(EV_PRIV_CRIT), 0);
    ASSERT_EQ(sdei_event_enable(EV_SHARED_NORMAL), 0);
    ASSERT_EQ(sdei_pe_unmask(), 0);

    ASSERT_EQ(sdei_event_signal(0, read_mpidr()), 0);
    EXPECT_WAIT(atomic_read(&np.n_in), 1000000);
    /* Event 0 completed, then the held-back normal event ran. */
    EXPECT_WAIT(atomic_read(&np.s_in), 2000000);

    u32 want[] = { 0, EV_SHARED_CRIT, EV_PRIV_CRIT, EV_SHARED_NORMAL };
    EXPECT_EQ(np.norder, 4);
    for (unsigned i = 0; i < 4 && i < np.norder; i++)
        if (np.order[i] != want[i])
            test_fail(__FILE__, __LINE__, "handler %u was event %u, want %u",
                      i, np.order[i], want[i]);
    EXPECT_EQ(np.depth_c, 1);                   /* nested in event 0 */
    EXPECT_EQ(np.depth_p, 1);                   /* nested in event 0, after 101 */
    EXPECT_EQ(np.depth_s, 0);                   /* after event 0, not nested */
    EXPECT_EQ(np.c_x3 & 0x3c0, DAIF_ALL);       /* it interrupted a handler */
    EXPECT_EQ(np.ctx0_after, np.ctx0_before);
    EXPECT_EQ(sdei_event_status(EV_SHARED_CRIT), ST_REG | ST_EN);
    EXPECT_EQ(sdei_event_status(0), ST_REG | ST_EN);
    sdei_quiesce();
}

/* ------------------------------------------------------- back-end outage */

/*
 * The v2 front-end (smccc-user) under a back-end outage: a call made while
 * the daemon is stopped waits, and is answered once it runs again; a call
 * in flight while the daemon is killed and restarted from its journal is
 * re-sent by QEMU and answered exactly once.  Host steps: 1 the host has
 * SIGSTOPped sdeid (and SIGCONTs it a while later); 2 the host is about to
 * SIGKILL sdeid and start it again.  Run only when named.
 */
TEST_TIMEOUT(outage_resend, 120000000)
{
    sdei_quiesce();
    hs_reset();
    ASSERT_EQ(sdei_event_register(EV_SHARED_NORMAL, EP, ARG(h_count),
                                  SDEI_EVENT_REGISTER_RM_ANY, 0), 0);
    ASSERT_EQ(sdei_event_enable(EV_SHARED_NORMAL), 0);
    ASSERT_EQ(sdei_pe_unmask(), 0);

    if (!host_wait("HOST", 1, -1, 30000000))
        return;
    u64 t0 = timer_count();
    EXPECT_TRUE(sdei_version() > 0);
    u64 ms = ticks_to_ns(timer_count() - t0) / 1000000;
    printf("  [outage_resend] a call to a stopped back-end waited %lu ms, then was "
           "answered\n", ms);
    EXPECT_TRUE(ms >= 1000);

    if (!host_wait("HOST", 2, -1, 30000000))
        return;
    t0 = timer_count();
    /* Masking is not idempotent in its result (1: it changed, 0: already
     * masked), so a call applied twice would be seen. */
    EXPECT_EQ(sdei_pe_mask(), 1);
    ms = ticks_to_ns(timer_count() - t0) / 1000000;
    printf("  [outage_resend] a call across a back-end restart took %lu ms\n", ms);
    EXPECT_EQ(sdei_pe_mask(), 0);
    EXPECT_EQ(sdei_pe_unmask(), 0);
    EXPECT_EQ(sdei_event_status(EV_SHARED_NORMAL), ST_REG | ST_EN);
    if (host_trigger(EV_SHARED_NORMAL, -1))
        EXPECT_WAIT(atomic_read(&hs.total) == 1, 5000000);
    EXPECT_EQ(hs.last[0].x[0], EV_SHARED_NORMAL);
    sdei_quiesce();
}
