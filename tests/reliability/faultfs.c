/* faultfs.so: an LD_PRELOAD shim that makes file-system mutations under one folder fail,
 * the way a full or failing disk does. Compiled by tests/reliability/test_faults.py.
 *
 * Only the dagrun process itself is affected: the first process that loads the shim without
 * FAULT_PID set records its pid in FAULT_PID (inherited by everything it starts); any other
 * process -- its agents, which inherit LD_PRELOAD, or a forked child before exec -- sees a
 * different getpid() and the shim does nothing there (no fault, no count, no trace). So the
 * indices below are the dagrun process's own mutations, whatever its agents do.
 *
 *   FAULT_DIR=/abs/path    only paths (and fds of files) under this folder are affected
 *   FAULT_ERRNO=ENOSPC|EIO the error to inject (default ENOSPC)
 *   FAULT_FLAG=/abs/file   while this file exists, every mutation under FAULT_DIR fails
 *   FAULT_AT=n             the n-th mutation of the main thread fails (once)
 *   FAULT_BG_AT=n          the n-th mutation of the other threads (whose order against the
 *                          main thread depends on timing) fails (once)
 *   FAULT_LOG=file         gets "n kind path" appended for the failed one ("bgN" for FAULT_BG_AT)
 *   FAULT_TRACE=file       gets "n kind path" appended for every counted mutation
 *   FAULT_SHORT=1          a faulted write(2) first writes half of its bytes and returns that
 *                          short count (what a disk with a little space left does)
 *   FAULT_KIND=kind        count (and fail, trace) only mutations of this kind ...
 *   FAULT_SUFFIX=s         ... only paths ending in s (not a goal under construction, .new-*)
 *   FAULT_MATCH=regex      ... only paths matching this POSIX extended regex: with FAULT_AT=n,
 *                          "the n-th mutation of that kind and path", the same one in every
 *                          run, where the n-th mutation of the whole run is not (the engine's
 *                          threads and its batched event appends vary from run to run)
 *
 * Mutations and their kinds: open/openat with O_CREAT and mknod/mknodat ("create") or other
 * write access ("open-w"), write/pwrite ("write", or "append" on an O_APPEND fd), ftruncate ("truncate"),
 * fsync ("fsync"), mkdir ("mkdir"), rename/renameat/renameat2 ("rename"), link/linkat ("link"),
 * utimensat on a path ("utime"). Reads, unlink and rmdir are left alone (a full disk still
 * lets you delete).
 */
#define _GNU_SOURCE
#pragma GCC diagnostic ignored "-Wnonnull-compare"   /* utimensat(fd, NULL, ...) is legal */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

static const char *dir;
static size_t dirlen;
static const char *flag;
static const char *only_kind, *only_suffix;   /* FAULT_KIND / FAULT_SUFFIX: count only these */
static regex_t only_match;                    /* FAULT_MATCH */
static int has_match;
static long at = -1, bg_at = -1;
static long seen, bg_seen;
static int err_no = ENOSPC;
static pid_t target;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

__attribute__((constructor)) static void init(void) {
    const char *p = getenv("FAULT_PID");
    if (p && *p) {
        target = (pid_t)atol(p);
    } else {
        char buf[32];
        target = getpid();
        snprintf(buf, sizeof buf, "%ld", (long)target);
        setenv("FAULT_PID", buf, 1);    /* before main: Python's os.environ carries it */
    }
    dir = getenv("FAULT_DIR");
    dirlen = dir ? strlen(dir) : 0;
    flag = getenv("FAULT_FLAG");
    const char *a = getenv("FAULT_AT");
    if (a) at = atol(a);
    const char *b = getenv("FAULT_BG_AT");
    if (b) bg_at = atol(b);
    only_kind = getenv("FAULT_KIND");
    only_suffix = getenv("FAULT_SUFFIX");
    const char *m = getenv("FAULT_MATCH");
    if (m && *m) {
        if (regcomp(&only_match, m, REG_EXTENDED | REG_NOSUB) != 0) {
            fprintf(stderr, "faultfs: bad FAULT_MATCH regex: %s\n", m);
            abort();
        }
        has_match = 1;
    }
    const char *e = getenv("FAULT_ERRNO");
    if (e && strcmp(e, "EIO") == 0) err_no = EIO;
}

static int active(void) { return dir && getpid() == target; }

static int under(const char *path) {
    if (!path) return 0;
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

static int fd_path(int fd, char *buf, size_t len) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, buf, len - 1);
    if (n <= 0) return 0;
    buf[n] = 0;
    return 1;
}

static void note(const char *env, const char *prefix, long k, const char *kind, const char *path) {
    const char *out = getenv(env);
    if (!out) return;
    char buf[PATH_MAX + 64];
    int n = snprintf(buf, sizeof buf, "%s%ld %s %s\n", prefix, k, kind, path);
    int fd = (int)syscall(SYS_openat, AT_FDCWD, out, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0) { (void)syscall(SYS_write, fd, buf, n); close(fd); }
}

/* 1 if this mutation must fail (errno set) */
static int fault(const char *kind, const char *path) {
    if (!active() || !under(path)) return 0;
    if (only_kind && strcmp(kind, only_kind) != 0) return 0;
    if (only_suffix) {
        size_t n = strlen(path), m = strlen(only_suffix);
        if (n < m || strcmp(path + n - m, only_suffix) != 0 || strstr(path, "/.new-")) return 0;
    }
    if (has_match && regexec(&only_match, path, 0, NULL, 0) != 0) return 0;
    if (flag) {
        struct stat st;
        if (syscall(SYS_newfstatat, AT_FDCWD, flag, &st, 0) == 0) { errno = err_no; return 1; }
    }
    int main_thread = (pid_t)syscall(SYS_gettid) == target;
    pthread_mutex_lock(&mu);
    long k = main_thread ? ++seen : ++bg_seen;
    pthread_mutex_unlock(&mu);
    note("FAULT_TRACE", main_thread ? "" : "bg", k, kind, path);
    if ((main_thread && k == at) || (!main_thread && k == bg_at)) {
        note("FAULT_LOG", main_thread ? "" : "bg", k, kind, path);
        errno = err_no;
        return 1;
    }
    return 0;
}

static int fd_fault(const char *kind, int fd) {
    char p[PATH_MAX];
    if (!active() || !fd_path(fd, p, sizeof p)) return 0;
    return fault(kind, p);
}

#define REAL(ret, name, ...) static ret (*real_##name)(__VA_ARGS__); \
    if (!real_##name) real_##name = dlsym(RTLD_NEXT, #name)

static int wants_write(int flags) { return (flags & O_CREAT) || (flags & O_ACCMODE) != O_RDONLY; }
static const char *open_kind(int flags) { return (flags & O_CREAT) ? "create" : "open-w"; }
static const char *write_kind(int fd) {
    int fl = (int)syscall(SYS_fcntl, fd, F_GETFL);
    return (fl >= 0 && (fl & O_APPEND)) ? "append" : "write";
}

int open(const char *path, int flags, ...) {
    REAL(int, open, const char *, int, ...);
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }
    if (wants_write(flags) && fault(open_kind(flags), path)) return -1;
    return real_open(path, flags, mode);
}
int open64(const char *path, int flags, ...) {
    REAL(int, open64, const char *, int, ...);
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }
    if (wants_write(flags) && fault(open_kind(flags), path)) return -1;
    return real_open64(path, flags, mode);
}
int openat(int dfd, const char *path, int flags, ...) {
    REAL(int, openat, int, const char *, int, ...);
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }
    if (dfd == AT_FDCWD && wants_write(flags) && fault(open_kind(flags), path)) return -1;
    return real_openat(dfd, path, flags, mode);
}
int openat64(int dfd, const char *path, int flags, ...) {
    REAL(int, openat64, int, const char *, int, ...);
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }
    if (dfd == AT_FDCWD && wants_write(flags) && fault(open_kind(flags), path)) return -1;
    return real_openat64(dfd, path, flags, mode);
}
ssize_t write(int fd, const void *buf, size_t n) {
    REAL(ssize_t, write, int, const void *, size_t);
    if (fd > 2 && fd_fault(write_kind(fd), fd)) {
        const char *sh = getenv("FAULT_SHORT");
        if (sh && *sh == '1' && n > 1) return real_write(fd, buf, n / 2);
        return -1;
    }
    return real_write(fd, buf, n);
}
ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
    REAL(ssize_t, pwrite64, int, const void *, size_t, off_t);
    if (fd > 2 && fd_fault("write", fd)) return -1;
    return real_pwrite64(fd, buf, n, off);
}
int ftruncate(int fd, off_t len) {
    REAL(int, ftruncate, int, off_t);
    if (fd > 2 && fd_fault("truncate", fd)) return -1;
    return real_ftruncate(fd, len);
}
int ftruncate64(int fd, off_t len) {
    REAL(int, ftruncate64, int, off_t);
    if (fd > 2 && fd_fault("truncate", fd)) return -1;
    return real_ftruncate64(fd, len);
}
int fsync(int fd) {
    REAL(int, fsync, int);
    if (fd_fault("fsync", fd)) return -1;
    return real_fsync(fd);
}
int mkdir(const char *path, mode_t mode) {
    REAL(int, mkdir, const char *, mode_t);
    if (fault("mkdir", path)) return -1;
    return real_mkdir(path, mode);
}
int mknod(const char *path, mode_t mode, dev_t dev) {   /* an empty file in one call */
    REAL(int, mknod, const char *, mode_t, dev_t);
    if (fault("create", path)) return -1;
    return real_mknod(path, mode, dev);
}
int mknodat(int dfd, const char *path, mode_t mode, dev_t dev) {
    REAL(int, mknodat, int, const char *, mode_t, dev_t);
    if (dfd == AT_FDCWD && fault("create", path)) return -1;
    return real_mknodat(dfd, path, mode, dev);
}
int rename(const char *a, const char *b) {
    REAL(int, rename, const char *, const char *);
    if (fault("rename", b)) return -1;
    return real_rename(a, b);
}
int renameat(int da, const char *a, int db, const char *b) {
    REAL(int, renameat, int, const char *, int, const char *);
    if (db == AT_FDCWD && fault("rename", b)) return -1;
    return real_renameat(da, a, db, b);
}
int renameat2(int da, const char *a, int db, const char *b, unsigned int fl) {
    REAL(int, renameat2, int, const char *, int, const char *, unsigned int);
    if (db == AT_FDCWD && fault("rename", b)) return -1;
    return real_renameat2(da, a, db, b, fl);
}
int link(const char *a, const char *b) {
    REAL(int, link, const char *, const char *);
    if (fault("link", b)) return -1;
    return real_link(a, b);
}
int linkat(int da, const char *a, int db, const char *b, int fl) {
    REAL(int, linkat, int, const char *, int, const char *, int);
    if (db == AT_FDCWD && fault("link", b)) return -1;
    return real_linkat(da, a, db, b, fl);
}
int utimensat(int dfd, const char *path, const struct timespec times[2], int fl) {
    REAL(int, utimensat, int, const char *, const struct timespec *, int);
    if (dfd == AT_FDCWD && path && fault("utime", path)) return -1;
    return real_utimensat(dfd, path, times, fl);
}
