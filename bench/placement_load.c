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
 * Start time: the kernel's exec event for the child, read from the process connector by a
 * thread of the generator (root; the timestamp is the kernel's CLOCK_MONOTONIC): the
 * moment any daemon can first know.  Without the connector (not root), when posix_spawn
 * returns: glibc spawns with CLONE_VFORK, so the parent resumes once the child's exec has
 * replaced its memory, but a busy VM may resume it long after the exec, and even after the
 * placement (the E line says which start was used).  The child's /proc/PID/cgroup is opened at once and read again
 * with pread at offset 0 (procfs regenerates it) on every poll pass, one syscall per
 * pending process; an exited child is looked at once more as a zombie (waitid WNOWAIT; a
 * zombie keeps its cgroup) before it is reaped.  A child never seen in TARGET is a miss.
 *
 * Output, one line per child then a summary (times in nanoseconds):
 *   B START          CLOCK_MONOTONIC at the first spawn (to line events up with a daemon's)
 *   P LATENCY T0 PID placed (T0: when its spawn returned, from START)
 *   M T0 PID         never seen in TARGET while alive (a miss)
 *   E FROM_EXEC CONNECTOR  how many latencies run from the kernel's exec event (the rest
 *                    from the spawn's return); CONNECTOR 1 when the connector was open
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
#include <sys/socket.h>
#include <sys/wait.h>
#include <linux/netlink.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

struct child {
    pid_t pid;
    int fd;             /* /proc/PID/cgroup, -1 once resolved */
    int64_t t0;         /* spawn returned */
    int64_t seen;       /* first seen in TARGET (0: never) */
    int64_t latency;    /* -1: not (yet) seen in TARGET */
};

/* The kernel's own exec time of each child, from the process connector (the same events
 * the daemons get; CLOCK_MONOTONIC, ktime_get_ns): a child's latency runs from it, not
 * from the spawn's return, which a busy VM may delay past the placement.  Indexed by pid
 * modulo the table size, tagged with the pid. */
#define EXEC_SLOTS 65536
static int64_t exec_ts[EXEC_SLOTS];
static pid_t exec_pid[EXEC_SLOTS];
static pthread_mutex_t exec_mu = PTHREAD_MUTEX_INITIALIZER;

static int connector_open(void) {
    int s = socket(AF_NETLINK, SOCK_DGRAM, NETLINK_CONNECTOR);
    if (s < 0)
        return -1;
    struct sockaddr_nl sa = {.nl_family = AF_NETLINK, .nl_groups = 1 /* CN_IDX_PROC */};
    if (bind(s, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(s);
        return -1;
    }
    /* nlmsghdr, cn_msg {idx 1, val 1, seq, ack, len 4, flags}, PROC_CN_MCAST_LISTEN */
    struct {
        struct nlmsghdr h;
        uint32_t idx, val, seq, ack;
        uint16_t len, flags;
        uint32_t op;
    } __attribute__((packed)) m = {{sizeof m, NLMSG_DONE, 0, 0, (uint32_t)getpid()},
                                   1, 1, 0, 0, 4, 0, 1};
    if (send(s, &m, sizeof m, 0) != (ssize_t)sizeof m) {
        close(s);
        return -1;
    }
    return s;
}

static void *exec_listener(void *arg) {
    int s = *(int *)arg;
    char buf[8192];
    for (;;) {
        ssize_t n = recv(s, buf, sizeof buf, 0);
        if (n < 0) {
            if (errno == EINTR || errno == ENOBUFS)
                continue;
            return NULL;
        }
        for (ssize_t off = 0; off + 16 <= n;) {
            uint32_t len, what, pid;
            uint64_t ts;
            memcpy(&len, buf + off, 4);
            if (len < 16 || off + (ssize_t)len > n)
                break;
            if (len >= 60) {
                memcpy(&what, buf + off + 36, 4);
                memcpy(&ts, buf + off + 44, 8);
                memcpy(&pid, buf + off + 56, 4); /* exec: process_pid, process_tgid */
                if (what == 2 /* PROC_EVENT_EXEC */) {
                    pthread_mutex_lock(&exec_mu);
                    exec_ts[pid % EXEC_SLOTS] = (int64_t)ts;
                    exec_pid[pid % EXEC_SLOTS] = (pid_t)pid;
                    pthread_mutex_unlock(&exec_mu);
                }
            }
            off += (len + 3) & ~3u;
        }
    }
}

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
            if (r == 1) {
                c->seen = now_ns();
                resolve(i, c->seen - c->t0);
            }
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
                int in = c->fd >= 0 && in_target(c->fd) == 1;
                if (in)
                    c->seen = now_ns();
                resolve(i, in ? c->seen - c->t0 : -1);
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
    pthread_t th, lt;
    static int csock;
    csock = connector_open();  /* root only: without it latencies run from the spawn */
    if (csock >= 0) {
        if (pthread_create(&lt, NULL, exec_listener, &csock) != 0)
            return 3;
        struct timespec settle = {0, 50000000};  /* the subscription takes effect */
        nanosleep(&settle, NULL);
    }
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
    printf("B %lld\n", (long long)start);
    long from_exec = 0;
    pthread_mutex_lock(&exec_mu);
    for (long i = 0; i < count; i++) {
        struct child *c = &kids[i];
        int slot = c->pid % EXEC_SLOTS;
        /* the kernel's exec time of this pid around its spawn (the parent may resume just
         * before the kernel sends the event: a vfork parent wakes at exec_mmap) */
        if (c->latency >= 0 && exec_pid[slot] == c->pid &&
            llabs(c->t0 - exec_ts[slot]) < 10000000000LL) {
            c->latency = c->seen - exec_ts[slot];
            from_exec++;
        }
    }
    pthread_mutex_unlock(&exec_mu);
    for (long i = 0; i < count; i++) {
        if (kids[i].latency >= 0)
            printf("P %lld %lld %d\n", (long long)kids[i].latency,
                   (long long)(kids[i].t0 - start), (int)kids[i].pid);
        else
            printf("M %lld %d\n", (long long)(kids[i].t0 - start), (int)kids[i].pid);
    }
    printf("E %ld %d\n", from_exec, csock >= 0);
    printf("S %ld %lld %ld %lld %lld %lld\n", spawned, (long long)(last_spawn - start), passes,
           (long long)pass_total, (long long)spawn_total, (long long)max_late);
    return 0;
}
