/* SDEI cases that make sense without a dispatcher (stock QEMU) too. */
#include "exceptions.h"
#include "sdei.h"
#include "test.h"

TEST(sdei_version_probe)
{
    s64 v = sdei_version();

    tinfo("SDEI_VERSION x0 = 0x%lx", (u64)v);
    if (v == SDEI_NOT_SUPPORTED) {
        tinfo("NOT_SUPPORTED (-1): no SDEI dispatcher behind the conduit");
        return;
    }
    tinfo("SDEI v%lu.%lu, vendor 0x%lx", SDEI_VERSION_MAJOR((u64)v),
          SDEI_VERSION_MINOR((u64)v), SDEI_VERSION_VENDOR((u64)v));
    if (v < 0 || SDEI_VERSION_MAJOR((u64)v) != 1)
        FAIL("SDEI_VERSION returned 0x%lx: neither NOT_SUPPORTED nor major 1", (u64)v);
}

/*
 * Drive the handler trampoline without a dispatcher: enter it as a
 * dispatcher would and check what it recorded and which completion call it
 * made. The completion itself must be refused (NOT_SUPPORTED on stock QEMU,
 * DENIED from a dispatcher with no event running).
 */
static struct {
    u32 calls;
    u32 depth_in;
    u64 ret;
    struct sdei_record seen;
} ts;

static u64 selftest_handler(struct sdei_record *rec, void *data)
{
    ts.calls++;
    ts.depth_in = sdei_cpu_state[cpu_id()].depth;
    ts.seen = *rec;
    return ts.ret;
}

static const struct sdei_handler selftest = { selftest_handler, NULL };

static void run_once(const u64 *regs, u64 handler_ret, u64 want_fid, u64 want_arg)
{
    struct sdei_cpu *c = &sdei_cpu_state[cpu_id()];
    u64 entries = c->entries;

    ts.calls = 0;
    ts.ret = handler_ret;
    s64 r = sdei_fake_dispatch_run(regs);

    EXPECT_EQ(ts.calls, 1);
    for (int i = 0; i < 18; i++)
        if (ts.seen.x[i] != regs[i])
            test_fail(__FILE__, __LINE__, "x%d recorded as 0x%lx, entered with 0x%lx",
                      i, ts.seen.x[i], regs[i]);
    EXPECT_EQ(ts.seen.daif, DAIF_ALL);
    EXPECT_EQ(ts.seen.current_el, 1 << 2);
    EXPECT_EQ(ts.seen.spsel, 1);
    EXPECT_EQ(ts.seen.depth, 0);
    EXPECT_EQ(ts.seen.sp & 15, 0);
    EXPECT_EQ(ts.depth_in, 1);
    EXPECT_EQ(c->entries, entries + 1);
    EXPECT_EQ(c->depth, 0);
    EXPECT_EQ(c->complete_fid, want_fid);
    EXPECT_EQ(c->complete_arg, want_arg);
    EXPECT_EQ(c->last.seq, entries + 1);
    EXPECT_TRUE(r == SDEI_NOT_SUPPORTED || r == SDEI_DENIED);
    /* The longjmp back restores our own DAIF: IRQs unmasked again. */
    EXPECT_EQ(read_sysreg(daif) & DAIF_I, 0);
}

TEST(sdei_trampoline_selftest)
{
    u64 regs[18];

    regs[0] = 0x40000001;               /* event */
    regs[1] = (u64)&selftest;           /* ep_arg */
    regs[2] = 0x40123456;               /* "interrupted PC" */
    regs[3] = 0x600003c5;               /* "interrupted PSTATE" */
    for (int i = 4; i < 18; i++)
        regs[i] = 0x5d0e000000000000UL | ((u64)i << 32) | (0xa5a5a500 + i);

    run_once(regs, SDEI_EV_HANDLED, SDEI_EVENT_COMPLETE, SDEI_EV_HANDLED);
    run_once(regs, SDEI_EV_FAILED, SDEI_EVENT_COMPLETE, SDEI_EV_FAILED);
    u64 resume = vbar() + VEC_CUR_SPX_IRQ;
    run_once(regs, resume, SDEI_EVENT_COMPLETE_AND_RESUME, resume);
}
