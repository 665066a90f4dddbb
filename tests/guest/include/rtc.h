/* PL031 RTC at 0x09010000, interrupt SPI 2 (INTID 34, level). Counts seconds
 * of host time, so alarms are up to a second coarse. */
#ifndef GUEST_RTC_H
#define GUEST_RTC_H

#include "types.h"

u32 rtc_read(void);
void rtc_set_alarm(u32 seconds_from_now);   /* match register = now + n */
void rtc_irq_enable(bool on);
bool rtc_irq_pending(void);                 /* masked interrupt status */
bool rtc_irq_raw(void);                     /* raw status, independent of mask */
void rtc_irq_clear(void);

#endif
