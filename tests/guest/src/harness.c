#include "test.h"
#include "exceptions.h"
#include "fdt.h"
#include "gic.h"
#include "rtc.h"
#include "sdei.h"
#include "smccc.h"
#include "smp.h"

extern const struct test_case __tests_start[], __tests_end[];

static struct {
    const struct test_case *tc;
    volatile u32 failed;
    char reason[256];
    struct spinlock lock;
} cur;

static struct jmpbuf *abort_point[MAX_CPUS];
static unsigned passed, failed;

void test_set_abort_point(unsigned cpu, struct jmpbuf *jb)
{
    if (cpu < MAX_CPUS)
        atomic_set(&abort_point[cpu], jb);
}

bool test_failed(void) { return atomic_read(&cur.failed) != 0; }
const char *test_name(void) { return cur.tc ? cur.tc->name : "(none)"; }

void test_fail(const char *file, int line, const char *fmt, ...)
{
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    /* Only the file name, not the build path. */
    for (const char *p = file; *p; p++)
        if (*p == '/')
            file = p + 1;

    u64 t = spin_lock(&cur.lock);
    bool first = atomic_inc(&cur.failed) == 1;
    if (first)
        snprintf(cur.reason, sizeof(cur.reason), "%s:%d: %s", file, line, msg);
    spin_unlock(&cur.lock, t);
    printf("  [%s] cpu%u failure: %s:%d: %s\n", test_name(), cpu_id(), file, line, msg);
}

void tinfo(const char *fmt, ...)
{
    char msg[240];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    printf("  [%s] %s\n", test_name(), msg);
}

static __noreturn void finish(void)
{
    printf("SDEI-TEST-SUMMARY passed=%u failed=%u\n", passed, failed);
    psci_system_off();
}

void test_abort(void)
{
    unsigned cpu = cpu_id();

    gic_abort_active();         /* if we are leaving an IRQ handler */
    uart_release_if_owner();
    sdei_abort_if_running();    /* if we are leaving an SDEI handler */

    struct jmpbuf *jb = atomic_read(&abort_point[cpu]);
    if (jb)
        guest_longjmp(jb, 1);

    printf("  [%s] cpu%u: abort with no recovery point\n", test_name(), cpu);
    if (cpu == 0) {
        if (cur.tc) {
            printf("SDEI-TEST %s FAIL %s\n", cur.tc->name, cur.reason);
            failed++;
        }
        finish();
    }
    psci_cpu_off();
    halt();
}

/* Per-case watchdog on CPU 0's virtual timer. */
static void watchdog_irq(u32 intid, void *arg)
{
    vtimer_stop();
    test_fail(__FILE__, __LINE__, "watchdog: case still running after %lu ms",
              cur.tc ? cur.tc->timeout_us / 1000 : 0);
    test_abort();
}

/* Put the machine back to a known state between cases. */
static void cleanup(void)
{
    static const u32 keep[] = { INTID_VTIMER };

    ptimer_stop();
    rtc_irq_enable(false);
    rtc_irq_clear();
    exception_clear_hooks();
    gic_disable_all_except(keep, 1);
    sdei_cpu_state[0].depth = 0;

    /* Blame a CPU that didn't turn off on the case that left it on, once;
     * later cases that need it fail on their own. */
    static bool stuck[MAX_CPUS];
    for (unsigned cpu = 1; cpu < smp_num_cpus(); cpu++) {
        if (stuck[cpu] || cpu_wait_off(cpu, 1000000))
            continue;
        stuck[cpu] = true;
        test_fail(__FILE__, __LINE__, "cpu%u still on after the case", cpu);
    }
}

static void run_one(const struct test_case *tc)
{
    struct jmpbuf jb;

    cur.tc = tc;
    cur.reason[0] = '\0';
    atomic_set(&cur.failed, 0);

    u64 t0 = timer_count();
    if (gic_present())
        vtimer_arm(us_to_ticks(tc->timeout_us));
    test_set_abort_point(0, &jb);
    if (guest_setjmp(&jb) == 0) {
        irq_enable();
        tc->fn();
    }
    irq_disable();
    vtimer_stop();
    test_set_abort_point(0, NULL);
    u64 us = ticks_to_us(timer_count() - t0);

    cleanup();

    if (test_failed()) {
        failed++;
        printf("SDEI-TEST %s FAIL %s\n", tc->name, cur.reason);
    } else {
        passed++;
        printf("SDEI-TEST %s PASS\n", tc->name);
    }
    printf("  [%s] took %lu us\n", tc->name, us);
    cur.tc = NULL;
}

/*
 * bootargs "tests=a,b,c": is `name` selected?  No tests= means every case
 * except the bench_* measurements, the outage_* cases (which need a host
 * that stops and restarts sdeid) and the nmi_* cases (which need sdeid's
 * --nmi-event and an interrupt-backed event), which run only when named.
 */
static bool selected(const char *sel, const char *name)
{
    if (!sel)
        return strncmp(name, "bench_", 6) != 0 && strncmp(name, "outage_", 7) != 0
               && strncmp(name, "nmi_", 4) != 0;
    size_t n = strlen(name);
    for (const char *p = sel; *p && *p != ' ';) {
        const char *e = p;
        while (*e && *e != ',' && *e != ' ')
            e++;
        if ((size_t)(e - p) == n && !strncmp(p, name, n))
            return true;
        p = *e == ',' ? e + 1 : e;
    }
    return false;
}

void harness_run(void)
{
    const char *sel = fdt_bootarg("tests");

    if (gic_present()) {
        irq_register(INTID_VTIMER, watchdog_irq, NULL);
        gic_set_priority(INTID_VTIMER, GIC_PRIO_HIGH);
        gic_enable(INTID_VTIMER);
    } else {
        printf("sdei-guest: no watchdog: %s\n", gic_absent_reason());
    }

    unsigned n = 0;
    for (const struct test_case *tc = __tests_start; tc < __tests_end; tc++) {
        if (!selected(sel, tc->name))
            continue;
        n++;
        run_one(tc);
    }

    /* A requested name that matched nothing is a failure, not a silent pass. */
    for (const char *p = sel; p && *p && *p != ' ';) {
        const char *e = p;
        while (*e && *e != ',' && *e != ' ')
            e++;
        bool found = false;
        for (const struct test_case *tc = __tests_start; tc < __tests_end; tc++)
            found |= strlen(tc->name) == (size_t)(e - p) && !strncmp(tc->name, p, e - p);
        if (!found && e > p) {
            printf("SDEI-TEST %.*s FAIL no such test\n", (int)(e - p), p);
            failed++;
        }
        p = *e == ',' ? e + 1 : e;
    }
    finish();
}
