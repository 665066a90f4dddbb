/* Interrupt delivery through the GICv3: a PPI (EL1 physical timer) and an
 * SPI (PL031 RTC alarm). */
#include "exceptions.h"
#include "gic.h"
#include "rtc.h"
#include "test.h"

static struct {
    volatile u32 fired;
    volatile u32 intid;
    volatile u32 cpu;
    volatile u64 pct;           /* CNTPCT at the handler */
    volatile u64 cval;
    volatile u32 status;        /* device status seen in the handler */
    volatile u32 rtc;
} irq;

static void ptimer_handler(u32 intid, void *arg)
{
    irq.pct = read_sysreg(cntpct_el0);
    irq.cval = read_sysreg(cntp_cval_el0);
    irq.status = ptimer_ctl() & CNT_CTL_ISTATUS;
    irq.intid = intid;
    irq.cpu = cpu_id();
    ptimer_stop();              /* deasserts the (level) PPI */
    atomic_inc(&irq.fired);
}

TEST(timer_ppi_irq)
{
    if (!gic_present())
        FAIL("%s", gic_absent_reason());
    memset((void *)&irq, 0, sizeof(irq));

    irq_register(INTID_PTIMER, ptimer_handler, NULL);
    gic_enable(INTID_PTIMER);
    u64 irq_vec0 = exception_stats(0)->count[VEC_CUR_SPX_IRQ >> 7];

    /* 1: fires 10 ms out with IRQs unmasked. */
    u64 t0 = timer_count();
    ptimer_arm(us_to_ticks(10000));
    EXPECT_WAIT(atomic_read(&irq.fired) == 1, 1000000);
    tinfo("fired after %lu us (asked for 10000)", ticks_to_us(timer_count() - t0));
    EXPECT_EQ(irq.intid, INTID_PTIMER);
    EXPECT_EQ(irq.cpu, 0);
    EXPECT_EQ(irq.status, CNT_CTL_ISTATUS);
    EXPECT_TRUE(irq.pct >= irq.cval);
    EXPECT_TRUE(exception_stats(0)->count[VEC_CUR_SPX_IRQ >> 7] > irq_vec0);

    /* 2: with PSTATE.I set the timer condition is met and the interrupt is
     * pending in the GIC, but nothing is taken until we unmask. */
    irq_disable();
    ptimer_arm(us_to_ticks(1000));
    EXPECT_WAIT(ptimer_ctl() & CNT_CTL_ISTATUS, 1000000);
    EXPECT_WAIT(gic_is_pending(INTID_PTIMER), 100000);
    EXPECT_EQ(atomic_read(&irq.fired), 1);
    irq_enable();
    EXPECT_WAIT(atomic_read(&irq.fired) == 2, 100000);
    EXPECT_EQ(irq_count(INTID_PTIMER), 2);
}

static void rtc_handler(u32 intid, void *arg)
{
    irq.status = rtc_irq_pending();
    irq.rtc = rtc_read();
    irq.intid = intid;
    irq.cpu = cpu_id();
    rtc_irq_clear();            /* deasserts the (level) SPI */
    atomic_inc(&irq.fired);
}

TEST(rtc_spi_irq)
{
    if (!gic_present())
        FAIL("%s", gic_absent_reason());
    memset((void *)&irq, 0, sizeof(irq));

    rtc_irq_enable(false);
    rtc_irq_clear();
    irq_register(INTID_RTC, rtc_handler, NULL);
    gic_set_edge(INTID_RTC, false);
    gic_route_spi(INTID_RTC, read_mpidr());
    gic_enable(INTID_RTC);

    u32 start = rtc_read();
    u64 t0 = timer_count();
    rtc_set_alarm(1);
    rtc_irq_enable(true);
    EXPECT_WAIT(atomic_read(&irq.fired) >= 1, 3000000);
    tinfo("alarm at RTC %u (set at %u) after %lu ms", irq.rtc, start,
          ticks_to_us(timer_count() - t0) / 1000);
    EXPECT_EQ(irq.intid, INTID_RTC);
    EXPECT_EQ(irq.cpu, 0);
    EXPECT_EQ(irq.status, 1);
    EXPECT_TRUE(irq.rtc >= start + 1);
    EXPECT_TRUE(!rtc_irq_raw());
    /* Cleared in the handler, so exactly one delivery. */
    delay_us(20000);
    EXPECT_EQ(irq_count(INTID_RTC), 1);
    rtc_irq_enable(false);
}
