/* Stand-in for QEMU's "qemu/osdep.h" when building sdeid-wire.c alone. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
