/* mcp_internal.h - what the core's files share and the application does not see.
 *
 * The core needs no C library: these few loops replace memcpy/memmove/memset/strlen/memcmp,
 * which newlib would add about 700 bytes of flash for (they are written for speed). */
#ifndef MCP_INTERNAL_H
#define MCP_INTERNAL_H

#include "mcp.h"

/* Copy n bytes; dst may overlap src only if it lies before it (a shift to the front). */
void mcp_copy(void *dst, const void *src, size_t n);
void mcp_zero(void *dst, size_t n);
size_t mcp_strlen(const char *s);
int mcp_same(const void *a, const void *b, size_t n);

#endif
