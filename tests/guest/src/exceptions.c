#include "exceptions.h"
#include "gic.h"
#include "lib.h"
#include "test.h"

static struct exc_stats stats[MAX_CPUS];
static exc_hook_fn hooks[MAX_CPUS];

static const char *const kind_name[4] = { "sync", "IRQ", "FIQ", "SError" };
static const char *const origin_name[4] = { "EL1t", "EL1h", "EL0/AArch64", "EL0/AArch32" };

void exception_set_hook(exc_hook_fn fn) { atomic_set(&hooks[cpu_id()], fn); }

void exception_clear_hooks(void)
{
    for (unsigned i = 0; i < MAX_CPUS; i++)
        atomic_set(&hooks[i], NULL);
}

const struct exc_stats *exception_stats(unsigned cpu) { return &stats[cpu % MAX_CPUS]; }

u64 vbar(void) { return read_sysreg(vbar_el1); }

void exception_handler(u64 offset, struct exc_frame *f)
{
    unsigned cpu = cpu_id();
    struct exc_stats *s = &stats[cpu];

    s->count[(offset >> 7) & 15]++;
    s->last_offset = offset;
    s->last_esr = f->esr;
    s->last_elr = f->elr;
    s->last_spsr = f->spsr;
    s->last_far = f->far;

    exc_hook_fn hook = atomic_read(&hooks[cpu]);
    if (hook && hook(offset, f))
        return;

    if (VEC_KIND(offset) == 1 && gic_present()) {
        gic_handle_irq();
        return;
    }

    /* Anything else is a bug in the guest or in what it is testing: fail
     * the running case (or the whole run) instead of hanging. */
    test_fail(__FILE__, __LINE__,
              "unexpected %s exception from %s on cpu%u: ESR=0x%lx (EC 0x%lx) ELR=0x%lx FAR=0x%lx SPSR=0x%lx",
              kind_name[VEC_KIND(offset)], origin_name[(offset >> 9) & 3], cpu,
              f->esr, ESR_EC(f->esr), f->elr, f->far, f->spsr);
    test_abort();
}
