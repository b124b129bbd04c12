/* faultfs.so: an LD_PRELOAD shim that makes file-system mutations under one folder fail,
 * the way a full or failing disk does. Compiled by tests/reliability/test_faults.py.
 *
 *   FAULT_DIR=/abs/path    only paths (and fds of files) under this folder are affected;
 *                          paths containing "/.spare/" are never counted (a background pool)
 *   FAULT_ERRNO=ENOSPC|EIO the error to inject (default ENOSPC)
 *   FAULT_FLAG=/abs/file   while this file exists, every mutation under FAULT_DIR fails
 *   FAULT_AT=n             the n-th mutation under FAULT_DIR fails (once); FAULT_COUNT=file
 *                          receives the number of mutations seen when the process exits;
 *                          FAULT_LOG=file gets "n path" appended for the failed one
 *   FAULT_TRACE=file       gets "n path" appended for every counted mutation
 *   FAULT_SHORT=1          a faulted write(2) first writes half of its bytes and returns that
 *                          short count (what a disk with a little space left does)
 *
 * Mutations: open/openat with O_CREAT or write access, write/pwrite, mkdir, rename(at)(2),
 * link(at), fsync. Reads, unlink and rmdir are left alone (a full disk still lets you delete).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static const char *dir;
static size_t dirlen;
static const char *flag;
static long at = -1;
static long seen;
static int err_no = ENOSPC;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static void report(void) {
    const char *out = getenv("FAULT_COUNT");
    if (!out) return;
    char buf[64];
    int n = snprintf(buf, sizeof buf, "%ld\n", seen);
    int fd = (int)syscall(SYS_openat, AT_FDCWD, out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) { (void)syscall(SYS_write, fd, buf, n); close(fd); }
}

__attribute__((constructor)) static void init(void) {
    dir = getenv("FAULT_DIR");
    dirlen = dir ? strlen(dir) : 0;
    flag = getenv("FAULT_FLAG");
    const char *a = getenv("FAULT_AT");
    if (a) at = atol(a);
    const char *e = getenv("FAULT_ERRNO");
    if (e && strcmp(e, "EIO") == 0) err_no = EIO;
    if (getenv("FAULT_COUNT")) atexit(report);
}

static int under(const char *path) {
    if (!dir || !path) return 0;
    char abs[PATH_MAX];
    if (path[0] != '/') {
        if (!getcwd(abs, sizeof abs)) return 0;
        size_t n = strlen(abs);
        snprintf(abs + n, sizeof abs - n, "/%s", path);
        path = abs;
    }
    if (strncmp(path, dir, dirlen) != 0 || (path[dirlen] != '/' && path[dirlen] != 0)) return 0;
    return 1;
}

static int fd_under(int fd, char *buf, size_t len) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, buf, len - 1);
    if (n <= 0) return 0;
    buf[n] = 0;
    return under(buf);
}

/* 1 if this mutation must fail (errno set) */
static int fault(const char *path) {
    if (!under(path)) return 0;
    if (flag) {
        struct stat st;
        if (syscall(SYS_newfstatat, AT_FDCWD, flag, &st, 0) == 0) { errno = err_no; return 1; }
    }
    if (strstr(path, "/.spare/")) return 0;
    if (at < 0) return 0;
    pthread_mutex_lock(&mu);
    long k = ++seen;
    pthread_mutex_unlock(&mu);
    const char *tr = getenv("FAULT_TRACE");
    if (tr) {
        char buf[PATH_MAX + 32];
        int n = snprintf(buf, sizeof buf, "%ld %s\n", k, path);
        int fd = (int)syscall(SYS_openat, AT_FDCWD, tr, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd >= 0) { (void)syscall(SYS_write, fd, buf, n); close(fd); }
    }
    if (k == at) {
        const char *log = getenv("FAULT_LOG");
        if (log) {
            char buf[PATH_MAX + 32];
            int n = snprintf(buf, sizeof buf, "%ld %s\n", k, path);
            int fd = (int)syscall(SYS_openat, AT_FDCWD, log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
            if (fd >= 0) { (void)syscall(SYS_write, fd, buf, n); close(fd); }
        }
        errno = err_no;
        return 1;
    }
    return 0;
}

static int fd_fault(int fd) {
    char p[PATH_MAX];
    if (!fd_under(fd, p, sizeof p)) return 0;
    return fault(p);
}

#define REAL(ret, name, ...) static ret (*real_##name)(__VA_ARGS__); \
    if (!real_##name) real_##name = dlsym(RTLD_NEXT, #name)

static int wants_write(int flags) { return (flags & O_CREAT) || (flags & O_ACCMODE) != O_RDONLY; }

int open(const char *path, int flags, ...) {
    REAL(int, open, const char *, int, ...);
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }
    if (wants_write(flags) && fault(path)) return -1;
    return real_open(path, flags, mode);
}
int open64(const char *path, int flags, ...) {
    REAL(int, open64, const char *, int, ...);
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }
    if (wants_write(flags) && fault(path)) return -1;
    return real_open64(path, flags, mode);
}
int openat(int dfd, const char *path, int flags, ...) {
    REAL(int, openat, int, const char *, int, ...);
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }
    if (dfd == AT_FDCWD && wants_write(flags) && fault(path)) return -1;
    return real_openat(dfd, path, flags, mode);
}
int openat64(int dfd, const char *path, int flags, ...) {
    REAL(int, openat64, int, const char *, int, ...);
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }
    if (dfd == AT_FDCWD && wants_write(flags) && fault(path)) return -1;
    return real_openat64(dfd, path, flags, mode);
}
ssize_t write(int fd, const void *buf, size_t n) {
    REAL(ssize_t, write, int, const void *, size_t);
    if (fd > 2 && fd_fault(fd)) {
        const char *sh = getenv("FAULT_SHORT");
        if (sh && *sh == '1' && n > 1) return real_write(fd, buf, n / 2);
        return -1;
    }
    return real_write(fd, buf, n);
}
ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
    REAL(ssize_t, pwrite64, int, const void *, size_t, off_t);
    if (fd > 2 && fd_fault(fd)) return -1;
    return real_pwrite64(fd, buf, n, off);
}
int fsync(int fd) {
    REAL(int, fsync, int);
    if (fd_fault(fd)) return -1;
    return real_fsync(fd);
}
int mkdir(const char *path, mode_t mode) {
    REAL(int, mkdir, const char *, mode_t);
    if (fault(path)) return -1;
    return real_mkdir(path, mode);
}
int rename(const char *a, const char *b) {
    REAL(int, rename, const char *, const char *);
    if (fault(b)) return -1;
    return real_rename(a, b);
}
int renameat(int da, const char *a, int db, const char *b) {
    REAL(int, renameat, int, const char *, int, const char *);
    if (db == AT_FDCWD && fault(b)) return -1;
    return real_renameat(da, a, db, b);
}
int renameat2(int da, const char *a, int db, const char *b, unsigned int fl) {
    REAL(int, renameat2, int, const char *, int, const char *, unsigned int);
    if (db == AT_FDCWD && fault(b)) return -1;
    return real_renameat2(da, a, db, b, fl);
}
int link(const char *a, const char *b) {
    REAL(int, link, const char *, const char *);
    if (fault(b)) return -1;
    return real_link(a, b);
}
int linkat(int da, const char *a, int db, const char *b, int fl) {
    REAL(int, linkat, int, const char *, int, const char *, int);
    if (db == AT_FDCWD && fault(b)) return -1;
    return real_linkat(da, a, db, b, fl);
}
