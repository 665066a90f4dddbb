#include "gic.h"
#include "lib.h"
#include "mmio.h"
#include "timer.h"

#define GICD_CTLR           0x0000
#define GICD_TYPER          0x0004
#define GICD_IGROUPR        0x0080
#define GICD_ISENABLER      0x0100
#define GICD_ICENABLER      0x0180
#define GICD_ISPENDR        0x0200
#define GICD_ICPENDR        0x0280
#define GICD_ISACTIVER      0x0300
#define GICD_ICACTIVER      0x0380
#define GICD_IPRIORITYR     0x0400
#define GICD_ICFGR          0x0c00
#define GICD_IROUTER        0x6000
#define GICD_PIDR2          0xffe8
#define GICD_CTLR_RWP       BIT(31)

#define GICR_CTLR           0x0000
#define GICR_TYPER          0x0008
#define GICR_WAKER          0x0014
#define GICR_CTLR_RWP       BIT(3)
#define GICR_TYPER_LAST     BIT(4)
#define GICR_WAKER_PSLEEP   BIT(1)
#define GICR_WAKER_CASLEEP  BIT(2)
#define GICR_SGI_BASE       0x10000     /* the SGI_base frame mirrors GICD's layout for INTIDs 0-31 */

#define GIC_WAIT_US         100000

static bool present;
static const char *absent_reason = "gic_init not called";
static u32 nr_intids;
static u64 rd_base[MAX_CPUS];

#define MAX_INTID 1020
struct irq_action {
    irq_handler_fn fn;
    void *arg;
    volatile u64 count;
};
static struct irq_action actions[MAX_INTID];

/* Per-CPU stack of acked-but-not-EOIed INTIDs, for gic_abort_active. */
#define MAX_IRQ_NEST 4
static struct {
    u32 depth;
    u32 intid[MAX_IRQ_NEST];
} active[MAX_CPUS];

bool gic_present(void) { return present; }
const char *gic_absent_reason(void) { return absent_reason; }
u32 gic_num_intids(void) { return nr_intids; }

static void wait_clear(u64 reg, u32 bit)
{
    for (u64 dl = deadline_us(GIC_WAIT_US); (readl(reg) & bit) && !deadline_passed(dl);)
        cpu_relax();
}

/* GICR_TYPER[63:32] packs Aff3.Aff2.Aff1.Aff0 into 32 bits... */
static u64 mpidr_to_typer_aff(u64 mpidr)
{
    return (mpidr & 0xffffff) | (((mpidr >> 32) & 0xff) << 24);
}

/* ...while GICD_IROUTER keeps MPIDR's layout (Aff3 at [39:32], IRM=0). */
static u64 mpidr_to_irouter(u64 mpidr)
{
    return mpidr & 0xff00ffffffUL;
}

static u64 find_redistributor(u64 mpidr)
{
    u64 aff = mpidr_to_typer_aff(mpidr);
    for (u64 rd = GICR_BASE; rd < GICR_REGION_END; rd += GICR_STRIDE) {
        u64 typer = readq(rd + GICR_TYPER);
        if ((typer >> 32) == aff)
            return rd;
        if (typer & GICR_TYPER_LAST)
            break;
    }
    return 0;
}

/* Register block that holds INTID's bits: redistributor SGI frame for
 * private INTIDs, distributor otherwise. */
static u64 bank_for(unsigned cpu, u32 intid)
{
    if (intid < 32)
        return rd_base[cpu] + GICR_SGI_BASE;
    return GICD_BASE;
}

static void set_bit_reg(u64 base, u32 off, u32 intid)
{
    writel(base + off + (intid / 32) * 4, BIT(intid % 32));
}

bool gic_init(void)
{
    /* The ICC_* system registers only exist with a GICv3 CPU interface;
     * touching them on a GICv2 machine is UNDEFINED, so check first. */
    if (((read_sysreg(id_aa64pfr0_el1) >> 24) & 0xf) == 0) {
        absent_reason = "no GICv3 CPU interface (run QEMU with -M virt,gic-version=3)";
        return false;
    }
    if (((readl(GICD_BASE + GICD_PIDR2) >> 4) & 0xf) < 3) {
        absent_reason = "distributor is not GICv3 (run QEMU with -M virt,gic-version=3)";
        return false;
    }

    nr_intids = ((readl(GICD_BASE + GICD_TYPER) & 0x1f) + 1) * 32;
    if (nr_intids > MAX_INTID)
        nr_intids = MAX_INTID;

    writel(GICD_BASE + GICD_CTLR, 0);
    wait_clear(GICD_BASE + GICD_CTLR, GICD_CTLR_RWP);

    for (u32 i = 32; i < nr_intids; i += 32) {
        writel(GICD_BASE + GICD_ICENABLER + i / 8, ~0u);
        writel(GICD_BASE + GICD_ICPENDR + i / 8, ~0u);
        writel(GICD_BASE + GICD_ICACTIVER + i / 8, ~0u);
        writel(GICD_BASE + GICD_IGROUPR + i / 8, ~0u);
    }
    for (u32 i = 32; i < nr_intids; i += 4)
        writel(GICD_BASE + GICD_IPRIORITYR + i, GIC_PRIO_DEFAULT * 0x01010101u);
    wait_clear(GICD_BASE + GICD_CTLR, GICD_CTLR_RWP);

    /*
     * Affinity routing + Group 1. Bits 0, 1 and 4 are written together so
     * this works for both GICD_CTLR layouts: with a single security state
     * (QEMU virt without secure=on: DS=1) bit 1 is EnableGrp1 and bit 4 ARE;
     * in the Non-secure view of a two-state GIC bit 0 is EnableGrp1NS and
     * bit 4 ARE_NS. The remaining bit is harmless either way.
     */
    writel(GICD_BASE + GICD_CTLR, BIT(4));
    wait_clear(GICD_BASE + GICD_CTLR, GICD_CTLR_RWP);
    writel(GICD_BASE + GICD_CTLR, BIT(4) | BIT(1) | BIT(0));
    wait_clear(GICD_BASE + GICD_CTLR, GICD_CTLR_RWP);

    for (u32 i = 32; i < nr_intids; i++)
        writeq(GICD_BASE + GICD_IROUTER + i * 8, mpidr_to_irouter(read_mpidr()));

    present = true;
    absent_reason = NULL;
    gic_cpu_init();
    return true;
}

void gic_cpu_init(void)
{
    if (!present)
        return;
    unsigned cpu = cpu_id();
    u64 rd = find_redistributor(read_mpidr());
    rd_base[cpu] = rd;
    if (!rd) {
        printf("gic: no redistributor for MPIDR %lx\n", read_mpidr());
        return;
    }

    writel(rd + GICR_WAKER, readl(rd + GICR_WAKER) & ~GICR_WAKER_PSLEEP);
    wait_clear(rd + GICR_WAKER, GICR_WAKER_CASLEEP);

    u64 sgi = rd + GICR_SGI_BASE;
    writel(sgi + GICD_ICENABLER, ~0u);
    writel(sgi + GICD_ICPENDR, ~0u);
    writel(sgi + GICD_ICACTIVER, ~0u);
    writel(sgi + GICD_IGROUPR, ~0u);
    for (u32 i = 0; i < 32; i += 4)
        writel(sgi + GICD_IPRIORITYR + i, GIC_PRIO_DEFAULT * 0x01010101u);
    wait_clear(rd + GICR_CTLR, GICR_CTLR_RWP);

    /* System-register interface; may be RAO/WI already. */
    write_sysreg(icc_sre_el1, read_sysreg(icc_sre_el1) | 1);
    isb();
    write_sysreg(icc_pmr_el1, 0xff);
    write_sysreg(icc_bpr1_el1, 0);
    write_sysreg(icc_ctlr_el1, 0);      /* EOImode 0: EOIR drops priority and deactivates */
    write_sysreg(icc_igrpen1_el1, 1);
    isb();
    active[cpu].depth = 0;
}

static void enable_bits(unsigned cpu, u32 intid, bool on)
{
    if (!present || intid >= nr_intids || (intid < 32 && !rd_base[cpu]))
        return;
    u64 base = bank_for(cpu, intid);
    set_bit_reg(base, on ? GICD_ISENABLER : GICD_ICENABLER, intid);
    if (!on)
        wait_clear(intid < 32 ? rd_base[cpu] + GICR_CTLR : GICD_BASE + GICD_CTLR,
                   intid < 32 ? GICR_CTLR_RWP : GICD_CTLR_RWP);
}

void gic_enable_on(unsigned cpu, u32 intid) { enable_bits(cpu, intid, true); }
void gic_disable_on(unsigned cpu, u32 intid) { enable_bits(cpu, intid, false); }
void gic_enable(u32 intid) { enable_bits(cpu_id(), intid, true); }
void gic_disable(u32 intid) { enable_bits(cpu_id(), intid, false); }

void gic_set_priority(u32 intid, u8 prio)
{
    if (!present || intid >= nr_intids)
        return;
    writeb(bank_for(cpu_id(), intid) + GICD_IPRIORITYR + intid, prio);
}

void gic_set_edge(u32 intid, bool edge)
{
    if (!present || intid < 16 || intid >= nr_intids)    /* SGI config is fixed */
        return;
    u64 reg = bank_for(cpu_id(), intid) + GICD_ICFGR + (intid / 16) * 4;
    u32 shift = (intid % 16) * 2 + 1;
    u32 v = readl(reg);
    writel(reg, edge ? (v | BIT(shift)) : (v & ~BIT(shift)));
}

void gic_set_pending(u32 intid)
{
    if (present && intid < nr_intids)
        set_bit_reg(bank_for(cpu_id(), intid), GICD_ISPENDR, intid);
}

void gic_clear_pending(u32 intid)
{
    if (present && intid < nr_intids)
        set_bit_reg(bank_for(cpu_id(), intid), GICD_ICPENDR, intid);
}

static bool test_bit_reg(u32 off, u32 intid)
{
    if (!present || intid >= nr_intids)
        return false;
    return readl(bank_for(cpu_id(), intid) + off + (intid / 32) * 4) & BIT(intid % 32);
}

bool gic_is_pending(u32 intid) { return test_bit_reg(GICD_ISPENDR, intid); }
bool gic_is_active(u32 intid) { return test_bit_reg(GICD_ISACTIVER, intid); }

void gic_route_spi(u32 intid, u64 mpidr)
{
    if (present && intid >= 32 && intid < nr_intids)
        writeq(GICD_BASE + GICD_IROUTER + intid * 8, mpidr_to_irouter(mpidr));
}

void gic_send_sgi(u32 intid, u64 mpidr)
{
    u64 v = ((u64)(intid & 0xf) << 24) |
            (((mpidr >> 8) & 0xff) << 16) |         /* Aff1 */
            (((mpidr >> 16) & 0xff) << 32) |        /* Aff2 */
            (((mpidr >> 32) & 0xff) << 48) |        /* Aff3 */
            BIT(mpidr & 0xf);                       /* TargetList: Aff0 < 16 */
    dsb(ishst);     /* make prior writes visible to the target first */
    write_sysreg(icc_sgi1r_el1, v);
    isb();
}

u32 gic_ack(void)
{
    u32 iar = read_sysreg(icc_iar1_el1) & 0xffffff;
    dsb(sy);
    return iar;
}

void gic_eoi(u32 intid)
{
    write_sysreg(icc_eoir1_el1, intid);
    isb();
}

void irq_register(u32 intid, irq_handler_fn fn, void *arg)
{
    if (intid >= MAX_INTID)
        return;
    actions[intid].arg = arg;
    atomic_set(&actions[intid].fn, fn);
}

void irq_unregister(u32 intid)
{
    if (intid < MAX_INTID)
        atomic_set(&actions[intid].fn, NULL);
}

u64 irq_count(u32 intid) { return intid < MAX_INTID ? atomic_read(&actions[intid].count) : 0; }

/* Called from the IRQ vector with IRQs masked. Handles what is pending now,
 * a bounded number of times, so a stuck level interrupt can't livelock. */
void gic_handle_irq(void)
{
    unsigned cpu = cpu_id();

    for (int n = 0; n < 16; n++) {
        u32 intid = gic_ack();
        if (intid >= 1020)
            return;
        if (active[cpu].depth < MAX_IRQ_NEST)
            active[cpu].intid[active[cpu].depth] = intid;
        active[cpu].depth++;

        struct irq_action *a = intid < MAX_INTID ? &actions[intid] : NULL;
        irq_handler_fn fn = a ? atomic_read(&a->fn) : NULL;
        if (fn) {
            atomic_inc(&a->count);
            fn(intid, a->arg);
        } else {
            /* Nobody wants it: mask it so it can't storm. */
            printf("gic: unhandled INTID %u on cpu%u, disabling it\n", intid, cpu);
            gic_disable(intid);
        }

        active[cpu].depth--;
        gic_eoi(intid);
    }
}

void gic_abort_active(void)
{
    unsigned cpu = cpu_id();
    while (active[cpu].depth) {
        u32 d = --active[cpu].depth;
        if (d < MAX_IRQ_NEST)
            gic_eoi(active[cpu].intid[d]);
    }
}

void gic_disable_all_except(const u32 *keep, int n)
{
    if (!present)
        return;
    unsigned cpu = cpu_id();
    for (u32 i = 0; i < nr_intids; i++) {
        bool k = false;
        for (int j = 0; j < n; j++)
            k |= keep[j] == i;
        if (k)
            continue;
        irq_unregister(i);
        if (i < 32 && !rd_base[cpu])
            continue;
        u64 base = bank_for(cpu, i);
        writel(base + GICD_ICENABLER + (i / 32) * 4, BIT(i % 32));
        writel(base + GICD_ICPENDR + (i / 32) * 4, BIT(i % 32));
    }
    wait_clear(GICD_BASE + GICD_CTLR, GICD_CTLR_RWP);
    if (rd_base[cpu])
        wait_clear(rd_base[cpu] + GICR_CTLR, GICR_CTLR_RWP);
}
