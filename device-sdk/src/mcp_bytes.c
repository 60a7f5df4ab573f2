/* mcp_bytes.c - byte helpers: little-endian fields, and the few C library loops the core
 * needs (so it links without a C library). */
#include "mcp_internal.h"

#if defined(__GNUC__) && !defined(__clang__)
/* GCC would turn these loops back into calls of memcpy, memset and strlen. */
#pragma GCC optimize("no-tree-loop-distribute-patterns")
#endif

void mcp_copy(void *dst, const void *src, size_t n)
{
    uint8_t *d = (uint8_t *)dst;
    const uint8_t *s = (const uint8_t *)src;
    while (n--) {
        *d++ = *s++;
    }
}

void mcp_zero(void *dst, size_t n)
{
    uint8_t *d = (uint8_t *)dst;
    while (n--) {
        *d++ = 0;
    }
}

size_t mcp_strlen(const char *s)
{
    size_t n = 0;
    while (s[n]) {
        n++;
    }
    return n;
}

int mcp_same(const void *a, const void *b, size_t n)
{
    const uint8_t *x = (const uint8_t *)a, *y = (const uint8_t *)b;
    while (n--) {
        if (*x++ != *y++) {
            return 0;
        }
    }
    return 1;
}

void mcp_put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

void mcp_put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

uint16_t mcp_get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (uint16_t)p[1] << 8);
}

uint32_t mcp_get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
