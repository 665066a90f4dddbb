// SPDX-License-Identifier: GPL-2.0
/*
 * sdeid_spin: wedge every online CPU with interrupts masked.
 *
 * A test module for the sdeid integration tests. Once it is loaded no CPU
 * of the guest takes an interrupt again: no timer tick, no IPI, no console
 * input. The only way left to reach the guest is an event delivered through
 * SDEI, which preempts code that runs with interrupts masked. The test loads
 * this module, then has sdeid deliver an NMI (e.g. a GHES error record or a
 * crash request) and checks that the guest reacts, typically with a
 * backtrace that names sdeid_spin_forever.
 *
 * insmod never returns: on_each_cpu() runs the function on the other CPUs
 * from the IPI handler and then on the calling CPU, each time with interrupts
 * masked, and none of them comes back.
 *
 * Build it with scripts/build-guest-module sdeid_spin.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/init.h>
#include <linux/irqflags.h>
#include <linux/module.h>
#include <linux/printk.h>
#include <linux/smp.h>

static noinline void sdeid_spin_forever(void *unused)
{
	pr_emerg("CPU %d spinning with interrupts masked\n", smp_processor_id());
	local_irq_disable();
	for (;;)
		cpu_relax();
}

static int __init sdeid_spin_init(void)
{
	on_each_cpu(sdeid_spin_forever, NULL, 0);
	return 0; /* not reached */
}
module_init(sdeid_spin_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Spin on every online CPU with interrupts masked (sdeid NMI test)");
