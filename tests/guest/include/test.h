/*
 * Test harness.
 *
 *   TEST(name) { ... }                   register a case (runs in link order)
 *   TEST_TIMEOUT(name, us) { ... }       same, with its own watchdog
 *
 * Each case prints exactly one result line on the UART:
 *   SDEI-TEST <name> PASS
 *   SDEI-TEST <name> FAIL <reason>
 * and the run ends with
 *   SDEI-TEST-SUMMARY passed=N failed=M
 * followed by PSCI SYSTEM_OFF. Other output never starts with "SDEI-TEST".
 *
 * Cases run on CPU 0 with IRQs unmasked. A per-case watchdog (virtual
 * timer, INTID 27) fails and aborts a case that overruns; EXPECT_* record a
 * failure and carry on, ASSERT_* / FAIL() also abort the case (from any
 * depth, including IRQ and SDEI handlers). Every wait must be bounded: use
 * WAIT_FOR / EXPECT_WAIT.
 *
 * A subset can be selected with -append "tests=name1,name2" (read from the
 * DT /chosen/bootargs).
 */
#ifndef GUEST_TEST_H
#define GUEST_TEST_H

#include "lib.h"
#include "timer.h"

struct test_case {
    const char *name;
    void (*fn)(void);
    u64 timeout_us;
};

#define TEST_TIMEOUT_DEFAULT_US 10000000

#define TEST_TIMEOUT(tname, us)                                             \
    static void test_fn_##tname(void);                                      \
    static const struct test_case test_case_##tname                         \
        __attribute__((used, section("sdei_tests"), aligned(8))) =         \
        { #tname, test_fn_##tname, (us) };                                  \
    static void test_fn_##tname(void)

#define TEST(tname) TEST_TIMEOUT(tname, TEST_TIMEOUT_DEFAULT_US)

/* Record a failure of the current case (first one becomes the reason). Safe
 * from any CPU and from handlers. */
void test_fail(const char *file, int line, const char *fmt, ...) __printf(3, 4);
/* Leave the current case now (on a secondary CPU: leave its cpu_start fn). */
__noreturn void test_abort(void);
bool test_failed(void);
const char *test_name(void);
/* Informational line for the current case: "  [name] ..." */
void tinfo(const char *fmt, ...) __printf(1, 2);

/* Where test_abort on `cpu` jumps to (NULL: nowhere, the run ends). */
void test_set_abort_point(unsigned cpu, struct jmpbuf *jb);

void harness_run(void) __noreturn;

#define EXPECT_EQ(a, b) do {                                                \
    u64 __a = (u64)(a), __b = (u64)(b);                                     \
    if (__a != __b)                                                         \
        test_fail(__FILE__, __LINE__, "EXPECT_EQ(%s, %s): 0x%lx != 0x%lx",  \
                  #a, #b, __a, __b);                                        \
} while (0)

#define EXPECT_NE(a, b) do {                                                \
    u64 __a = (u64)(a), __b = (u64)(b);                                     \
    if (__a == __b)                                                         \
        test_fail(__FILE__, __LINE__, "EXPECT_NE(%s, %s): both 0x%lx",      \
                  #a, #b, __a);                                             \
} while (0)

#define EXPECT_TRUE(c) do {                                                 \
    if (!(c))                                                               \
        test_fail(__FILE__, __LINE__, "EXPECT_TRUE(%s) is false", #c);      \
} while (0)

#define ASSERT_EQ(a, b) do {                                                \
    u64 __a = (u64)(a), __b = (u64)(b);                                     \
    if (__a != __b) {                                                       \
        test_fail(__FILE__, __LINE__, "ASSERT_EQ(%s, %s): 0x%lx != 0x%lx",  \
                  #a, #b, __a, __b);                                        \
        test_abort();                                                       \
    }                                                                       \
} while (0)

#define ASSERT_TRUE(c) do {                                                 \
    if (!(c)) {                                                             \
        test_fail(__FILE__, __LINE__, "ASSERT_TRUE(%s) is false", #c);      \
        test_abort();                                                       \
    }                                                                       \
} while (0)

#define FAIL(...) do {                                                      \
    test_fail(__FILE__, __LINE__, __VA_ARGS__);                             \
    test_abort();                                                           \
} while (0)

/* Bounded wait that records a failure on timeout; evaluates to success. */
#define EXPECT_WAIT(cond, timeout_us) ({                                    \
    bool __ok = WAIT_FOR(cond, timeout_us);                                 \
    if (!__ok)                                                              \
        test_fail(__FILE__, __LINE__, "timed out after %lu us waiting for %s", \
                  (u64)(timeout_us), #cond);                                \
    __ok; })

#endif
