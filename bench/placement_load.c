/* Load generator of bench/placement.py: spawns processes at a fixed offered rate and
 * measures, for each, the time from its exec to its /proc/PID/cgroup naming the target
 * group.  Compiled on the host (`cc -O2`) by bench/placement.py; runs in the sandbox VM,
 * where a Python poll loop would be slower than what it measures.
 *
 *   placement_load TARGET RATE COUNT LIFETIME [MAX_SECONDS [POLL_US [PROG]]]
 *
 * TARGET   the cgroup v2 path expected in /proc/PID/cgroup ("/sub/t/g")
 * RATE     offered spawns per second (0: as fast as possible, a burst)
 * COUNT    how many processes
 * LIFETIME the argument given to PROG (default /usr/bin/sleep): seconds it lives
 * MAX_SECONDS  stop spawning after this long even if COUNT is not reached (0: never):
 *          a VM that cannot fork and exec at RATE then shows a lower achieved rate
 *          instead of running for ever
 * POLL_US  pause of the polling thread between passes (default 200): the generator
 *          must not take a whole vCPU from the daemon it measures
 *
 * Two threads: the main one spawns on schedule (posix_spawn takes tens of ms under TCG),
 * a second one polls, so the resolution of the measurement is the poll pass, not a spawn.
 *
 * Start time: when posix_spawn returns.  glibc spawns with CLONE_VFORK, so the parent
 * resumes once the child's exec has replaced its memory (exec_mmap), which is before the
 * kernel sends the exec event (proc_exec_connector): no daemon can place the process
 * before the clock starts.  The child's /proc/PID/cgroup is opened at once and read again
 * with pread at offset 0 (procfs regenerates it) on every poll pass, one syscall per
 * pending process; an exited child is looked at once more as a zombie (waitid WNOWAIT; a
 * zombie keeps its cgroup) before it is reaped.  A child never seen in TARGET is a miss.
 *
 * Output, one line per child then a summary (times in nanoseconds):
 *   P LATENCY T0     placed (T0: when its spawn returned, from the first spawn)
 *   M T0             never seen in TARGET while alive (a miss)
 *   S SPAWNED ELAPSED PASSES PASS_TOTAL SPAWN_TOTAL MAX_LATE
 * ELAPSED runs from the first spawn to the last; PASS_TOTAL / PASSES is the mean poll pass
 * (the resolution of the measurement); SPAWN_TOTAL the time spent in posix_spawn;
 * MAX_LATE how far behind its schedule the latest spawn went (the generator could not
 * offer RATE when this grows).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

struct child {
    pid_t pid;
    int fd;             /* /proc/PID/cgroup, -1 once resolved */
    int64_t t0;         /* spawn returned */
    int64_t latency;    /* -1: not (yet) seen in TARGET */
};

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static char want[4096];  /* the whole 0:: line expected */

/* 1: in TARGET, 0: elsewhere, -1: cannot read (gone) */
static int in_target(int fd) {
    char buf[4096];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n < 0)
        return -1;
    buf[n] = 0;
    /* the 0:: line: the whole file on a cgroup v2 host, the last line on a hybrid one */
    const char *line = strncmp(buf, "0::", 3) == 0 ? buf : strstr(buf, "\n0::");
    if (line != NULL && *line == '\n')
        line++;
    return line != NULL && strcmp(line, want) == 0;
}

/* shared between the spawning thread (main) and the polling thread */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct child *kids;
static long *pending;          /* indexes into kids of children not yet resolved */
static long npending, spawned, count, passes;
static int spawning_done;
static int64_t pass_total, poll_ns;

/* a child is resolved: seen in TARGET (latency set) or gone */
static void resolve(long i, int64_t latency) {
    struct child *c = &kids[pending[i]];
    c->latency = latency;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    pending[i] = pending[--npending];
}

/* The polling thread: one pass over the pending children, then the exited ones (a last
 * look as zombies, then reaped), then a short pause; its own thread so that a slow
 * posix_spawn (tens of ms under TCG) never stretches the resolution of the measurement. */
static void *poller(void *arg) {
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&mu);
        int64_t p0 = now_ns();
        for (long i = 0; i < npending;) {
            struct child *c = &kids[pending[i]];
            int r = c->fd >= 0 ? in_target(c->fd) : -1;
            if (r == 1)
                resolve(i, now_ns() - c->t0);
            else
                i++;
        }
        pass_total += now_ns() - p0;
        passes++;
        for (;;) {
            siginfo_t si;
            si.si_pid = 0;
            if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) != 0 || si.si_pid == 0)
                break;
            for (long i = 0; i < npending; i++) {
                struct child *c = &kids[pending[i]];
                if (c->pid != si.si_pid)
                    continue;
                resolve(i, c->fd >= 0 && in_target(c->fd) == 1 ? now_ns() - c->t0 : -1);
                break;
            }
            waitpid(si.si_pid, NULL, 0);
        }
        int done = spawning_done && npending == 0;
        pthread_mutex_unlock(&mu);
        if (done)
            return NULL;
        struct timespec ts = {(time_t)(poll_ns / 1000000000), (long)(poll_ns % 1000000000)};
        nanosleep(&ts, NULL);
    }
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s TARGET RATE COUNT LIFETIME [MAX_SECONDS [POLL_US [PROG]]]\n", argv[0]);
        return 2;
    }
    snprintf(want, sizeof want, "0::%s\n", argv[1]);
    double rate = atof(argv[2]);
    count = atol(argv[3]);
    int64_t max_ns = (int64_t)((argc > 5 ? atof(argv[5]) : 0) * 1e9);
    poll_ns = (argc > 6 ? atol(argv[6]) : 200) * 1000;
    char *prog = argc > 7 ? argv[7] : "/usr/bin/sleep";
    char *cargv[] = {prog, argv[4], NULL};
    kids = calloc((size_t)count, sizeof *kids);
    pending = calloc((size_t)count, sizeof *pending);
    if (!kids || !pending)
        return 3;
    int64_t spawn_total = 0, max_late = 0;
    int64_t start = now_ns(), last_spawn = start;
    int64_t period = rate > 0 ? (int64_t)(1e9 / rate) : 0;
    char path[64];
    pthread_t th;
    if (pthread_create(&th, NULL, poller, NULL) != 0)
        return 3;

    long total = count;
    for (long n = 0; n < total; n++) {
        int64_t due = start + n * period, t = now_ns();
        if (t < due) {
            struct timespec ts = {(time_t)((due - t) / 1000000000), (long)((due - t) % 1000000000)};
            nanosleep(&ts, NULL);
            t = now_ns();
        }
        if (max_ns > 0 && t - start >= max_ns)
            break;  /* out of time: what was spawned is the load */
        if (t - due > max_late)
            max_late = t - due;
        pid_t pid;
        int err = posix_spawn(&pid, prog, NULL, NULL, cargv, environ);
        int64_t t0 = now_ns();
        if (err) {
            fprintf(stderr, "posix_spawn: %s\n", strerror(err));
            return 3;
        }
        spawn_total += t0 - t;
        last_spawn = t0;
        snprintf(path, sizeof path, "/proc/%d/cgroup", (int)pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        pthread_mutex_lock(&mu);
        struct child *c = &kids[spawned];
        c->pid = pid;
        c->t0 = t0;
        c->latency = -1;
        c->fd = fd;
        pending[npending++] = spawned++;
        pthread_mutex_unlock(&mu);
    }
    pthread_mutex_lock(&mu);
    count = spawned;
    spawning_done = 1;
    pthread_mutex_unlock(&mu);
    pthread_join(th, NULL);
    /* reap whatever is left (children placed but still sleeping) */
    while (waitpid(-1, NULL, 0) > 0 || errno == EINTR)
        ;
    for (long i = 0; i < count; i++) {
        if (kids[i].latency >= 0)
            printf("P %lld %lld\n", (long long)kids[i].latency, (long long)(kids[i].t0 - start));
        else
            printf("M %lld\n", (long long)(kids[i].t0 - start));
    }
    printf("S %ld %lld %ld %lld %lld %lld\n", spawned, (long long)(last_spawn - start), passes,
           (long long)pass_total, (long long)spawn_total, (long long)max_late);
    return 0;
}
