/* The physical limit of a sampling pass: the same reads as governor's StatReader, in C.
 *
 *   sampling_peer DIRLIST FILE...
 *
 * For every group directory listed in the file DIRLIST (one per line), opens the files
 * named on the command line once (those of governor.cgroupfs.reader.FAST_FILES; a file
 * missing in a group is skipped, as governor reads it as None) and prints "files N".
 * Then, for every line K read from stdin, runs K passes and prints their CPU time in
 * nanoseconds (CLOCK_PROCESS_CPUTIME_ID, the clock behind Python's time.process_time), so
 * the caller can interleave these passes with its own.  A pass preads every file from
 * offset 0 into a 64 KiB buffer (kernfs regenerates the content) and parses the numbers in
 * it: each run of digits becomes an integer (a decimal point continues the number, as in
 * the PSI averages), nothing heavier.  At the end of stdin prints "checksum S" (the sum of
 * every parsed number, so the compiler cannot drop the parsing).  Exits 1 on an error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define BUF 65536

static char buf[BUF];

static int64_t cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Sum of the numbers in buf[0:n]: digits accumulate, anything else ends a number. */
static uint64_t parse_numbers(const char *p, ssize_t n) {
    uint64_t sum = 0, v = 0;
    int in = 0;
    for (ssize_t i = 0; i < n; i++) {
        unsigned d = (unsigned char)p[i] - '0';
        if (d < 10) {
            v = v * 10 + d;
            in = 1;
        } else if (p[i] == '.' && in) {
            continue; /* "0.25": one number 25, enough for a checksum */
        } else if (in) {
            sum += v;
            v = 0;
            in = 0;
        }
    }
    return sum + v;
}

static void raise_nofile(void) {
    struct rlimit rl;
    long cap = 1 << 20;
    FILE *f = fopen("/proc/sys/fs/nr_open", "r");
    if (f) {
        if (fscanf(f, "%ld", &cap) != 1)
            cap = 1 << 20;
        fclose(f);
    }
    rl.rlim_cur = rl.rlim_max = (rlim_t)cap;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0 && getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int one_pass(const int *fds, size_t nfd, uint64_t *checksum) {
    for (size_t i = 0; i < nfd; i++) {
        ssize_t n = pread(fds[i], buf, BUF, 0);
        if (n < 0) {
            fprintf(stderr, "sampling_peer: pread: %s\n", strerror(errno));
            return -1;
        }
        *checksum += parse_numbers(buf, n);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s DIRLIST FILE...\n", argv[0]);
        return 2;
    }
    int nfiles = argc - 2;
    raise_nofile();
    FILE *list = fopen(argv[1], "r");
    if (!list) {
        fprintf(stderr, "sampling_peer: %s: %s\n", argv[1], strerror(errno));
        return 1;
    }

    size_t cap = 1024, nfd = 0;
    int *fds = malloc(cap * sizeof *fds);
    char line[4096];
    while (fgets(line, sizeof line, list)) {
        line[strcspn(line, "\n")] = 0;
        if (!line[0])
            continue;
        int dirfd = open(line, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (dirfd < 0) {
            fprintf(stderr, "sampling_peer: %s: %s\n", line, strerror(errno));
            return 1;
        }
        for (int k = 0; k < nfiles; k++) {
            int fd = openat(dirfd, argv[2 + k], O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
            if (fd < 0) {
                if (errno == ENOENT)
                    continue;
                fprintf(stderr, "sampling_peer: %s/%s: %s\n", line, argv[2 + k],
                        strerror(errno));
                return 1;
            }
            if (nfd == cap) {
                cap *= 2;
                fds = realloc(fds, cap * sizeof *fds);
            }
            fds[nfd++] = fd;
        }
        close(dirfd);
    }
    fclose(list);
    printf("files %zu\n", nfd);
    fflush(stdout);

    uint64_t checksum = 0;
    while (fgets(line, sizeof line, stdin)) {
        int passes = atoi(line);
        int64_t t0 = cpu_ns();
        for (int p = 0; p < passes; p++)
            if (one_pass(fds, nfd, &checksum) != 0)
                return 1;
        printf("%lld\n", (long long)(cpu_ns() - t0));
        fflush(stdout);
    }
    printf("checksum %llu\n", (unsigned long long)checksum);
    return 0;
}
