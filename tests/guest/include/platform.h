/*
 * QEMU "virt" machine layout the guest relies on (hw/arm/virt.c memmap) and
 * constants shared between C and assembly.
 *
 * The GIC driver is GICv3 only: run QEMU with -M virt,gic-version=3 (the
 * default is GICv2, which has no system-register CPU interface).
 */
#ifndef GUEST_PLATFORM_H
#define GUEST_PLATFORM_H

#define GICD_BASE       0x08000000
#define GICR_BASE       0x080A0000
#define GICR_STRIDE     0x20000       /* RD_base + SGI_base frames */
#define GICR_REGION_END 0x09000000    /* the redistributor region is 0xF60000 long */
#define UART0_BASE      0x09000000    /* PL011 */
#define RTC_BASE        0x09010000    /* PL031 */
#define RAM_BASE        0x40000000

/* INTIDs as wired by virt: PPI n = INTID 16+n, SPI n = INTID 32+n. */
#define INTID_VTIMER    27            /* EL1 virtual timer, PPI 11 */
#define INTID_PTIMER    30            /* EL1 physical timer, PPI 14 */
#define INTID_RTC       34            /* PL031, SPI 2, level-high */

/* CPUs are indexed by MPIDR.Aff0; virt with GICv3 puts 16 CPUs per cluster. */
#define MAX_CPUS        8
#define STACK_SIZE      16384

#endif
