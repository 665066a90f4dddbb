/* C side of the SDEI client: dispatch from the trampoline, failure paths,
 * and call wrappers. */
#include "sdei.h"
#include "lib.h"
#include "smccc.h"
#include "test.h"

struct sdei_cpu sdei_cpu_state[MAX_CPUS] __aligned(64);

extern char __image_start[], __image_end[];
extern void sdei_fake_dispatch(const u64 regs[18]);
extern char sdei_abort_resume[];

static struct jmpbuf *fake_jb[MAX_CPUS];

static bool in_image(u64 p, u64 size, u64 align)
{
    return p >= (u64)__image_start && p + size <= (u64)__image_end && !(p & (align - 1));
}

u64 sdei_dispatch(struct sdei_record *rec)
{
    struct sdei_cpu *c = &sdei_cpu_state[cpu_id()];
    const struct sdei_handler *h = (const void *)rec->x[1];
    u64 ret = SDEI_EV_HANDLED;

    /* x1 is whatever the dispatcher hands us: only trust it if it points
     * at a handler descriptor inside our image. */
    if (in_image((u64)h, sizeof(*h), 8) && in_image((u64)h->fn, 4, 4)) {
        ret = h->fn(rec, h->data);
    } else {
        test_fail(__FILE__, __LINE__, "SDEI event %ld entered with bad ep_arg 0x%lx",
                  (s64)rec->x[0], rec->x[1]);
        ret = SDEI_EV_FAILED;
    }
    c->last = *rec;
    return ret;
}

void sdei_complete_returned(s64 ret)
{
    unsigned cpu = cpu_id();
    struct sdei_cpu *c = &sdei_cpu_state[cpu];

    if (fake_jb[cpu])
        guest_longjmp(fake_jb[cpu], 1);
    test_fail(__FILE__, __LINE__, "SDEI completion 0x%lx(0x%lx) returned %ld (%s)",
              c->complete_fid, c->complete_arg, ret, sdei_strerror(ret));
    test_abort();
}

s64 sdei_fake_dispatch_run(const u64 regs[18])
{
    unsigned cpu = cpu_id();
    struct jmpbuf jb;

    sdei_cpu_state[cpu].complete_ret = 0;
    if (guest_setjmp(&jb) == 0) {
        fake_jb[cpu] = &jb;
        sdei_fake_dispatch(regs);
    }
    fake_jb[cpu] = NULL;
    return (s64)sdei_cpu_state[cpu].complete_ret;
}

void sdei_abort_if_running(void)
{
    unsigned cpu = cpu_id();
    struct sdei_cpu *c = &sdei_cpu_state[cpu];

    if (!c->depth)
        return;
    if (fake_jb[cpu]) {         /* no dispatcher involved: just forget it */
        c->depth = 0;
        fake_jb[cpu] = NULL;
        return;
    }
    /* Unwind one level through the dispatcher; sdei_abort_resume calls
     * back into test_abort, which repeats this while nested. */
    c->depth--;
    struct smccc_res r = smccc_call(SDEI_EVENT_COMPLETE_AND_RESUME,
                                    (u64)sdei_abort_resume, 0, 0, 0, 0);
    printf("sdei: COMPLETE_AND_RESUME for abort returned %ld\n", (s64)r.a0);
    c->depth = 0;
}

void sdei_abort_resumed(void)
{
    test_abort();
}

const char *sdei_strerror(s64 ret)
{
    switch (ret) {
    case SDEI_SUCCESS: return "SUCCESS";
    case SDEI_NOT_SUPPORTED: return "NOT_SUPPORTED";
    case SDEI_INVALID_PARAMETERS: return "INVALID_PARAMETERS";
    case SDEI_DENIED: return "DENIED";
    case SDEI_PENDING: return "PENDING";
    case SDEI_OUT_OF_RESOURCE: return "OUT_OF_RESOURCE";
    default: return ret < 0 ? "unknown error" : "value";
    }
}

static s64 call(u32 fid, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
    return (s64)smccc_call(fid, a1, a2, a3, a4, a5).a0;
}

s64 sdei_call0(u32 fid) { return call(fid, 0, 0, 0, 0, 0); }
s64 sdei_version(void) { return call(SDEI_VERSION, 0, 0, 0, 0, 0); }
s64 sdei_event_register(u32 ev, u64 ep, u64 arg, u64 flags, u64 affinity)
{
    return call(SDEI_EVENT_REGISTER, ev, ep, arg, flags, affinity);
}
s64 sdei_event_enable(u32 ev) { return call(SDEI_EVENT_ENABLE, ev, 0, 0, 0, 0); }
s64 sdei_event_disable(u32 ev) { return call(SDEI_EVENT_DISABLE, ev, 0, 0, 0, 0); }
s64 sdei_event_context(u32 reg) { return call(SDEI_EVENT_CONTEXT, reg, 0, 0, 0, 0); }
s64 sdei_event_unregister(u32 ev) { return call(SDEI_EVENT_UNREGISTER, ev, 0, 0, 0, 0); }
s64 sdei_event_status(u32 ev) { return call(SDEI_EVENT_STATUS, ev, 0, 0, 0, 0); }
s64 sdei_event_get_info(u32 ev, u32 info) { return call(SDEI_EVENT_GET_INFO, ev, info, 0, 0, 0); }
s64 sdei_event_routing_set(u32 ev, u64 mode, u64 affinity)
{
    return call(SDEI_EVENT_ROUTING_SET, ev, mode, affinity, 0, 0);
}
s64 sdei_pe_mask(void) { return call(SDEI_PE_MASK, 0, 0, 0, 0, 0); }
s64 sdei_pe_unmask(void) { return call(SDEI_PE_UNMASK, 0, 0, 0, 0, 0); }
s64 sdei_interrupt_bind(u32 intid) { return call(SDEI_INTERRUPT_BIND, intid, 0, 0, 0, 0); }
s64 sdei_interrupt_release(u32 ev) { return call(SDEI_INTERRUPT_RELEASE, ev, 0, 0, 0, 0); }
s64 sdei_event_signal(u32 ev, u64 target) { return call(SDEI_EVENT_SIGNAL, ev, target, 0, 0, 0); }
s64 sdei_features(u32 feature) { return call(SDEI_FEATURES, feature, 0, 0, 0, 0); }
s64 sdei_private_reset(void) { return call(SDEI_PRIVATE_RESET, 0, 0, 0, 0, 0); }
s64 sdei_shared_reset(void) { return call(SDEI_SHARED_RESET, 0, 0, 0, 0, 0); }

void sdei_quiesce(void)
{
    sdei_pe_mask();
    sdei_private_reset();
    sdei_shared_reset();
}
