#include "fdt.h"
#include "lib.h"

#define FDT_MAGIC       0xd00dfeed
#define FDT_BEGIN_NODE  1
#define FDT_END_NODE    2
#define FDT_PROP        3
#define FDT_NOP         4
#define FDT_END         9
#define MAX_DEPTH       8

struct fdt_header {
    u32 magic, totalsize, off_dt_struct, off_dt_strings, off_mem_rsvmap;
    u32 version, last_comp_version, boot_cpuid_phys, size_dt_strings, size_dt_struct;
};

static const u8 *fdt;

static u32 be32(const void *p) { return fdt32_to_cpu(*(const u32 *)p); }

bool fdt_init(u64 addr)
{
    fdt = NULL;
    if (!addr || (addr & 7))
        return false;
    const struct fdt_header *h = (const void *)addr;
    if (be32(&h->magic) != FDT_MAGIC || be32(&h->version) < 16)
        return false;
    fdt = (const u8 *)addr;
    return true;
}

u64 fdt_address(void) { return (u64)fdt; }

/* Walk the structure block, keeping the path of node names, and call cb for
 * every property. cb returns true to stop. */
typedef bool (*prop_cb)(const char *const *path, int depth, const char *name,
                        const void *val, u32 len, void *ctx);

static void fdt_walk(prop_cb cb, void *ctx)
{
    if (!fdt)
        return;
    const struct fdt_header *h = (const void *)fdt;
    const u8 *p = fdt + be32(&h->off_dt_struct);
    const u8 *end = p + be32(&h->size_dt_struct);
    const char *strings = (const char *)fdt + be32(&h->off_dt_strings);
    const char *path[MAX_DEPTH];
    int depth = -1;     /* the root node brings it to 0 */

    while (p < end) {
        u32 tok = be32(p);
        p += 4;
        switch (tok) {
        case FDT_BEGIN_NODE: {
            const char *name = (const char *)p;
            depth++;
            if (depth < MAX_DEPTH)
                path[depth] = name;
            p += (strlen(name) + 1 + 3) & ~3UL;
            break;
        }
        case FDT_END_NODE:
            depth--;
            break;
        case FDT_PROP: {
            u32 len = be32(p), nameoff = be32(p + 4);
            const void *val = p + 8;
            p += 8 + ((len + 3) & ~3UL);
            if (depth >= 0 && depth < MAX_DEPTH &&
                cb(path, depth, strings + nameoff, val, len, ctx))
                return;
            break;
        }
        case FDT_NOP:
            break;
        default:        /* FDT_END or garbage */
            return;
        }
    }
}

/* Does node name `node` ("cpu@1") match path component `comp` ("cpu@1" or "cpu")? */
static bool comp_match(const char *comp, size_t clen, const char *node)
{
    if (strncmp(comp, node, clen) != 0)
        return false;
    if (node[clen] == '\0')
        return true;
    if (node[clen] != '@')
        return false;
    /* "cpu" matches "cpu@1", but "cpu@1" must not match "cpu@10" */
    for (size_t i = 0; i < clen; i++)
        if (comp[i] == '@')
            return false;
    return true;
}

struct getprop_ctx {
    const char *path, *prop;
    const void *val;
    u32 len;
};

static bool path_match(const char *const *path, int depth, const char *want)
{
    /* path[0] is the root ("") */
    int d = 0;
    const char *s = want;
    while (*s == '/')
        s++;
    while (*s) {
        const char *e = s;
        while (*e && *e != '/')
            e++;
        d++;
        if (d > depth || !comp_match(s, (size_t)(e - s), path[d]))
            return false;
        s = e;
        while (*s == '/')
            s++;
    }
    return d == depth;
}

static bool getprop_cb(const char *const *path, int depth, const char *name,
                       const void *val, u32 len, void *vctx)
{
    struct getprop_ctx *c = vctx;
    if (strcmp(name, c->prop) || !path_match(path, depth, c->path))
        return false;
    c->val = val;
    c->len = len;
    return true;
}

const void *fdt_getprop(const char *path, const char *prop, u32 *len)
{
    struct getprop_ctx c = { path, prop, NULL, 0 };
    fdt_walk(getprop_cb, &c);
    if (len)
        *len = c.len;
    return c.val;
}

const char *fdt_getprop_str(const char *path, const char *prop)
{
    u32 len;
    const char *s = fdt_getprop(path, prop, &len);
    return (s && len && s[len - 1] == '\0') ? s : NULL;
}

struct cpus_ctx {
    u64 *mpidrs;
    int max, n;
};

static bool cpus_cb(const char *const *path, int depth, const char *name,
                    const void *val, u32 len, void *vctx)
{
    struct cpus_ctx *c = vctx;
    if (depth != 2 || strcmp(path[1], "cpus") || strncmp(path[2], "cpu@", 4) ||
        strcmp(name, "reg"))
        return false;
    u64 mpidr = len >= 8 ? ((u64)be32(val) << 32) | be32((const u8 *)val + 4)
                         : be32(val);
    if (c->n < c->max)
        c->mpidrs[c->n] = mpidr;
    c->n++;
    return false;
}

int fdt_cpus(u64 *mpidrs, int max)
{
    struct cpus_ctx c = { mpidrs, max, 0 };
    fdt_walk(cpus_cb, &c);
    return c.n;
}

const char *fdt_bootarg(const char *key)
{
    const char *args = fdt_getprop_str("/chosen", "bootargs");
    size_t n = strlen(key);

    for (const char *p = args; p && *p; p++) {
        if ((p == args || p[-1] == ' ') && !strncmp(p, key, n) && p[n] == '=')
            return p + n + 1;
    }
    return NULL;
}

bool fdt_bootarg_is(const char *key, const char *value)
{
    const char *v = fdt_bootarg(key);
    size_t n = strlen(value);

    return v && !strncmp(v, value, n) && (v[n] == ' ' || v[n] == '\0');
}

u64 fdt_bootarg_u64(const char *key, u64 dflt)
{
    const char *p = fdt_bootarg(key);
    u64 v = 0;

    if (!p)
        return dflt;
    for (; *p >= '0' && *p <= '9'; p++)
        v = v * 10 + (u64)(*p - '0');
    return v;
}
