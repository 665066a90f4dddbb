/* Primary CPU bring-up, then the test harness. */
#include "fdt.h"
#include "gic.h"
#include "lib.h"
#include "smccc.h"
#include "smp.h"
#include "test.h"

/* Written by start.S (after BSS is zeroed). */
u64 boot_x0;
u64 boot_el;

void main(void);

void main(void)
{
    uart_init();
    printf("\nsdei-guest: entered at EL%lu, now EL%lu, MPIDR 0x%lx\n",
           boot_el, current_el(), read_mpidr());

    /*
     * Booted as a Linux Image (sdei-guest.bin), QEMU passes the DTB in x0.
     * Booted as an ELF it passes nothing and puts the DTB at the base of RAM
     * only if it fits below the image (it doesn't at 0x40080000). Without a
     * DT, smccc_init and smp_init use QEMU's rules instead: SMC iff entered
     * at EL2, CPUs from PSCI AFFINITY_INFO.
     */
    const char *dtb_src = "x0";
    if (!fdt_init(boot_x0)) {
        dtb_src = "base of RAM";
        if (!fdt_init(RAM_BASE))
            dtb_src = "none (ELF boot; use sdei-guest.bin for a DT)";
    }
    printf("sdei-guest: device tree: %s\n", dtb_src);

    smccc_init();
    smp_init();
    if (!gic_init())
        printf("sdei-guest: %s\n", gic_absent_reason());
    printf("sdei-guest: conduit %s (%s), %u cpus, DTB at 0x%lx, GICv3 %s\n",
           smccc_conduit_name(), smccc_conduit_source, smp_num_cpus(), fdt_address(),
           gic_present() ? "yes" : "no");

    harness_run();
}
