/* Just enough flattened-device-tree reading to pick the SMCCC conduit and
 * count CPUs. QEMU puts the DTB at the base of RAM for ELF images; x0 at
 * entry is used when it points at one. */
#ifndef GUEST_FDT_H
#define GUEST_FDT_H

#include "types.h"

bool fdt_init(u64 addr);
u64 fdt_address(void);                   /* 0 if none found */

/* path is absolute ("/psci"); a component without '@' matches a node name
 * with any unit address. Returns NULL if absent. */
const void *fdt_getprop(const char *path, const char *prop, u32 *len);
const char *fdt_getprop_str(const char *path, const char *prop);

/* Where the value of `key=...` in /chosen/bootargs (-append) starts, or NULL. */
const char *fdt_bootarg(const char *key);
/* Is `key=value` (the whole word) in /chosen/bootargs? */
bool fdt_bootarg_is(const char *key, const char *value);
/* The decimal value of `key=N` in /chosen/bootargs (-append), or dflt. */
u64 fdt_bootarg_u64(const char *key, u64 dflt);

/* MPIDRs from /cpus/cpu@N/reg, in DT order. Returns the count. */
int fdt_cpus(u64 *mpidrs, int max);

static inline u32 fdt32_to_cpu(u32 v) { return __builtin_bswap32(v); }

#endif
