#include "smp.h"
#include "fdt.h"
#include "gic.h"
#include "lib.h"
#include "smccc.h"
#include "test.h"
#include "timer.h"

extern char secondary_entry[];
extern u64 boot_el;

enum { SLOT_IDLE, SLOT_STARTING, SLOT_RUNNING, SLOT_DONE };

struct cpu_slot {
    void (*fn)(void *);
    void *arg;
    volatile u32 state;
    volatile u64 entry_el;
};

static struct cpu_slot slots[MAX_CPUS];
static u64 mpidrs[MAX_CPUS];
static unsigned ncpus;

void smp_init(void)
{
    u64 dt[MAX_CPUS];
    int n = fdt_cpus(dt, MAX_CPUS);

    ncpus = 1;
    mpidrs[0] = read_mpidr();
    slots[0].entry_el = boot_el;
    if (n == 0) {
        /* No DT (ELF boot): ask PSCI which Aff0 siblings exist. Unknown
         * MPIDRs get INVALID_PARAMETERS; existing ones ON/OFF/ON_PENDING. */
        for (unsigned cpu = 1; cpu < MAX_CPUS; cpu++) {
            u64 m = (read_mpidr() & ~0xffUL) | cpu;
            if (psci_affinity_info(m) >= 0) {
                mpidrs[cpu] = m;
                ncpus = cpu + 1;
            }
        }
        return;
    }
    if (n > MAX_CPUS)
        printf("smp: using the first %d of %d cpus\n", MAX_CPUS, n);
    for (int i = 0; i < n && i < MAX_CPUS; i++) {
        /* Per-CPU arrays are indexed by Aff0; ignore CPUs that don't fit. */
        if ((dt[i] & ~0xffUL) != (read_mpidr() & ~0xffUL) || (dt[i] & 0xff) >= MAX_CPUS) {
            printf("smp: ignoring cpu with MPIDR 0x%lx\n", dt[i]);
            continue;
        }
        mpidrs[dt[i] & 0xff] = dt[i];
        if ((dt[i] & 0xff) + 1 > ncpus)
            ncpus = (dt[i] & 0xff) + 1;
    }
}

unsigned smp_num_cpus(void) { return ncpus; }
u64 smp_cpu_mpidr(unsigned cpu) { return cpu < MAX_CPUS ? mpidrs[cpu] : ~0UL; }
u64 cpu_entry_el(unsigned cpu) { return cpu < MAX_CPUS ? slots[cpu].entry_el : 0; }

s64 cpu_start(unsigned cpu, void (*fn)(void *), void *arg)
{
    if (cpu == 0 || cpu >= ncpus)
        return PSCI_INVALID_PARAMS;
    struct cpu_slot *s = &slots[cpu];
    s->fn = fn;
    s->arg = arg;
    s->entry_el = 0;
    atomic_set(&s->state, SLOT_STARTING);
    /* The new CPU starts with the MMU (and caches) off until start.S turns
     * them on; it reads the slot afterwards, so ordering is all we need. */
    dsb(ish);
    s64 r = psci_cpu_on(mpidrs[cpu], (u64)secondary_entry, cpu);
    if (r != PSCI_SUCCESS)
        atomic_set(&s->state, SLOT_IDLE);
    return r;
}

bool cpu_is_off(unsigned cpu)
{
    return psci_affinity_info(mpidrs[cpu]) == PSCI_AFF_OFF;
}

bool cpu_wait_off(unsigned cpu, u64 timeout_us)
{
    if (cpu == 0 || cpu >= ncpus)
        return false;
    return WAIT_FOR(cpu_is_off(cpu), timeout_us);
}

void secondary_main(u64 context, u64 entry_el);

void secondary_main(u64 context, u64 entry_el)
{
    unsigned cpu = cpu_id();
    struct cpu_slot *s = &slots[cpu];
    struct jmpbuf jb;

    s->entry_el = entry_el;
    if (context != cpu)
        test_fail(__FILE__, __LINE__, "cpu%u started with context id %lu", cpu, context);
    gic_cpu_init();
    atomic_set(&s->state, SLOT_RUNNING);

    test_set_abort_point(cpu, &jb);
    if (guest_setjmp(&jb) == 0 && s->fn)
        s->fn(s->arg);
    irq_disable();
    test_set_abort_point(cpu, NULL);

    if (gic_present())
        write_sysreg(icc_igrpen1_el1, 0);
    atomic_set(&s->state, SLOT_DONE);
    psci_cpu_off();
    printf("cpu%u: PSCI CPU_OFF returned\n", cpu);
    halt();
}
