/*
 * Issue 11: QEMU's NMI through SDEI, and a critical platform event behind
 * a device interrupt.  Named-only cases (nmi_*: src/harness.c), run by
 * tests/test_nmi_guest.py with
 *   sdeid --event 300:shared:critical --nmi-event 300
 *         --event 200:shared:critical:intid=34
 *
 * nmi_inject: registers event 300, prints "SDEI-WAIT-NMI 300" and waits;
 * the host runs inject-nmi on QEMU's own QMP monitor, and the handler runs.
 * Then it unregisters the event and prints "SDEI-WAIT-HOST-NMI": the host
 * injects another NMI (refused: not registered) and reads sdeid's
 * statistics, then answers '+' on the console.
 *
 * nmi_line_nested: event 200 is the PL031 RTC (INTID 34) owned by the
 * dispatcher from start-up.  The guest cannot bind INTID 34 (INVALID) nor
 * release event 200 (DENIED).  Inside event 0's (normal) handler the RTC is
 * made to fire: the critical handler runs nested over it, and the normal
 * handler then finds its own saved context (EVENT_CONTEXT) and its own
 * registers and stack intact and completes back to the test.
 */
#include "gic.h"
#include "mmio.h"
#include "rtc.h"
#include "sdei.h"
#include "smccc.h"
#include "test.h"

#define EV_NMI      300
#define EV_RTC      200
#define EP          sdei_entry_point()
#define ARG(h)      ((u64)&(h))

static struct {
    volatile u32 ran;
    volatile u64 depth;
    volatile u64 event;
    volatile s64 normal_status;   /* EVENT_STATUS(0) seen by the critical handler */
    volatile u32 crit_ran;
    volatile u32 normal_done;
    volatile u32 ctx_ok;
    volatile u32 canary_ok;
} nm;

static u64 nmi_handler(struct sdei_record *rec, void *data)
{
    nm.event = rec->x[0];
    nm.depth = rec->depth;
    atomic_inc(&nm.ran);
    return SDEI_EV_HANDLED;
}

static const struct sdei_handler h_nmi = { nmi_handler, NULL };

TEST_TIMEOUT(nmi_inject, 60000000)
{
    sdei_quiesce();
    memset((void *)&nm, 0, sizeof(nm));
    ASSERT_EQ(sdei_event_get_info(EV_NMI, SDEI_EVENT_INFO_EV_PRIORITY), 1);  /* critical */
    ASSERT_EQ(sdei_event_register(EV_NMI, EP, ARG(h_nmi), SDEI_EVENT_REGISTER_RM_ANY, 0), 0);
    ASSERT_EQ(sdei_event_enable(EV_NMI), 0);
    ASSERT_EQ(sdei_pe_unmask(), 0);
    printf("SDEI-WAIT-NMI %d\n", EV_NMI);
    EXPECT_WAIT(atomic_read(&nm.ran) == 1, 30000000);
    EXPECT_EQ(nm.event, EV_NMI);
    printf("  [nmi_inject] handler ran for event %lu\n", (u64)nm.event);
    EXPECT_EQ(sdei_event_unregister(EV_NMI), 0);
    /* Unregistered now: the host's next inject-nmi is refused, and it reads
     * sdeid's statistics while the VM still runs (sdeid exits with it),
     * then answers '+' on the console. */
    printf("SDEI-WAIT-HOST-NMI\n");
    EXPECT_WAIT(uart_getc_nowait() == '+', 30000000);
    EXPECT_EQ(atomic_read(&nm.ran), 1);
    sdei_pe_mask();
}

/* The critical handler, behind the RTC line: deassert it, look around. */
static u64 rtc_crit_handler(struct sdei_record *rec, void *data)
{
    rtc_irq_clear();
    nm.event = rec->x[0];
    nm.depth = rec->depth;
    nm.normal_status = sdei_event_status(0);
    atomic_inc(&nm.crit_ran);
    return SDEI_EV_HANDLED;
}

static const struct sdei_handler h_rtc_crit = { rtc_crit_handler, NULL };

/* Raise the RTC interrupt now (match = count; QEMU's PL031 fires at once). */
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

static u64 normal_handler(struct sdei_record *rec, void *data)
{
    volatile u64 canary[4] = { 0x1111, 0x2222, 0x3333, 0x4444 };
    u64 ctx[18];

    for (int i = 0; i < 18; i++)
        ctx[i] = (u64)sdei_event_context(i);
    rtc_fire_now();
    EXPECT_WAIT(atomic_read(&nm.crit_ran) == 1, 5000000);
    /* Back in the normal handler: its saved context is still its own. */
    bool same = true;
    for (int i = 0; i < 18; i++)
        same &= (u64)sdei_event_context(i) == ctx[i];
    for (int i = 4; i < 18; i++)        /* x4..x17 arrive as interrupted */
        same &= ctx[i] == rec->x[i];
    nm.ctx_ok = same;
    nm.canary_ok = canary[0] == 0x1111 && canary[1] == 0x2222 && canary[2] == 0x3333
                   && canary[3] == 0x4444;
    atomic_inc(&nm.normal_done);
    return SDEI_EV_HANDLED;
}

static const struct sdei_handler h_normal = { normal_handler, NULL };

TEST(nmi_line_nested)
{
    sdei_quiesce();
    memset((void *)&nm, 0, sizeof(nm));
    rtc_irq_enable(false);
    rtc_irq_clear();

    EXPECT_EQ(sdei_interrupt_bind(INTID_RTC), SDEI_INVALID_PARAMETERS);   /* the platform's */
    EXPECT_EQ(sdei_interrupt_release(EV_RTC), SDEI_DENIED);
    ASSERT_EQ(sdei_event_get_info(EV_RTC, SDEI_EVENT_INFO_EV_PRIORITY), 1);
    ASSERT_EQ(sdei_event_register(EV_RTC, EP, ARG(h_rtc_crit), SDEI_EVENT_REGISTER_RM_ANY, 0), 0);
    ASSERT_EQ(sdei_event_enable(EV_RTC), 0);
    ASSERT_EQ(sdei_event_register(0, EP, ARG(h_normal), 0, 0), 0);
    ASSERT_EQ(sdei_event_enable(0), 0);
    ASSERT_EQ(sdei_pe_unmask(), 0);

    /* Values the interrupted code holds across the whole nesting. */
    volatile u64 mine[3] = { 0xdead, 0xbeef, 0xf00d };
    ASSERT_EQ(sdei_event_signal(0, read_mpidr()), 0);
    EXPECT_WAIT(atomic_read(&nm.normal_done) == 1, 10000000);

    EXPECT_EQ(atomic_read(&nm.crit_ran), 1);
    EXPECT_EQ(nm.event, EV_RTC);
    EXPECT_EQ(nm.depth, 1);                         /* one handler below it: nested */
    EXPECT_TRUE(nm.normal_status & SDEI_EVENT_STATUS_RUNNING);
    EXPECT_TRUE(nm.ctx_ok);
    EXPECT_TRUE(nm.canary_ok);
    EXPECT_TRUE(mine[0] == 0xdead && mine[1] == 0xbeef && mine[2] == 0xf00d);
    EXPECT_EQ(sdei_event_status(0) & SDEI_EVENT_STATUS_RUNNING, 0);
    EXPECT_EQ(sdei_event_status(EV_RTC) & SDEI_EVENT_STATUS_RUNNING, 0);
    printf("  [nmi_line_nested] critical event %lu ran at depth %lu inside event 0\n",
           (u64)nm.event, (u64)nm.depth);

    rtc_irq_enable(false);
    EXPECT_EQ(sdei_event_unregister(EV_RTC), 0);
    EXPECT_EQ(sdei_event_unregister(0), 0);
    sdei_pe_mask();
}
