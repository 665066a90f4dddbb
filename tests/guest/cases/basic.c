/* Boot environment and PSCI sanity. */
#include "exceptions.h"
#include "fdt.h"
#include "smccc.h"
#include "smp.h"
#include "test.h"

extern u64 boot_el;
extern char vector_table[];

TEST(boot)
{
    tinfo("entered at EL%lu, running at EL%lu (CurrentEL=0x%lx)",
          boot_el, current_el(), read_sysreg(CurrentEL));
    tinfo("conduit %s (%s)", smccc_conduit_name(), smccc_conduit_source);
    tinfo("MPIDR 0x%lx, CNTFRQ %lu Hz, %u cpus, DTB at 0x%lx",
          read_mpidr(), timer_freq(), smp_num_cpus(), fdt_address());

    EXPECT_EQ(current_el(), 1);
    EXPECT_TRUE(boot_el == 1 || boot_el == 2);
    EXPECT_EQ(cpu_id(), 0);
    EXPECT_EQ(vbar(), (u64)vector_table);
    EXPECT_EQ(read_sysreg(sctlr_el1) & 1, 1);       /* MMU on */
    EXPECT_NE(timer_freq(), 0);
    /* QEMU virt uses SMC for PSCI exactly when it emulates EL2, so the DT
     * method (when there is a DT) and the entry EL must agree, unless the
     * command line chose (conduit=, under KVM). */
    if (fdt_bootarg("conduit"))
        EXPECT_EQ(smccc_conduit, fdt_bootarg_is("conduit", "smc") ? CONDUIT_SMC : CONDUIT_HVC);
    else
        EXPECT_EQ(smccc_conduit, boot_el >= 2 ? CONDUIT_SMC : CONDUIT_HVC);
}

TEST(psci_version)
{
    s64 v = psci_version();
    u64 major = ((u64)v >> 16) & 0x7fff, minor = (u64)v & 0xffff;

    tinfo("PSCI_VERSION = 0x%lx (v%lu.%lu)", (u64)v, major, minor);
    ASSERT_TRUE(v >= 0);
    /* 0.2 is the first version with the SMC64 CPU_ON/AFFINITY_INFO we use. */
    EXPECT_TRUE(major >= 1 || minor >= 2);
    if (major >= 1)
        EXPECT_EQ(psci_features(PSCI_CPU_ON), PSCI_SUCCESS);
    EXPECT_EQ(psci_affinity_info(read_mpidr()), PSCI_AFF_ON);
}
