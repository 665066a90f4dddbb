/*
 * A bare-metal guest for the smccc-user v2 end-to-end checks (e2e.py drives it).
 *   1. SDEI_VERSION on the conduit (HVC at EL1, SMC at EL2)
 *   2. two vCPUs make N calls each at the same time; each prints its elapsed time
 *   3. for each host step: wait for 'g' on the UART, make one call, print it
 */
typedef unsigned long u64;
typedef unsigned int u32;

#define UART        0x09000000UL
#define SDEI_VERSION 0xc4000020UL
#define PSCI_CPU_ON  0xc4000003UL
#define PSCI_OFF     0x84000008UL
#define NPAR        5

u64 smccc(u64 fid, u64 a1, u64 a2, u64 a3);
void _start(void);

static volatile u32 *const uart = (volatile u32 *)UART;
static volatile u64 done1, go1;

static void putc_(char c)
{
    while (uart[0x18 / 4] & (1 << 5))
        ;
    uart[0] = c;
}

static void puts_(const char *s)
{
    while (*s)
        putc_(*s++);
}

static void puthex(u64 v)
{
    puts_("0x");
    for (int i = 60; i >= 0; i -= 4)
        putc_("0123456789abcdef"[(v >> i) & 15]);
}

static void putdec(u64 v)
{
    char b[24];
    int i = 0;
    do {
        b[i++] = '0' + v % 10;
        v /= 10;
    } while (v);
    while (i)
        putc_(b[--i]);
}

static char getc_(void)
{
    while (uart[0x18 / 4] & (1 << 4))
        ;
    return uart[0];
}

static u64 now_ms(void)
{
    u64 c, f;
    __asm__ volatile("isb; mrs %0, cntvct_el0; mrs %1, cntfrq_el0" : "=r"(c), "=r"(f));
    return c / (f / 1000);
}

static u64 calls(u64 n)
{
    u64 t0 = now_ms();
    for (u64 i = 0; i < n; i++)
        smccc(SDEI_VERSION, 0, 0, 0);
    return now_ms() - t0;
}

void main(u64 cpu)
{
    u64 el, v, t;

    if (cpu == 1) {
        while (!go1)
            ;
        done1 = calls(NPAR) + 1;
        smccc(0x84000002UL, 0, 0, 0);   /* PSCI CPU_OFF */
        return;
    }
    __asm__ volatile("mrs %0, CurrentEL" : "=r"(el));
    puts_("E2E-START el=");
    putdec(el >> 2);
    puts_(el == 8 ? " conduit=smc\r\n" : " conduit=hvc\r\n");
    v = smccc(SDEI_VERSION, 0, 0, 0);
    puts_("E2E-VERSION ");
    puthex(v);
    puts_("\r\n");

    /* 2: alone, then together with CPU 1 */
    t = calls(NPAR);
    puts_("E2E-SERIAL cpu0 ms=");
    putdec(t);
    puts_("\r\n");
    v = smccc(PSCI_CPU_ON, 1, (u64)_start, 0);
    go1 = 1;
    t = calls(NPAR);
    while (!done1)
        ;
    puts_("E2E-PARALLEL cpu0 ms=");
    putdec(t);
    puts_(" cpu1 ms=");
    putdec(done1 - 1);
    puts_("\r\n");

    /* 3: host-driven single calls */
    for (u64 i = 0;; i++) {
        puts_("E2E-WAIT ");
        putdec(i);
        puts_("\r\n");
        char c = getc_();
        if (c == 'q')
            break;
        puts_("E2E-CALL ");
        putdec(i);
        puts_("\r\n");
        t = now_ms();
        v = smccc(SDEI_VERSION, 0, 0, 0);
        puts_("E2E-RET ");
        putdec(i);
        puts_(" x0=");
        puthex(v);
        puts_(" ms=");
        putdec(now_ms() - t);
        puts_("\r\n");
    }
    puts_("E2E-DONE\r\n");
    smccc(PSCI_OFF, 0, 0, 0);
}
