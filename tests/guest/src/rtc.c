#include "rtc.h"
#include "mmio.h"

#define RTCDR    0x00
#define RTCMR    0x04
#define RTCCR    0x0c
#define RTCIMSC  0x10
#define RTCRIS   0x14
#define RTCMIS   0x18
#define RTCICR   0x1c

u32 rtc_read(void) { return readl(RTC_BASE + RTCDR); }

void rtc_set_alarm(u32 seconds_from_now)
{
    writel(RTC_BASE + RTCCR, 1);        /* make sure it counts */
    writel(RTC_BASE + RTCMR, rtc_read() + seconds_from_now);
}

void rtc_irq_enable(bool on) { writel(RTC_BASE + RTCIMSC, on ? 1 : 0); }
bool rtc_irq_pending(void) { return readl(RTC_BASE + RTCMIS) & 1; }
bool rtc_irq_raw(void) { return readl(RTC_BASE + RTCRIS) & 1; }
void rtc_irq_clear(void) { writel(RTC_BASE + RTCICR, 1); }
