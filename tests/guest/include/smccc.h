/* SMCCC calls through the run-time conduit, and PSCI helpers. */
#ifndef GUEST_SMCCC_H
#define GUEST_SMCCC_H

#include "types.h"

#define CONDUIT_HVC 0
#define CONDUIT_SMC 1

#ifndef __ASSEMBLER__

struct smccc_res {
    u64 a0, a1, a2, a3;
};

/* Which instruction smccc_call (and the SDEI trampoline) uses. Set by
 * smccc_init from the DT /psci "method"; read by assembly. */
extern u32 smccc_conduit;
extern const char *smccc_conduit_source;    /* where the choice came from */

void smccc_init(void);
static inline const char *smccc_conduit_name(void) { return smccc_conduit == CONDUIT_SMC ? "smc" : "hvc"; }

struct smccc_res smccc_call(u64 fid, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5);
/* Assembly back ends: x0..x5 in, x0..x3 stored to *res. */
void smccc_hvc(u64 fid, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5, struct smccc_res *res);
void smccc_smc(u64 fid, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5, struct smccc_res *res);

/* PSCI (SMC64 IDs where there is one: mpidr/entry are 64-bit) */
#define PSCI_VERSION            0x84000000
#define PSCI_CPU_OFF            0x84000002
#define PSCI_CPU_ON             0xC4000003
#define PSCI_AFFINITY_INFO      0xC4000004
#define PSCI_SYSTEM_OFF         0x84000008
#define PSCI_FEATURES           0x8400000A

#define PSCI_SUCCESS            0
#define PSCI_NOT_SUPPORTED      (-1)
#define PSCI_INVALID_PARAMS     (-2)
#define PSCI_DENIED             (-3)
#define PSCI_ALREADY_ON         (-4)
#define PSCI_ON_PENDING         (-5)
#define PSCI_INTERNAL_FAILURE   (-6)

#define PSCI_AFF_ON             0
#define PSCI_AFF_OFF            1
#define PSCI_AFF_ON_PENDING     2

s64 psci_version(void);
s64 psci_features(u32 fid);
s64 psci_cpu_on(u64 mpidr, u64 entry, u64 context);
s64 psci_affinity_info(u64 mpidr);
void psci_cpu_off(void);                /* returns only on failure */
__noreturn void psci_system_off(void);

#endif
#endif
