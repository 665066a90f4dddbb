/* Minimal libc subset, console output and cross-CPU primitives. */
#ifndef GUEST_LIB_H
#define GUEST_LIB_H

#include "sysreg.h"

void *memset(void *s, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...) __printf(3, 4);
/* Formats the whole line first and writes it under the console lock, so
 * lines from different CPUs don't interleave. Supports %d %i %u %x %X %c %s
 * %p %%, the l/ll/z length modifiers, width, '0' and '-' flags, and a
 * precision for %s (%.*s). */
int printf(const char *fmt, ...) __printf(1, 2);
void puts_raw(const char *s);

/* Console (PL011) */
void uart_init(void);
void uart_write(const char *s, size_t n);
void uart_release_if_owner(void);
int uart_getc_nowait(void);             /* a character the host typed, or -1 */
bool uart_line_is(const char *want);    /* a whole typed line equal to want */

/* Atomics: __atomic builtins compile to ldaxr/stlxr (we build with
 * -mno-outline-atomics, so no libgcc helpers or LSE detection). */
#define atomic_read(p)      __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define atomic_set(p, v)    __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define atomic_inc(p)       __atomic_add_fetch((p), 1, __ATOMIC_ACQ_REL)
#define atomic_add(p, v)    __atomic_add_fetch((p), (v), __ATOMIC_ACQ_REL)
#define atomic_xchg(p, v)   __atomic_exchange_n((p), (v), __ATOMIC_ACQ_REL)
#define atomic_cas(p, oldv, newv) ({                                        \
    __typeof__(*(p) + 0) __old = (oldv);    /* +0: drop volatile */         \
    __atomic_compare_exchange_n((p), &__old, (newv), false,                 \
                                __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE); })

/* A spinlock that doesn't deadlock when the holder's own CPU re-enters it
 * from an exception or SDEI handler (those run while the interrupted code
 * may hold it): re-entry on the owning CPU proceeds without the lock. */
struct spinlock {
    volatile u32 owner;     /* cpu_id()+1, 0 = free */
};
#define SPINLOCK_INIT { 0 }
/* Returns a token for spin_unlock; masks IRQs while held. */
u64 spin_lock(struct spinlock *l);
void spin_unlock(struct spinlock *l, u64 token);

/* Barrier for n CPUs. Every wait is bounded: false on timeout, after which
 * the barrier is broken and must be re-initialised. */
struct spin_barrier {
    volatile u32 count;
    volatile u32 generation;
    u32 n;
};
void barrier_init(struct spin_barrier *b, u32 n);
bool barrier_wait(struct spin_barrier *b, u64 timeout_us);

__noreturn void halt(void);

/* setjmp/longjmp (src/setjmp.S); also saves/restores DAIF. */
#include "asm_defs.h"
struct jmpbuf {
    u64 x19_x30[12];
    u64 sp;
    u64 daif;
};
_Static_assert(sizeof(struct jmpbuf) == JB_SIZE, "jmpbuf layout");
int guest_setjmp(struct jmpbuf *jb) __attribute__((returns_twice));
__noreturn void guest_longjmp(struct jmpbuf *jb, int val);

#endif
