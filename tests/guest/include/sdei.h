/*
 * SDEI client side: function IDs, return codes, GET_INFO indices, flags,
 * thin call wrappers, and the handler trampoline (src/sdei_entry.S).
 * ABI: Arm DEN0054 as reconstructed in shared/brief/SDEI-REFERENCE.md.
 */
#ifndef GUEST_SDEI_H
#define GUEST_SDEI_H

#include "asm_defs.h"

/* Function IDs (SMC64, Standard Secure Service range 0xC4000020-0xC400003F) */
#define SDEI_VERSION                    0xC4000020
#define SDEI_EVENT_REGISTER             0xC4000021
#define SDEI_EVENT_ENABLE               0xC4000022
#define SDEI_EVENT_DISABLE              0xC4000023
#define SDEI_EVENT_CONTEXT              0xC4000024
#define SDEI_EVENT_COMPLETE             0xC4000025
#define SDEI_EVENT_COMPLETE_AND_RESUME  0xC4000026
#define SDEI_EVENT_UNREGISTER           0xC4000027
#define SDEI_EVENT_STATUS               0xC4000028
#define SDEI_EVENT_GET_INFO             0xC4000029
#define SDEI_EVENT_ROUTING_SET          0xC400002A
#define SDEI_PE_MASK                    0xC400002B
#define SDEI_PE_UNMASK                  0xC400002C
#define SDEI_INTERRUPT_BIND             0xC400002D
#define SDEI_INTERRUPT_RELEASE          0xC400002E
#define SDEI_EVENT_SIGNAL               0xC400002F
#define SDEI_FEATURES                   0xC4000030
#define SDEI_PRIVATE_RESET              0xC4000031
#define SDEI_SHARED_RESET               0xC4000032

/* Return codes (x0) */
#define SDEI_SUCCESS                    0
#define SDEI_NOT_SUPPORTED              (-1)
#define SDEI_INVALID_PARAMETERS         (-2)
#define SDEI_DENIED                     (-3)
#define SDEI_PENDING                    (-5)
#define SDEI_OUT_OF_RESOURCE            (-10)

/* SDEI_VERSION result */
#define SDEI_VERSION_MAJOR(v)           (((v) >> 48) & 0x7fff)
#define SDEI_VERSION_MINOR(v)           (((v) >> 32) & 0xffff)
#define SDEI_VERSION_VENDOR(v)          ((v) & 0xffffffff)

/* SDEI_EVENT_GET_INFO info indices (Linux uapi numbering) */
#define SDEI_EVENT_INFO_EV_TYPE         0
#define SDEI_EVENT_INFO_EV_SIGNALED     1
#define SDEI_EVENT_INFO_EV_PRIORITY     2
#define SDEI_EVENT_INFO_EV_ROUTING_MODE 3
#define SDEI_EVENT_INFO_EV_ROUTING_AFF  4

#define SDEI_EVENT_TYPE_PRIVATE         0
#define SDEI_EVENT_TYPE_SHARED          1
#define SDEI_EVENT_PRIORITY_NORMAL      0
#define SDEI_EVENT_PRIORITY_CRITICAL    1

/* SDEI_EVENT_REGISTER flags / ROUTING_SET mode */
#define SDEI_EVENT_REGISTER_RM_ANY      0
#define SDEI_EVENT_REGISTER_RM_PE       1
#define SDEI_EVENT_REGISTER_RELATIVE    (1 << 1)    /* v1.1 relative mode */

/* SDEI_EVENT_STATUS bits */
#define SDEI_EVENT_STATUS_REGISTERED    (1 << 0)
#define SDEI_EVENT_STATUS_ENABLED       (1 << 1)
#define SDEI_EVENT_STATUS_RUNNING       (1 << 2)

/* SDEI_EVENT_COMPLETE status */
#define SDEI_EV_HANDLED                 0
#define SDEI_EV_FAILED                  1

/* SDEI_FEATURES feature numbers */
#define SDEI_FEATURE_BIND_SLOTS         0
#define SDEI_FEATURE_RELATIVE_MODE      1

/* The one standard event: private, normal priority, signalable */
#define SDEI_EVENT_SIGNAL_NUM           0

#ifndef __ASSEMBLER__
#include "types.h"

/* What the trampoline saw at handler entry. */
struct sdei_record {
    u64 x[18];          /* as found: x0 event, x1 ep_arg, x2 PC, x3 PSTATE, x4..x17 interrupted */
    u64 daif;           /* live PSTATE.DAIF at entry (0x3c0 = all masked) */
    u64 current_el;     /* CurrentEL register (EL1 reads 0x4) */
    u64 spsel;          /* 1 = running on SP_EL1 */
    u64 sp;             /* SP at entry (the interrupted SP_EL1) */
    u64 depth;          /* handlers already running on this CPU at entry */
    u64 seq;            /* this CPU's entry count, including this one */
};

struct sdei_cpu {
    volatile u32 depth;
    volatile u32 overflow;
    volatile u64 entries;
    volatile u64 complete_fid;
    volatile u64 complete_arg;
    volatile u64 complete_ret;
    u64 pad[3];
    struct sdei_record rec[SDEI_MAX_NEST];  /* by nesting level */
    struct sdei_record last;                /* copy of the most recent handler's record */
};
_Static_assert(sizeof(struct sdei_record) == SDEI_REC_SIZE, "sdei_record layout");
_Static_assert(__builtin_offsetof(struct sdei_record, daif) == SDEI_REC_DAIF, "sdei_record layout");
_Static_assert(__builtin_offsetof(struct sdei_record, seq) == SDEI_REC_SEQ, "sdei_record layout");
_Static_assert(__builtin_offsetof(struct sdei_cpu, complete_ret) == SDEI_CPU_COMPLETE_RET, "sdei_cpu layout");
_Static_assert(__builtin_offsetof(struct sdei_cpu, rec) == SDEI_CPU_REC, "sdei_cpu layout");
_Static_assert(sizeof(struct sdei_cpu) == SDEI_CPU_SIZE, "sdei_cpu layout");

extern struct sdei_cpu sdei_cpu_state[];

/*
 * A test's handler. Return SDEI_EV_HANDLED / SDEI_EV_FAILED to complete with
 * SDEI_EVENT_COMPLETE, or an address (> 1) to complete with
 * SDEI_EVENT_COMPLETE_AND_RESUME to it (e.g. vbar() + VEC_CUR_SPX_IRQ to make
 * it look like an IRQ, as Linux does).
 */
typedef u64 (*sdei_handler_fn)(struct sdei_record *rec, void *data);

/* Pass a pointer to one of these as ep_arg to SDEI_EVENT_REGISTER. */
struct sdei_handler {
    sdei_handler_fn fn;
    void *data;
};

extern char sdei_entry[];           /* ep_addr for SDEI_EVENT_REGISTER */
static inline u64 sdei_entry_point(void) { return (u64)sdei_entry; }

/* Called by the trampoline. */
u64 sdei_dispatch(struct sdei_record *rec);
__noreturn void sdei_complete_returned(s64 ret);
__noreturn void sdei_abort_resumed(void);

/* Self-test support: run the trampoline without a dispatcher (see
 * sdei_entry.S). Returns what the completion call returned in x0. */
s64 sdei_fake_dispatch_run(const u64 regs[18]);

/* If this CPU is inside an SDEI handler, leave it via
 * COMPLETE_AND_RESUME and longjmp to the test's recovery point. */
void sdei_abort_if_running(void);

/* Call wrappers: all return x0 as signed. */
s64 sdei_call0(u32 fid);
s64 sdei_version(void);
s64 sdei_event_register(u32 ev, u64 ep, u64 arg, u64 flags, u64 affinity);
s64 sdei_event_enable(u32 ev);
s64 sdei_event_disable(u32 ev);
s64 sdei_event_context(u32 reg);
s64 sdei_event_unregister(u32 ev);
s64 sdei_event_status(u32 ev);
s64 sdei_event_get_info(u32 ev, u32 info);
s64 sdei_event_routing_set(u32 ev, u64 mode, u64 affinity);
s64 sdei_pe_mask(void);
s64 sdei_pe_unmask(void);
s64 sdei_interrupt_bind(u32 intid);
s64 sdei_interrupt_release(u32 ev);
s64 sdei_event_signal(u32 ev, u64 target_mpidr);
s64 sdei_features(u32 feature);
s64 sdei_private_reset(void);
s64 sdei_shared_reset(void);
/* A case's clean start: this PE masked, every private event of this PE and
 * every shared event unregistered (PE_MASK, PRIVATE_RESET, SHARED_RESET). */
void sdei_quiesce(void);

const char *sdei_strerror(s64 ret);

#endif
#endif
