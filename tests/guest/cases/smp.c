/* Secondary CPU bring-up through PSCI and the cross-CPU primitives. */
#include "smccc.h"
#include "smp.h"
#include "test.h"

#define SMP_CPUS    4
#define ROUNDS      3

static struct {
    volatile u32 checked_in;
    volatile u64 mpidr[MAX_CPUS];
    volatile u64 el[MAX_CPUS];
    volatile u32 rounds[MAX_CPUS];
    struct spin_barrier bar;
} st;

static void checkin(void *arg)
{
    unsigned cpu = cpu_id();

    st.mpidr[cpu] = read_mpidr();
    st.el[cpu] = current_el();
    atomic_inc(&st.checked_in);
    for (int i = 0; i < ROUNDS; i++) {
        if (!barrier_wait(&st.bar, 2000000))
            FAIL("cpu%u: barrier round %d timed out", cpu, i);
        atomic_inc(&st.rounds[cpu]);
    }
}

TEST(smp_bringup)
{
    unsigned n = smp_num_cpus();
    if (n < SMP_CPUS)
        FAIL("needs %d CPUs (-smp %d), DT has %u", SMP_CPUS, SMP_CPUS, n);

    memset((void *)&st, 0, sizeof(st));
    barrier_init(&st.bar, SMP_CPUS);

    u64 t0 = timer_count();
    for (unsigned cpu = 1; cpu < SMP_CPUS; cpu++) {
        s64 r = cpu_start(cpu, checkin, NULL);
        if (r != PSCI_SUCCESS)
            FAIL("PSCI CPU_ON(cpu%u, mpidr 0x%lx) = %ld", cpu, smp_cpu_mpidr(cpu), r);
    }
    EXPECT_WAIT(atomic_read(&st.checked_in) == SMP_CPUS - 1, 2000000);
    tinfo("%u secondaries checked in after %lu us", atomic_read(&st.checked_in),
          ticks_to_us(timer_count() - t0));

    for (int i = 0; i < ROUNDS; i++)
        if (!barrier_wait(&st.bar, 2000000))
            FAIL("cpu0: barrier round %d timed out", i);

    for (unsigned cpu = 1; cpu < SMP_CPUS; cpu++) {
        EXPECT_WAIT(atomic_read(&st.rounds[cpu]) == ROUNDS, 1000000);
        EXPECT_EQ(st.mpidr[cpu], smp_cpu_mpidr(cpu));
        EXPECT_EQ(st.el[cpu], 1);
        tinfo("cpu%u: MPIDR 0x%lx, started at EL%lu", cpu, st.mpidr[cpu], cpu_entry_el(cpu));
    }
    for (unsigned cpu = 1; cpu < SMP_CPUS; cpu++)
        EXPECT_TRUE(cpu_wait_off(cpu, 2000000));

    /* CPU_OFF must leave a CPU that CPU_ON can start again. */
    st.checked_in = 0;
    barrier_init(&st.bar, 1);
    EXPECT_EQ(cpu_start(1, checkin, NULL), PSCI_SUCCESS);
    EXPECT_WAIT(atomic_read(&st.checked_in) == 1, 2000000);
    EXPECT_TRUE(cpu_wait_off(1, 2000000));
}
