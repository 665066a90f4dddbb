#include "timer.h"

void delay_us(u64 us)
{
    u64 dl = deadline_us(us);
    while (!deadline_passed(dl))
        cpu_relax();
}

/* CVAL rather than TVAL: an absolute compare value cannot be shortened by a
 * preemption between reading the counter and writing the register. */
void ptimer_arm(u64 ticks)
{
    isb();
    write_sysreg(cntp_cval_el0, read_sysreg(cntpct_el0) + ticks);
    write_sysreg(cntp_ctl_el0, CNT_CTL_ENABLE);
    isb();
}

void ptimer_stop(void)
{
    write_sysreg(cntp_ctl_el0, 0);
    isb();
}

void vtimer_arm(u64 ticks)
{
    write_sysreg(cntv_cval_el0, timer_count() + ticks);
    write_sysreg(cntv_ctl_el0, CNT_CTL_ENABLE);
    isb();
}

void vtimer_stop(void)
{
    write_sysreg(cntv_ctl_el0, 0);
    isb();
}
