/*
 * Run QEMU's sdeid frame validation (hw/misc/sdeid-wire.c) against the
 * protocol's test vectors (protocol/vectors.h).  See ../README.md.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include <stdio.h>
#include "qemu/osdep.h"
#include "hw/misc/sdeid-wire.h"
#include "vectors.h"

static SdeidWireError decode(const SdeidVector *v, SdeidHeader *h,
                             uint64_t *f, size_t *n, size_t *blob)
{
    SdeidWireError err;
    size_t off = SIZE_MAX;

    if (v->len < SDEID_HEADER_SIZE) {
        return SDEID_WIRE_TRUNCATED;
    }
    err = sdeid_wire_header(v->frame, h);
    if (err) {
        return err;
    }
    if (v->len != SDEID_HEADER_SIZE + h->size) {
        return SDEID_WIRE_BAD_PAYLOAD;
    }
    err = sdeid_wire_payload(h, v->frame + SDEID_HEADER_SIZE, f, 64, n, &off);
    *blob = off == SIZE_MAX ? 0 : h->size - off;
    return err;
}

int main(void)
{
    unsigned passed = 0, failed = 0;
    size_t i;

    for (i = 0; i < SDEID_NR_VECTORS; i++) {
        const SdeidVector *v = &sdeid_vectors[i];
        SdeidHeader h;
        uint64_t f[64];
        uint8_t buf[512];
        size_t n = 0, blob = 0;
        SdeidWireError err = decode(v, &h, f, &n, &blob);
        const char *why = NULL;

        if (!v->valid) {
            if (!err) {
                why = "accepted";
            } else if (strcmp(sdeid_wire_error_name(err), v->error)) {
                why = sdeid_wire_error_name(err);
            }
        } else if (err) {
            why = sdeid_wire_error_name(err);
        } else if (h.request != v->request || h.flags != v->flags ||
                   h.size != v->size || h.id != v->id) {
            why = "header mismatch";
        } else if (n != v->nfields ||
                   (n && memcmp(f, v->fields, n * sizeof(f[0])))) {
            why = "field mismatch";
        } else if (sdeid_wire_encode(buf, sizeof(buf), h.request, h.flags,
                                     h.id, f, n, v->frame + v->len - blob,
                                     blob) != v->len ||
                   memcmp(buf, v->frame, v->len)) {
            why = "re-encoding differs";
        }
        if (why) {
            printf("FAIL %s: %s\n", v->name, why);
            failed++;
        } else {
            printf("ok   %s\n", v->name);
            passed++;
        }
    }
    printf("%u passed, %u failed\n", passed, failed);
    return failed != 0;
}
