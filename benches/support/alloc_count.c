/* Counts calls to the allocation functions of the process it is preloaded
 * into (LD_PRELOAD), for benches/footprint_bench.rs with FOOTPRINT_ALLOCS=1.
 * Two counters (calls, bytes asked) live in a MAP_SHARED file named by
 * E2M_ALLOC_COUNTS, so the bench reads them from outside while the process
 * runs. Every call goes on to glibc's own allocator: the counts are those
 * of the real program, not of a different allocator. free() is not counted. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static uint64_t fallback[2];
static uint64_t *counts = fallback;

__attribute__((constructor)) static void open_counts(void) {
    const char *path = getenv("E2M_ALLOC_COUNTS");
    if (!path) return;
    int fd = open(path, O_RDWR | O_CREAT, 0600);
    if (fd < 0) return;
    if (ftruncate(fd, 4096) == 0) {
        void *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (m != MAP_FAILED) counts = m;
    }
    close(fd);
}

static inline void note(size_t n) {
    __atomic_fetch_add(&counts[0], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&counts[1], n, __ATOMIC_RELAXED);
}

void *malloc(size_t n) { note(n); return __libc_malloc(n); }
void *calloc(size_t k, size_t n) { note(k * n); return __libc_calloc(k, n); }
void *realloc(void *p, size_t n) { note(n); return __libc_realloc(p, n); }
void *memalign(size_t a, size_t n) { note(n); return __libc_memalign(a, n); }
void *aligned_alloc(size_t a, size_t n) { note(n); return __libc_memalign(a, n); }
int posix_memalign(void **out, size_t a, size_t n) {
    note(n);
    void *p = __libc_memalign(a, n);
    if (!p) return 12; /* ENOMEM */
    *out = p;
    return 0;
}
