/* libc subset (GCC may emit calls to mem* for struct copies) and the
 * cross-CPU primitives. */
#include "lib.h"
#include "timer.h"

void *memset(void *s, int c, size_t n)
{
    u8 *p = s;
    while (n--)
        *p++ = (u8)c;
    return s;
}

void *memcpy(void *d, const void *s, size_t n)
{
    u8 *dp = d;
    const u8 *sp = s;
    while (n--)
        *dp++ = *sp++;
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const u8 *pa = a, *pb = b;
    for (; n; n--, pa++, pb++)
        if (*pa != *pb)
            return *pa - *pb;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int strcmp(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return (u8)*a - (u8)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b)
            return (u8)*a - (u8)*b;
        if (!*a)
            return 0;
    }
    return 0;
}

#define LOCK_SPIN_LIMIT_US 2000000

u64 spin_lock(struct spinlock *l)
{
    u64 token = irq_save();
    u32 me = cpu_id() + 1;

    if (atomic_read(&l->owner) == me)
        return token | BIT(63);     /* nested on the owning CPU: don't take it */

    /* Bounded so that a CPU that died holding the lock (e.g. a handler that
     * never returned) costs some garbled output rather than a hang. */
    u64 dl = deadline_us(LOCK_SPIN_LIMIT_US);
    while (!atomic_cas(&l->owner, 0, me)) {
        if (deadline_passed(dl)) {
            atomic_set(&l->owner, me);
            break;
        }
        cpu_relax();
    }
    return token;
}

void spin_unlock(struct spinlock *l, u64 token)
{
    if (!(token & BIT(63)))
        atomic_set(&l->owner, 0);
    irq_restore(token & ~BIT(63));
}

void barrier_init(struct spin_barrier *b, u32 n)
{
    b->n = n;
    b->count = 0;
    atomic_set(&b->generation, 0);
}

bool barrier_wait(struct spin_barrier *b, u64 timeout_us)
{
    u32 gen = atomic_read(&b->generation);

    if (atomic_inc(&b->count) == b->n) {
        /* Last one in: reset the count before releasing, so a fast CPU can
         * enter the next round straight away. */
        atomic_set(&b->count, 0);
        atomic_set(&b->generation, gen + 1);
        return true;
    }
    u64 dl = deadline_us(timeout_us);
    while (atomic_read(&b->generation) == gen) {
        if (deadline_passed(dl))
            return false;
        cpu_relax();
    }
    return true;
}

void halt(void)
{
    for (;;)
        asm volatile("wfi");
}
