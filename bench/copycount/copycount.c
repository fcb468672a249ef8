/*
 * LD_PRELOAD shim for the benchmark's copy count: counts the bytes that
 * memcpy, memmove and their variants copy in a process, in an 8-byte
 * counter in the file named by COPYCOUNT_FILE (mapped shared, so the
 * benchmark reads it while the server runs and takes the difference
 * around a measured run). Kernel copies (recv, send) are not counted:
 * what it measures is the user-space copying of a server.
 *
 * The copies are done here with `rep movsb` (x86-64), so the shim never
 * calls the functions it replaces.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile uint64_t *copied;

__attribute__((constructor)) static void copycount_init(void)
{
    const char *path = getenv("COPYCOUNT_FILE");
    if (path == NULL)
        return;
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    if (fd < 0)
        return;
    if (ftruncate(fd, sizeof(uint64_t)) == 0) {
        void *p = mmap(NULL, sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p != MAP_FAILED)
            copied = p;
    }
    close(fd);
}

static void count(size_t n)
{
    if (copied != NULL)
        __atomic_fetch_add(copied, n, __ATOMIC_RELAXED);
}

static void forward(void *dst, const void *src, size_t n)
{
    __asm__ volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
}

static void backward(void *dst, const void *src, size_t n)
{
    volatile unsigned char *d = dst;
    const volatile unsigned char *s = src;
    while (n-- > 0)
        d[n] = s[n];
}

void *memcpy(void *dst, const void *src, size_t n)
{
    count(n);
    forward(dst, src, n);
    return dst;
}

void *mempcpy(void *dst, const void *src, size_t n)
{
    count(n);
    forward(dst, src, n);
    return (unsigned char *)dst + n;
}

void *memmove(void *dst, const void *src, size_t n)
{
    count(n);
    if ((uintptr_t)dst - (uintptr_t)src >= n)
        forward(dst, src, n);
    else
        backward(dst, src, n);
    return dst;
}

void *__memcpy_chk(void *dst, const void *src, size_t n, size_t dstlen)
{
    if (n > dstlen)
        abort();
    return memcpy(dst, src, n);
}

void *__memmove_chk(void *dst, const void *src, size_t n, size_t dstlen)
{
    if (n > dstlen)
        abort();
    return memmove(dst, src, n);
}
