/*
 * hostile: the guest side of scripts/fuzz-qemu (a hostile back-end against
 * QEMU's smccc-user device).  The case is outage_hostile: as the other
 * outage_* cases it needs a host that replaces the back-end, so it runs only
 * when named (tests=outage_hostile).
 *
 * The host puts a fuzzer between QEMU and sdeid: some connections are
 * relayed to a real `sdeid --protocol 2`, the others are answered by a
 * back-end that misbehaves (malformed or disallowed vCPU replies, garbage on
 * the control stream, stalls, floods).  The device must refuse every bad
 * reply without touching the vCPU, drop the connection and re-send the
 * request to the next back-end.  So whatever the host does, every call here
 * must come back with sdeid's answer and with this PE exactly as it was:
 *
 *   CPU 0 cycles through SDEI calls with known results (register, enable,
 *   signal and handle event 0, mask, unmask, disable, unregister, invalid
 *   arguments).  Each call goes through hostile_call_{hvc,smc}, which loads
 *   x4..x30 and NZCV with fresh patterns and records, after the call, every
 *   general register, SP, CurrentEL, SPSel, DAIF and NZCV.  Only x0..x3 may
 *   change (SMCCC results); anything else, an x0 that is not sdeid's answer,
 *   or the fuzzer's marker in any register, is a violation.
 *   CPU 1 spins in hostile_spin with x0..x17 holding patterns, checking
 *   CurrentEL and those registers on every iteration: the fuzzer kicks it, so
 *   its PULLs are the ones it answers with bad ENTERs.
 *
 * Two replies are permitted by the protocol and by the architecture but
 * hijack the caller: a RESTORE to a misaligned or a non-canonical PC (an
 * exception return there takes a PC alignment fault or an instruction
 * abort).  If the device applies one, CPU 0's exception hook sees the fault
 * at the fuzzer's marker address, counts it (pc_faults), returns to the
 * call's return address, and the call is made again (sdeid never saw it).
 *
 * The host ends the case by sending 'q' on the UART.  Output:
 *   "  [outage_hostile] ready"  once CPU 1 spins (the host starts fuzzing then)
 *   "  [outage_hostile] cycles=... calls=... handled=... violations=... pc_faults=..."
 *   "  [outage_hostile] VIOLATION ..." for each violation (the first 16)
 */
#include "exceptions.h"
#include "mmio.h"
#include "sdei.h"
#include "smccc.h"
#include "smp.h"
#include "test.h"

#define MARKER      0x0bad0bad0bad0badUL    /* the fuzzer's register fill */
#define PC_TAG      0x0badUL                /* its non-canonical PC: tag << 48 */

/* struct hcall_io: offsets used by the assembly below */
struct hcall_io {
    u64 in[6];          /* 0: x0..x5 */
    u64 pat[31];        /* 48: x0..x30 patterns (x6..x30 used) */
    u64 out[31];        /* 296: x0..x30 after the call */
    u64 sp_in;          /* 544 */
    u64 sp_out;         /* 552 */
    u64 nzcv_in;        /* 560 */
    u64 nzcv_out;       /* 568 */
    u64 daif_in;        /* 576 */
    u64 daif_out;       /* 584 */
    u64 el_out;         /* 592 */
    u64 spsel_out;      /* 600 */
};
_Static_assert(__builtin_offsetof(struct hcall_io, spsel_out) == 600, "hcall_io layout");

void hostile_call_hvc(struct hcall_io *io);
void hostile_call_smc(struct hcall_io *io);

/* Generated: x0..x5 from in[], x6..x30 from pat[], NZCV from nzcv_in; after
 * the call every register and SP, NZCV, DAIF, CurrentEL, SPSel to out. */
#define HCALL(name, insn)                                                   \
    "   .global " #name "\n"                                                \
    "   .type " #name ", %function\n"                                       \
    #name ":\n"                                                             \
    "   stp x29, x30, [sp, #-112]!\n"                                         \
    "   stp x19, x20, [sp, #16]\n"                                            \
    "   stp x21, x22, [sp, #32]\n"                                            \
    "   stp x23, x24, [sp, #48]\n"                                            \
    "   stp x25, x26, [sp, #64]\n"                                            \
    "   stp x27, x28, [sp, #80]\n"                                            \
    "   str x0, [sp, #96]\n"                                                  \
    "   mov x1, sp\n"                                                         \
    "   str x1, [x0, #544]\n"                                                 \
    "   mrs x1, daif\n"                                                       \
    "   str x1, [x0, #576]\n"                                                 \
    "   ldr x1, [x0, #560]\n"                                                 \
    "   msr nzcv, x1\n"                                                       \
    "   ldp x6, x7, [x0, #96]\n"                                              \
    "   ldp x8, x9, [x0, #112]\n"                                             \
    "   ldp x10, x11, [x0, #128]\n"                                           \
    "   ldp x12, x13, [x0, #144]\n"                                           \
    "   ldp x14, x15, [x0, #160]\n"                                           \
    "   ldp x16, x17, [x0, #176]\n"                                           \
    "   ldp x18, x19, [x0, #192]\n"                                           \
    "   ldp x20, x21, [x0, #208]\n"                                           \
    "   ldp x22, x23, [x0, #224]\n"                                           \
    "   ldp x24, x25, [x0, #240]\n"                                           \
    "   ldp x26, x27, [x0, #256]\n"                                           \
    "   ldp x28, x29, [x0, #272]\n"                                           \
    "   ldr x30, [x0, #288]\n"                                                \
    "   ldp x4, x5, [x0, #32]\n"                                              \
    "   ldp x2, x3, [x0, #16]\n"                                              \
    "   ldp x0, x1, [x0]\n"                                                   \
    "   " #insn " #0\n"                                                       \
    "   str x0, [sp, #104]\n"                                                 \
    "   ldr x0, [sp, #96]\n"                                                  \
    "   str x1, [x0, #304]\n"                                                 \
    "   str x2, [x0, #312]\n"                                                 \
    "   str x3, [x0, #320]\n"                                                 \
    "   str x4, [x0, #328]\n"                                                 \
    "   str x5, [x0, #336]\n"                                                 \
    "   str x6, [x0, #344]\n"                                                 \
    "   str x7, [x0, #352]\n"                                                 \
    "   str x8, [x0, #360]\n"                                                 \
    "   str x9, [x0, #368]\n"                                                 \
    "   str x10, [x0, #376]\n"                                                \
    "   str x11, [x0, #384]\n"                                                \
    "   str x12, [x0, #392]\n"                                                \
    "   str x13, [x0, #400]\n"                                                \
    "   str x14, [x0, #408]\n"                                                \
    "   str x15, [x0, #416]\n"                                                \
    "   str x16, [x0, #424]\n"                                                \
    "   str x17, [x0, #432]\n"                                                \
    "   str x18, [x0, #440]\n"                                                \
    "   str x19, [x0, #448]\n"                                                \
    "   str x20, [x0, #456]\n"                                                \
    "   str x21, [x0, #464]\n"                                                \
    "   str x22, [x0, #472]\n"                                                \
    "   str x23, [x0, #480]\n"                                                \
    "   str x24, [x0, #488]\n"                                                \
    "   str x25, [x0, #496]\n"                                                \
    "   str x26, [x0, #504]\n"                                                \
    "   str x27, [x0, #512]\n"                                                \
    "   str x28, [x0, #520]\n"                                                \
    "   str x29, [x0, #528]\n"                                                \
    "   str x30, [x0, #536]\n"                                                \
    "   mrs x1, nzcv\n"                                                       \
    "   str x1, [x0, #568]\n"                                                 \
    "   ldr x1, [sp, #104]\n"                                                 \
    "   str x1, [x0, #296]\n"                                                 \
    "   mov x1, sp\n"                                                         \
    "   str x1, [x0, #552]\n"                                                 \
    "   mrs x1, daif\n"                                                       \
    "   str x1, [x0, #584]\n"                                                 \
    "   mrs x1, CurrentEL\n"                                                  \
    "   str x1, [x0, #592]\n"                                                 \
    "   mrs x1, spsel\n"                                                      \
    "   str x1, [x0, #600]\n"                                                 \
    "   ldp x19, x20, [sp, #16]\n"                                            \
    "   ldp x21, x22, [sp, #32]\n"                                            \
    "   ldp x23, x24, [sp, #48]\n"                                            \
    "   ldp x25, x26, [sp, #64]\n"                                            \
    "   ldp x27, x28, [sp, #80]\n"                                            \
    "   ldp x29, x30, [sp], #112\n"                                           \
    "   ret\n"                                                                \
    "   .size " #name ", . - " #name "\n"

/* struct spin_io: CPU 1's loop */
struct spin_io {
    u64 pat[18];                /* 0: x0..x17 */
    volatile u64 stop;          /* 144 */
    volatile u64 iterations;    /* 152: approximate (updated every 64K) */
    u64 bad;                    /* 160: 0, or 1 + the register index that changed (19: EL) */
    u64 bad_value;              /* 168 */
    u64 bad_el;                 /* 176 */
};
_Static_assert(__builtin_offsetof(struct spin_io, bad_el) == 176, "spin_io layout");

void hostile_spin(struct spin_io *io);

#define CHECK_REG(n)                                                        \
    "   ldr x21, [x20, #" #n "*8]\n"                                        \
    "   cmp x" #n ", x21\n"                                                 \
    "   mov x22, #" #n "+1\n"                                               \
    "   mov x23, x" #n "\n"                                                 \
    "   b.ne 8f\n"

__asm__(
    "   .text\n"
    HCALL(hostile_call_hvc, hvc)
    HCALL(hostile_call_smc, smc)
    "   .global hostile_spin\n"
    "   .type hostile_spin, %function\n"
    "hostile_spin:\n"
    "   stp x29, x30, [sp, #-96]!\n"
    "   stp x19, x20, [sp, #16]\n"
    "   stp x21, x22, [sp, #32]\n"
    "   stp x23, x24, [sp, #48]\n"
    "   stp x25, x26, [sp, #64]\n"
    "   mov x20, x0\n"
    "   mov x24, #0\n"
    "   ldp x0, x1, [x20, #0]\n"
    "   ldp x2, x3, [x20, #16]\n"
    "   ldp x4, x5, [x20, #32]\n"
    "   ldp x6, x7, [x20, #48]\n"
    "   ldp x8, x9, [x20, #64]\n"
    "   ldp x10, x11, [x20, #80]\n"
    "   ldp x12, x13, [x20, #96]\n"
    "   ldp x14, x15, [x20, #112]\n"
    "   ldp x16, x17, [x20, #128]\n"
    "1:\n"
    "   mrs x23, CurrentEL\n"
    "   mov x22, #19\n"
    "   cmp x23, #4\n"
    "   b.ne 8f\n"
    CHECK_REG(0) CHECK_REG(1) CHECK_REG(2) CHECK_REG(3) CHECK_REG(4) CHECK_REG(5)
    CHECK_REG(6) CHECK_REG(7) CHECK_REG(8) CHECK_REG(9) CHECK_REG(10) CHECK_REG(11)
    CHECK_REG(12) CHECK_REG(13) CHECK_REG(14) CHECK_REG(15) CHECK_REG(16) CHECK_REG(17)
    "   add x24, x24, #1\n"
    "   tst x24, #0xffff\n"
    "   b.ne 1b\n"
    "   str x24, [x20, #152]\n"
    "   ldr x21, [x20, #144]\n"
    "   cbz x21, 1b\n"
    "   b 9f\n"
    "8:\n"
    "   str x22, [x20, #160]\n"
    "   str x23, [x20, #168]\n"
    "   mrs x23, CurrentEL\n"
    "   str x23, [x20, #176]\n"
    "9:\n"
    "   str x24, [x20, #152]\n"
    "   ldp x19, x20, [sp, #16]\n"
    "   ldp x21, x22, [sp, #32]\n"
    "   ldp x23, x24, [sp, #48]\n"
    "   ldp x25, x26, [sp, #64]\n"
    "   ldp x29, x30, [sp], #96\n"
    "   ret\n"
    "   .size hostile_spin, . - hostile_spin\n"
);

static struct {
    u64 cycles, calls, retries, pc_faults, violations, handled, tainted_cycles;
    u64 seed;
    volatile u64 fault_hit;     /* set by the hook: this call was hijacked */
    /*
     * A hijacked call is made again, but the real back-end may have applied
     * it already: the device re-sends a call in flight across a reconnection,
     * and the hostile back-end may be the one that gets the re-send.  The
     * retry then meets the state the first one left (UNREGISTER: DENIED).
     * So a cycle with a hijack checks registers and EL as always but not the
     * SDEI results, counts as tainted, and the next cycle starts from a reset.
     */
    bool tainted;
} hs;

static struct spin_io spin;
static struct hcall_io io;

static u64 rnd(void)
{
    hs.seed ^= hs.seed << 13;
    hs.seed ^= hs.seed >> 7;
    hs.seed ^= hs.seed << 17;
    return hs.seed;
}

static void violation(const char *what, u64 fid, u64 a, u64 b)
{
    if (hs.violations++ < 16)
        printf("  [outage_hostile] VIOLATION %s: fid 0x%lx got 0x%lx expected 0x%lx\n",
               what, fid, a, b);
    test_fail(__FILE__, __LINE__, "%s (fid 0x%lx)", what, fid);
}

/* A RESTORE to the fuzzer's misaligned or non-canonical PC that the device
 * applied: go back to the call's return address (x0..x17 hold the marker,
 * so the call is made again). */
static bool pc_fault_hook(u64 offset, struct exc_frame *f)
{
    u64 ec = ESR_EC(f->esr);

    if (VEC_KIND(offset) != 0)
        return false;
    if (ec == 0x22 && (f->elr & 3)) {                 /* PC alignment fault */
        f->elr &= ~3UL;
    } else if (ec == 0x21 && (f->far >> 48) == PC_TAG) {  /* instruction abort */
        f->elr = f->far & ((1UL << 48) - 1);
    } else {
        return false;
    }
    hs.pc_faults++;
    hs.fault_hit = 1;
    return true;
}

static bool is_marker(u64 v) { return v == MARKER; }

/*
 * One call, checked; returns x0.  A call the device answered with the
 * fuzzer's hijacking PC is made again.
 */
static u64 call5(u64 fid, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
    for (int attempt = 0; attempt < 100; attempt++) {
        io.in[0] = fid;
        io.in[1] = a1;
        io.in[2] = a2;
        io.in[3] = a3;
        io.in[4] = a4;
        io.in[5] = a5;
        io.pat[4] = a4;
        io.pat[5] = a5;
        for (int i = 6; i < 31; i++)
            io.pat[i] = rnd() & ~0xffUL;        /* never the marker */
        io.nzcv_in = (rnd() & 0xf) << 28;
        hs.fault_hit = 0;
        if (smccc_conduit == CONDUIT_SMC)
            hostile_call_smc(&io);
        else
            hostile_call_hvc(&io);
        hs.calls++;
        if (hs.fault_hit) {
            hs.retries++;
            hs.tainted = true;
            continue;
        }
        if ((io.el_out >> 2) != 1)
            violation("CurrentEL changed", fid, io.el_out, 4);
        if (io.spsel_out != 1)
            violation("SPSel changed", fid, io.spsel_out, 1);
        if (io.sp_out != io.sp_in)
            violation("SP changed", fid, io.sp_out, io.sp_in);
        if (io.daif_out != io.daif_in)
            violation("DAIF changed", fid, io.daif_out, io.daif_in);
        if (io.nzcv_out != io.nzcv_in)
            violation("NZCV changed", fid, io.nzcv_out, io.nzcv_in);
        for (int i = 0; i < 4; i++)
            if (is_marker(io.out[i]))
                violation("the fuzzer's marker in x0..x3", fid, io.out[i], i);
        for (int i = 4; i < 31; i++)
            if (io.out[i] != io.pat[i]) {
                char what[32];
                snprintf(what, sizeof(what), "x%d changed", i);
                violation(what, fid, io.out[i], io.pat[i]);
            }
        return io.out[0];
    }
    violation("a call hijacked 100 times", fid, 0, 0);
    return io.out[0];
}

static u64 call(u64 fid, u64 a1, u64 a2, u64 a3) { return call5(fid, a1, a2, a3, 0, 0); }

static void expect(const char *what, u64 fid, u64 got, u64 want)
{
    if (got != want && !hs.tainted)
        violation(what, fid, got, want);
}

static volatile u64 handled;

static u64 h_count(struct sdei_record *rec, void *data)
{
    atomic_inc(&handled);
    return SDEI_EV_HANDLED;
}
static const struct sdei_handler hcount = { h_count, NULL };

static void spin_fn(void *arg) { hostile_spin(&spin); }

static bool host_says_quit(void)
{
    int c;

    while ((c = uart_getc_nowait()) >= 0)
        if (c == 'q')
            return true;
    return false;
}

static void one_cycle(void)
{
    u64 me = read_mpidr();
    u64 before_cycle = atomic_read(&handled);

    if (hs.tainted) {
        /* Back to the state a cycle starts from: nothing registered, masked. */
        call(SDEI_PRIVATE_RESET, 0, 0, 0);
        call(SDEI_PE_MASK, 0, 0, 0);
        hs.tainted = false;
        before_cycle = atomic_read(&handled);
    }
    u64 v = call(SDEI_VERSION, 0, 0, 0);

    expect("VERSION major", SDEI_VERSION, SDEI_VERSION_MAJOR(v), 1);
    expect("EVENT_REGISTER(0)", SDEI_EVENT_REGISTER,
           call(SDEI_EVENT_REGISTER, 0, sdei_entry_point(), (u64)&hcount), 0);
    expect("EVENT_STATUS(0) registered", SDEI_EVENT_STATUS,
           call(SDEI_EVENT_STATUS, 0, 0, 0), SDEI_EVENT_STATUS_REGISTERED);
    expect("EVENT_ENABLE(0)", SDEI_EVENT_ENABLE, call(SDEI_EVENT_ENABLE, 0, 0, 0), 0);
    expect("PE_UNMASK", SDEI_PE_UNMASK, call(SDEI_PE_UNMASK, 0, 0, 0), 0);
    u64 before = atomic_read(&handled);
    expect("EVENT_SIGNAL(0, self)", SDEI_EVENT_SIGNAL, call(SDEI_EVENT_SIGNAL, 0, me, 0), 0);
    /* Dispatched before the PE runs on (the reply asks for a PULL); a PULL
     * in flight across a bad connection is re-sent, so allow a while. */
    u64 end = deadline_us(30000000);
    while (atomic_read(&handled) == before && !deadline_passed(end))
        ;
    expect("handler entries after EVENT_SIGNAL", SDEI_EVENT_SIGNAL,
           atomic_read(&handled), before + 1);
    expect("PE_MASK (changes)", SDEI_PE_MASK, call(SDEI_PE_MASK, 0, 0, 0), 1);
    expect("PE_MASK (again)", SDEI_PE_MASK, call(SDEI_PE_MASK, 0, 0, 0), 0);
    expect("EVENT_DISABLE(0)", SDEI_EVENT_DISABLE, call(SDEI_EVENT_DISABLE, 0, 0, 0), 0);
    expect("EVENT_UNREGISTER(0)", SDEI_EVENT_UNREGISTER,
           call(SDEI_EVENT_UNREGISTER, 0, 0, 0), 0);
    expect("EVENT_STATUS(0) after unregister", SDEI_EVENT_STATUS,
           call(SDEI_EVENT_STATUS, 0, 0, 0), 0);
    expect("EVENT_GET_INFO(0, TYPE)", SDEI_EVENT_GET_INFO,
           call(SDEI_EVENT_GET_INFO, 0, SDEI_EVENT_INFO_EV_TYPE, 0), SDEI_EVENT_TYPE_PRIVATE);
    expect("EVENT_REGISTER(unknown)", SDEI_EVENT_REGISTER,
           call(SDEI_EVENT_REGISTER, 12345, sdei_entry_point(), 0), (u64)SDEI_INVALID_PARAMETERS);
    expect("EVENT_ENABLE(0) unregistered", SDEI_EVENT_ENABLE,
           call(SDEI_EVENT_ENABLE, 0, 0, 0), (u64)SDEI_DENIED);
    if (hs.tainted) {
        hs.tainted_cycles++;
    } else {
        hs.cycles++;
        hs.handled += atomic_read(&handled) - before_cycle;
    }
}

TEST_TIMEOUT(outage_hostile, 3600000000UL)
{
    memset(&hs, 0, sizeof(hs));
    memset(&spin, 0, sizeof(spin));
    hs.seed = 0x9e3779b97f4a7c15UL ^ timer_count();
    handled = 0;
    sdei_quiesce();
    exception_set_hook(pc_fault_hook);

    ASSERT_TRUE(smp_num_cpus() >= 2);
    for (int i = 0; i < 18; i++)
        spin.pat[i] = rnd() & ~0xffUL;
    ASSERT_EQ(cpu_start(1, spin_fn, NULL), PSCI_SUCCESS);
    EXPECT_WAIT(atomic_read(&spin.iterations) > 0 || spin.bad, 10000000);
    tinfo("ready");

    while (!host_says_quit() && !spin.bad)
        one_cycle();

    atomic_set(&spin.stop, 1);
    EXPECT_TRUE(cpu_wait_off(1, 30000000));
    if (spin.bad) {
        hs.violations++;
        printf("  [outage_hostile] VIOLATION cpu1: %s %lu changed to 0x%lx (CurrentEL 0x%lx)\n",
               spin.bad == 19 ? "CurrentEL" : "x", spin.bad == 19 ? 0 : spin.bad - 1,
               spin.bad_value, spin.bad_el);
        test_fail(__FILE__, __LINE__, "CPU 1's context changed under a PULL");
    }
    tinfo("cycles=%lu calls=%lu handled=%lu violations=%lu pc_faults=%lu "
           "retries=%lu tainted=%lu spin=%lu", hs.cycles, hs.calls, hs.handled,
           hs.violations, hs.pc_faults, hs.retries, hs.tainted_cycles, spin.iterations);
    EXPECT_TRUE(hs.cycles > 0);
    sdei_pe_mask();
    sdei_private_reset();
}
