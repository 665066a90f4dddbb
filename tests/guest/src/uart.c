/* PL011 console. QEMU's PL011 needs no baud/line setup; we only enable it in
 * case firmware left it off. */
#include "lib.h"
#include "mmio.h"

#define UARTDR   0x00
#define UARTFR   0x18
#define UARTCR   0x30
#define FR_RXFE  BIT(4)
#define FR_TXFF  BIT(5)
#define CR_UARTEN BIT(0)
#define CR_TXE   BIT(8)

static struct spinlock uart_lock = SPINLOCK_INIT;

void uart_init(void)
{
    writel(UART0_BASE + UARTCR, CR_UARTEN | CR_TXE | BIT(9) /* RXE */);
}

static void uart_putc(char c)
{
    /* Bounded: a wedged UART must not hang the run. */
    for (unsigned i = 0; i < 1000000 && (readl(UART0_BASE + UARTFR) & FR_TXFF); i++)
        ;
    writeb(UART0_BASE + UARTDR, (u8)c);
}

void uart_write(const char *s, size_t n)
{
    u64 t = spin_lock(&uart_lock);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\n')
            uart_putc('\r');
        uart_putc(s[i]);
    }
    spin_unlock(&uart_lock, t);
}

/* Called when a test is aborted by longjmp: if the abort happened inside a
 * print on this CPU, the lock would otherwise stay held. */
void uart_release_if_owner(void)
{
    if (atomic_read(&uart_lock.owner) == cpu_id() + 1)
        atomic_set(&uart_lock.owner, 0);
}

void puts_raw(const char *s)
{
    uart_write(s, strlen(s));
}

/* The host types on the console (QEMU's stdin): one character, -1 if none. */
int uart_getc_nowait(void)
{
    if (readl(UART0_BASE + UARTFR) & FR_RXFE)
        return -1;
    return readl(UART0_BASE + UARTDR) & 0xff;
}

/* Reads what the host typed so far; true once a whole line equal to `want`
 * arrived.  One reader at a time (the cases that use it read on CPU 0). */
bool uart_line_is(const char *want)
{
    static char line[16];
    static unsigned len;
    int c;

    while ((c = uart_getc_nowait()) >= 0) {
        if (c == '\r' || c == '\n') {
            line[len] = '\0';
            len = 0;
            if (!strcmp(line, want))
                return true;
        } else if (len < sizeof(line) - 1) {
            line[len++] = (char)c;
        }
    }
    return false;
}
