/*
 * Load cases for scripts/load-test and tests/test_load.py (named only: the
 * bench_ prefix).  Parameters come from the bootargs next to tests=...:
 *   load_seconds=N   bench_load_toggle's duration (default 10)
 *   load_calls=N     bench_load_calls' number of calls (default 10000)
 *   load_pace=US     bench_load_toggle: after each rise, wait up to US
 *                    microseconds for its dispatch before lowering the line
 *                    (default 0: flat out, no wait)
 *
 * bench_load_toggle: the PL031 RTC interrupt (SPI 2, INTID 34, level) is
 * bound with INTERRUPT_BIND, its event registered (RM_ANY) and enabled, this
 * PE unmasked.  The RTC's raw interrupt is latched once (match register =
 * count) and never cleared, so each write of its mask register (RTCIMSC)
 * moves the line: the loop raises and lowers it as fast as it can.  The
 * handler lowers the line (so a level that is still high when it completes
 * cannot re-dispatch) and counts its entries, noting whether the line was
 * still high (the loop had not lowered it yet) at entry.
 *
 * Counts, on one line at the end:
 *   "  [bench_load_toggle] seconds=S rises=R handled=D during=H after=A
 *    toggles_per_s=T"
 * Every dispatch needs a rise since the previous one (the handler leaves the
 * line low), so D <= R; the rises not dispatched are pulses that ended
 * before the event could be taken (a level-sensitive line that deasserts
 * before it is acknowledged is no longer pending, as at a GIC), rises that
 * came while the event was already pending (coalesced), or rises while no
 * back-end held the line (the device hands claimed lines back to the GIC
 * when it drops a back-end, and the GIC has the line disabled here).
 *
 * bench_load_calls: N seeded random SDEI calls (all 19 functions, valid and
 * invalid arguments; entry points always the counting trampoline, never
 * the watchdog's INTID 27 bound; a relative-mode registration gets the
 * trampoline's offset from VBAR_EL1), each result checked to be a value SDEI
 * defines.  "  [bench_load_calls] calls=N handled=D bad=B seconds=S".
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

#define RTCMR    0x04
#define RTCIMSC  0x10

/* The host reads sdeid's counters when it sees a phase's first and last
 * line: make no call for a while after printing one. */
static void settle_host(void)
{
    u64 end = deadline_us(1000000);
    while (!deadline_passed(end))
        ;
}

static volatile u64 handled, during, after;

static u64 h_rtc(struct sdei_record *rec, void *data)
{
    if (readl(RTC_BASE + RTCIMSC) & 1)
        during++;
    else
        after++;
    writel(RTC_BASE + RTCIMSC, 0);          /* lower the line */
    handled++;
    return SDEI_EV_HANDLED;
}
static const struct sdei_handler hrtc = { h_rtc, NULL };

TEST_TIMEOUT(bench_load_toggle, 3600000000UL)
{
    u64 seconds = fdt_bootarg_u64("load_seconds", 10);
    u64 pace = us_to_ticks(fdt_bootarg_u64("load_pace", 0));

    sdei_pe_mask();
    sdei_private_reset();
    sdei_shared_reset();
    rtc_irq_enable(false);
    rtc_irq_clear();
    handled = during = after = 0;

    s64 ev = sdei_interrupt_bind(INTID_RTC);
    ASSERT_TRUE(ev > 0);
    ASSERT_EQ(sdei_event_register((u32)ev, sdei_entry_point(), (u64)&hrtc,
                                  SDEI_EVENT_REGISTER_RM_ANY, 0), 0);
    ASSERT_EQ(sdei_event_enable((u32)ev), 0);
    ASSERT_EQ(sdei_pe_unmask(), 0);

    /* Latch the raw interrupt with the line masked (low). */
    writel(RTC_BASE + 0x0c, 1);
    for (int i = 0; i < 4 && !rtc_irq_raw(); i++)
        writel(RTC_BASE + RTCMR, rtc_read());
    ASSERT_TRUE(EXPECT_WAIT(rtc_irq_raw(), 3000000));
    printf("  [bench_load_toggle] toggling for %lu s (pace %lu us)\n", seconds,
           fdt_bootarg_u64("load_pace", 0));
    settle_host();

    u64 rises = 0, t0 = timer_count(), end = t0 + us_to_ticks(seconds * 1000000);
    while (!deadline_passed(end)) {
        if (pace) {
            u64 h = handled, until = timer_count() + pace;
            writel(RTC_BASE + RTCIMSC, 1);
            rises++;
            while (handled == h && !deadline_passed(until))
                ;
            writel(RTC_BASE + RTCIMSC, 0);
            continue;
        }
        for (int i = 0; i < 256; i++) {
            writel(RTC_BASE + RTCIMSC, 1);
            rises++;
            writel(RTC_BASE + RTCIMSC, 0);
        }
    }
    u64 us = ticks_to_us(timer_count() - t0);
    /* A dispatch of the last rise may still be on its way. */
    u64 settle = deadline_us(2000000);
    while (!deadline_passed(settle))
        ;
    EXPECT_EQ(sdei_pe_mask(), 1);
    EXPECT_EQ(sdei_event_disable((u32)ev), 0);
    EXPECT_EQ(sdei_event_unregister((u32)ev), 0);
    EXPECT_EQ(sdei_interrupt_release((u32)ev), 0);
    rtc_irq_clear();

    u64 d = handled;
    printf("  [bench_load_toggle] seconds=%lu.%03lu rises=%lu handled=%lu during=%lu "
           "after=%lu toggles_per_s=%lu\n", us / 1000000, us / 1000 % 1000, rises, d,
           (u64)during, (u64)after, rises * 1000000 / (us ? us : 1));
    EXPECT_TRUE(d <= rises);
    EXPECT_TRUE(d > 0);
    EXPECT_EQ(during + after, d);
    sdei_shared_reset();
}

/* ------------------------------------------------------------ random calls */

static u64 seed;

static u64 rnd(void)
{
    seed ^= seed << 13;
    seed ^= seed >> 7;
    seed ^= seed << 17;
    return seed;
}

static volatile u64 calls_handled;

static u64 h_count(struct sdei_record *rec, void *data)
{
    calls_handled++;
    return SDEI_EV_HANDLED;
}
static const struct sdei_handler hcount = { h_count, NULL };

static u64 pick_event(void)
{
    static const u64 evs[] = { 0, 0, 0, 100, 101, 200, 201, 1000, 2000, 2001, 12345 };
    u64 r = rnd();
    return r & 0x100 ? (r >> 32) : evs[(r >> 16) % (sizeof(evs) / sizeof(evs[0]))];
}

static u64 pick_intid(void)
{
    u64 r = rnd();
    u64 intid = r & 1 ? 30 : r & 2 ? 34 : (r >> 8) % 1100;
    return intid == INTID_VTIMER ? 30 : intid;  /* the watchdog stays the harness's */
}

static bool sdei_result_ok(s64 v)
{
    return v >= 0 || v == SDEI_NOT_SUPPORTED || v == SDEI_INVALID_PARAMETERS ||
           v == SDEI_DENIED || v == SDEI_PENDING || v == SDEI_OUT_OF_RESOURCE;
}

TEST_TIMEOUT(bench_load_calls, 3600000000UL)
{
    u64 n = fdt_bootarg_u64("load_calls", 10000), bad = 0;
    u64 me = read_mpidr();

    seed = 0x2545f4914f6cdd1dUL ^ fdt_bootarg_u64("load_seed", 1);
    calls_handled = 0;
    sdei_pe_mask();
    sdei_private_reset();
    sdei_shared_reset();

    printf("  [bench_load_calls] calling %lu times\n", n);
    settle_host();
    u64 t0 = timer_count();
    for (u64 i = 0; i < n; i++) {
        u64 r = rnd();
        u32 fid = SDEI_VERSION + (u32)(r % 19);
        u64 a1 = 0, a2 = 0, a3 = 0, a4 = 0;

        switch (fid) {
        case SDEI_EVENT_REGISTER:
            a1 = pick_event();
            a2 = sdei_entry_point();
            a3 = (u64)&hcount;
            a4 = (r >> 8) & 3;                  /* RM_ANY/RM_PE, relative */
            if (a4 & SDEI_EVENT_REGISTER_RELATIVE)
                a2 = sdei_entry_point() - vbar();   /* an offset from VBAR_EL1 */
            break;
        case SDEI_EVENT_ENABLE: case SDEI_EVENT_DISABLE: case SDEI_EVENT_UNREGISTER:
        case SDEI_EVENT_STATUS: case SDEI_INTERRUPT_RELEASE:
            a1 = pick_event();
            break;
        case SDEI_EVENT_CONTEXT:
            a1 = (r >> 8) % 20;
            break;
        case SDEI_EVENT_GET_INFO:
            a1 = pick_event();
            a2 = (r >> 8) % 6;
            break;
        case SDEI_EVENT_ROUTING_SET:
            a1 = pick_event();
            a2 = (r >> 8) & 3;
            a3 = (r >> 16) & 1 ? me : rnd();
            break;
        case SDEI_INTERRUPT_BIND:
            a1 = pick_intid();
            break;
        case SDEI_EVENT_SIGNAL:
            a1 = (r >> 8) & 7 ? 0 : pick_event();
            a2 = (r >> 12) & 3 ? me : (r >> 16) & 1 ? smp_cpu_mpidr(1) : rnd();
            break;
        case SDEI_FEATURES:
            a1 = (r >> 8) % 4;
            break;
        case SDEI_EVENT_COMPLETE: case SDEI_EVENT_COMPLETE_AND_RESUME:
            a1 = (r >> 8) & 1;                  /* outside a handler: DENIED */
            break;
        default:
            break;
        }
        s64 v = (s64)smccc_call(fid, a1, a2, a3, a4, 0).a0;
        if (fid != SDEI_VERSION && !sdei_result_ok(v)) {
            if (bad++ < 8)
                printf("  [bench_load_calls] fid 0x%x (0x%lx 0x%lx 0x%lx) -> %ld\n",
                       fid, a1, a2, a3, v);
        }
    }
    u64 us = ticks_to_us(timer_count() - t0);
    printf("  [bench_load_calls] calls=%lu handled=%lu bad=%lu seconds=%lu.%03lu\n",
           n, (u64)calls_handled, bad, us / 1000000, us / 1000 % 1000);
    EXPECT_EQ(bad, 0);
    settle_host();
    sdei_pe_mask();
    sdei_private_reset();
    sdei_shared_reset();
}
