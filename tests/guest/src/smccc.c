#include "smccc.h"
#include "fdt.h"
#include "lib.h"

u32 smccc_conduit = CONDUIT_HVC;
const char *smccc_conduit_source = "default";

extern u64 boot_el;     /* start.S: the EL we were entered at */

/*
 * QEMU's virt machine uses SMC for PSCI exactly when it emulates EL2 (or
 * EL3) and HVC otherwise, and says so in /psci "method". Without a DT, fall
 * back on the same rule from the EL we were entered at.  Under KVM the DT
 * always says HVC, but KVM takes SMCCC calls on both conduits, so
 * `conduit=smc` (or hvc) on the command line overrides the DT.
 */
void smccc_init(void)
{
    const char *m = fdt_getprop_str("/psci", "method");

    if (fdt_bootarg_is("conduit", "smc") || fdt_bootarg_is("conduit", "hvc")) {
        smccc_conduit = fdt_bootarg_is("conduit", "smc") ? CONDUIT_SMC : CONDUIT_HVC;
        smccc_conduit_source = "bootargs conduit=";
    } else if (m && !strcmp(m, "smc")) {
        smccc_conduit = CONDUIT_SMC;
        smccc_conduit_source = "dt /psci method";
    } else if (m && !strcmp(m, "hvc")) {
        smccc_conduit = CONDUIT_HVC;
        smccc_conduit_source = "dt /psci method";
    } else if (boot_el >= 2) {
        smccc_conduit = CONDUIT_SMC;
        smccc_conduit_source = "no dt /psci; entered at EL2";
    } else {
        smccc_conduit = CONDUIT_HVC;
        smccc_conduit_source = "no dt /psci; default";
    }
}

struct smccc_res smccc_call(u64 fid, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
    struct smccc_res r;
    if (smccc_conduit == CONDUIT_SMC)
        smccc_smc(fid, a1, a2, a3, a4, a5, &r);
    else
        smccc_hvc(fid, a1, a2, a3, a4, a5, &r);
    return r;
}

s64 psci_version(void) { return (s64)smccc_call(PSCI_VERSION, 0, 0, 0, 0, 0).a0; }
s64 psci_features(u32 fid) { return (s64)smccc_call(PSCI_FEATURES, fid, 0, 0, 0, 0).a0; }

s64 psci_cpu_on(u64 mpidr, u64 entry, u64 context)
{
    return (s64)smccc_call(PSCI_CPU_ON, mpidr, entry, context, 0, 0).a0;
}

s64 psci_affinity_info(u64 mpidr)
{
    return (s64)smccc_call(PSCI_AFFINITY_INFO, mpidr, 0, 0, 0, 0).a0;
}

void psci_cpu_off(void) { smccc_call(PSCI_CPU_OFF, 0, 0, 0, 0, 0); }

void psci_system_off(void)
{
    smccc_call(PSCI_SYSTEM_OFF, 0, 0, 0, 0, 0);
    printf("sdei-guest: PSCI SYSTEM_OFF returned; halting\n");
    halt();
}
