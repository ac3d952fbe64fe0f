/*
 * governor-launch: the launcher's client (issue #19).
 *
 *     governor-launch --tenant T --group G [--image NAME[:TAG]] [OPTIONS] -- CMD [ARGS...]
 *
 * The options are `governor launch`'s (but --config and its overrides: the launcher runs
 * with its own configuration).  A C program so that nothing but a connect(2) stands
 * between the caller and a launcher that has imported governor, loaded its configuration
 * and policy already (`governor launcher`, governor-launcher.service): the Python
 * interpreter's own start is longer than runc's whole launch in a slow VM.
 *
 * Protocol (version 1), over the launcher's unix stream socket:
 *   client -> launcher, once: "GLR1", u32 length of the body, then the body:
 *     u32 argc, u32 envc, then argc + envc NUL-terminated strings (the arguments after
 *     the program's name, then the environment); descriptors 0, 1 and 2 ride along with
 *     the first bytes (SCM_RIGHTS).  All integers in the host's byte order.
 *   client -> launcher, any time after: one byte per signal received (SIGTERM, SIGINT,
 *     SIGHUP), which the launcher forwards to the container as `governor launch` does.
 *   launcher -> client, once at the end: "X" and an i32, the exit code.
 * The client exits with that code; 125 (governor could not launch) when it cannot reach
 * the launcher or the connection ends without a code.
 *
 * The socket: $GOVERNOR_LAUNCH_SOCKET, default /run/governor/launch.sock.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define EXIT_LAUNCH_FAILED 125
#define DEFAULT_SOCKET "/run/governor/launch.sock"
#define MAGIC "GLR1"
/* the launcher refuses a larger request (governor/placement/launcher.py MAX_REQUEST) */
#define MAX_REQUEST (4u << 20)

extern char **environ;

static int sig_pipe[2] = {-1, -1};

static void on_signal(int signum) {
    int saved = errno;
    unsigned char b = (unsigned char)signum;
    ssize_t n = write(sig_pipe[1], &b, 1);
    (void)n; /* a full pipe drops the signal: 64 KiB of them are pending already */
    errno = saved;
}

static int fail(const char *fmt, const char *a, const char *b) {
    fprintf(stderr, "governor-launch: ");
    fprintf(stderr, fmt, a, b);
    fputc('\n', stderr);
    return EXIT_LAUNCH_FAILED;
}

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void put_u32(char *p, uint32_t v) { memcpy(p, &v, sizeof v); }

int main(int argc, char **argv) {
    const char *path = getenv("GOVERNOR_LAUNCH_SOCKET");
    if (path == NULL || *path == '\0')
        path = DEFAULT_SOCKET;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path)
        return fail("the launcher's socket path is too long: %s%s", path, "");
    strcpy(addr.sun_path, path);

    /* the body: argc, envc, then the strings */
    uint32_t nargs = (uint32_t)(argc - 1), nenv = 0;
    size_t size = 8;
    for (int i = 1; i < argc; i++)
        size += strlen(argv[i]) + 1;
    for (char **e = environ; e != NULL && *e != NULL; e++, nenv++)
        size += strlen(*e) + 1;
    if (size > MAX_REQUEST)
        return fail("the arguments and environment are larger than the launcher takes "
                    "(4 MiB)%s%s", "", "");
    char *req = malloc(8 + size);
    if (req == NULL)
        return fail("out of memory%s%s", "", "");
    memcpy(req, MAGIC, 4);
    put_u32(req + 4, (uint32_t)size);
    put_u32(req + 8, nargs);
    put_u32(req + 12, nenv);
    char *p = req + 16;
    for (int i = 1; i < argc; i++) {
        size_t n = strlen(argv[i]) + 1;
        memcpy(p, argv[i], n);
        p += n;
    }
    for (uint32_t i = 0; i < nenv; i++) {
        size_t n = strlen(environ[i]) + 1;
        memcpy(p, environ[i], n);
        p += n;
    }

    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0)
        return fail("socket: %s%s", strerror(errno), "");
    if (connect(sock, (struct sockaddr *)&addr, sizeof addr) != 0) {
        int err = errno;
        const char *hint = "";
        if (err == ENOENT || err == ECONNREFUSED)
            hint = " (is the launcher running? `systemctl start governor-launcher` or "
                   "`governor launcher`; `governor launch` works without it)";
        else if (err == EACCES)
            hint = " (the launcher's socket is root's: run as root)";
        fprintf(stderr, "governor-launch: cannot reach the launcher at %s: %s%s\n", path,
                strerror(err), hint);
        return EXIT_LAUNCH_FAILED;
    }

    /* descriptors 0-2 ride along with the first bytes */
    int fds[3] = {0, 1, 2};
    union {
        char buf[CMSG_SPACE(sizeof fds)];
        struct cmsghdr align;
    } ctl;
    memset(&ctl, 0, sizeof ctl);
    struct iovec iov = {.iov_base = req, .iov_len = 8 + size};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                         .msg_controllen = sizeof ctl.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(c), fds, sizeof fds);
    ssize_t sent;
    do {
        sent = sendmsg(sock, &msg, MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    if (sent < 0)
        return fail("sending the request to the launcher at %s: %s", path, strerror(errno));
    if ((size_t)sent < 8 + size && write_all(sock, req + sent, 8 + size - (size_t)sent) != 0)
        return fail("sending the request to the launcher at %s: %s", path, strerror(errno));
    free(req);

    /* the signals `governor launch` forwards go to the launcher, one byte each */
    if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
        return fail("pipe: %s%s", strerror(errno), "");
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    int forwarded[] = {SIGTERM, SIGINT, SIGHUP};
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++)
        sigaction(forwarded[i], &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    unsigned char reply[5];
    size_t got = 0;
    struct pollfd pfd[2] = {{.fd = sock, .events = POLLIN}, {.fd = sig_pipe[0], .events = POLLIN}};
    for (;;) {
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return fail("poll: %s%s", strerror(errno), "");
        }
        if (pfd[1].revents & POLLIN) {
            unsigned char sigs[64];
            ssize_t n = read(sig_pipe[0], sigs, sizeof sigs);
            if (n > 0)
                (void)write_all(sock, (const char *)sigs, (size_t)n);
        }
        if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = read(sock, reply + got, sizeof reply - got);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                fprintf(stderr, "governor-launch: the launcher ended the connection "
                                "without the command's exit code%s%s\n",
                        n < 0 ? ": " : "", n < 0 ? strerror(errno) : "");
                return EXIT_LAUNCH_FAILED;
            }
            got += (size_t)n;
            if (got == sizeof reply) {
                int32_t code;
                if (reply[0] != 'X')
                    return fail("the launcher sent something else than an exit code%s%s",
                                "", "");
                memcpy(&code, reply + 1, sizeof code);
                return (int)(code & 0xff);
            }
        }
    }
}
