/* Minimal vsnprintf. Output is always NUL-terminated and truncated to size. */
#include "lib.h"

struct out {
    char *buf;
    size_t size, len;
};

static void put(struct out *o, char c)
{
    if (o->len + 1 < o->size)
        o->buf[o->len] = c;
    o->len++;
}

static void put_num(struct out *o, u64 v, unsigned base, bool upper, bool neg,
                    int width, bool zero, bool left, const char *prefix)
{
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    char tmp[24];
    int n = 0;

    do {
        tmp[n++] = digits[v % base];
        v /= base;
    } while (v);

    int plen = (neg ? 1 : 0) + (prefix ? (int)strlen(prefix) : 0);
    int pad = width - n - plen;

    if (!left && !zero)
        for (; pad > 0; pad--)
            put(o, ' ');
    if (neg)
        put(o, '-');
    for (const char *p = prefix; p && *p; p++)
        put(o, *p);
    if (!left && zero)
        for (; pad > 0; pad--)
            put(o, '0');
    while (n)
        put(o, tmp[--n]);
    for (; pad > 0; pad--)
        put(o, ' ');
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct out o = { buf, size, 0 };

    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            put(&o, *fmt);
            continue;
        }
        fmt++;
        bool zero = false, left = false;
        for (;; fmt++) {
            if (*fmt == '0')
                zero = true;
            else if (*fmt == '-')
                left = true;
            else
                break;
        }
        int width = 0;
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        int prec = -1;      /* only used by %s */
        if (*fmt == '.') {
            fmt++;
            prec = 0;
            if (*fmt == '*') {
                prec = va_arg(ap, int);
                fmt++;
            } else {
                while (*fmt >= '0' && *fmt <= '9')
                    prec = prec * 10 + (*fmt++ - '0');
            }
        }
        int lng = 0;
        while (*fmt == 'l' || *fmt == 'z') {
            lng++;
            fmt++;
        }

        switch (*fmt) {
        case 'd':
        case 'i': {
            s64 v = lng ? va_arg(ap, s64) : va_arg(ap, int);
            bool neg = v < 0;
            put_num(&o, neg ? -(u64)v : (u64)v, 10, false, neg, width, zero, left, NULL);
            break;
        }
        case 'u':
        case 'x':
        case 'X': {
            u64 v = lng ? va_arg(ap, u64) : va_arg(ap, unsigned);
            put_num(&o, v, *fmt == 'u' ? 10 : 16, *fmt == 'X', false, width, zero, left, NULL);
            break;
        }
        case 'p':
            put_num(&o, (u64)va_arg(ap, void *), 16, false, false, width, zero, left, "0x");
            break;
        case 'c':
            put(&o, (char)va_arg(ap, int));
            break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            int n = 0;
            while (s[n] && (prec < 0 || n < prec))
                n++;
            if (!left)
                for (int i = n; i < width; i++)
                    put(&o, ' ');
            for (int i = 0; i < n; i++)
                put(&o, s[i]);
            if (left)
                for (int i = n; i < width; i++)
                    put(&o, ' ');
            break;
        }
        case '%':
            put(&o, '%');
            break;
        case '\0':
            fmt--;
            break;
        default:
            put(&o, '%');
            put(&o, *fmt);
            break;
        }
    }
    if (size)
        buf[o.len < size ? o.len : size - 1] = '\0';
    return (int)o.len;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

int printf(const char *fmt, ...)
{
    char buf[320];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    uart_write(buf, n < (int)sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
    return n;
}
