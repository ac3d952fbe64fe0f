/* governor.cgroupfs._keepwarm: keep_warm's writer thread (optional accelerator).
 *
 * governor.cgroupfs.keepwarm.MigrationWarmer's background mode.  After a move, the placement
 * listener sets a deadline; until then this thread writes its own tid to the
 * cgroup.threads fd it was given (the cgroup this process is in) every interval, so the
 * kernel's cgroup_threadgroup_rwsem stays in its writer mode and the next move does not
 * wait for an RCU grace period (see keepwarm.MigrationWarmer).  A POSIX thread, not a Python
 * one: it never takes the GIL, so hundreds of wakes a second cost the listener nothing and
 * the process only the write itself.  Its pure-Python twin is MigrationWarmer.touch (the
 * listener writes itself); tests/unit/test_keepwarm.py runs both.
 *
 *   warm_start(fd, interval_ns) -> tid     the thread started once; fd dup'ed, replacing
 *   warm_until(deadline_ns)                a move just happened: write until then
 *   warm_stats() -> (writes, errors, errno of the last refused write, tid)
 *   warm_stop()                            stop and join the thread, close its fd
 *
 * Everything lives in the module's state (PEP 489), one thread per module object; the
 * module's m_free stops and joins it.  The mutex guards the state only: it is never held
 * across the write(2), which takes the threadgroup rwsem and may wait for an RCU grace
 * period (milliseconds): warm_until() and warm_stats(), called by the listener with the
 * GIL held, never wait for a write.  The fd is the thread's own (a dup); while a write is
 * under way (`writing`), warm_start() and warm_stop() wait for it before closing that fd,
 * so no write ever goes to a closed or reused descriptor.  A refused write stops the
 * writes (deadline cleared) and is reported by warm_stats(); warm_start() with a new fd,
 * or the next warm_until(), goes on.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int ready;            /* the mutex and the condition variable are initialised */
    pthread_mutex_t mu;
    pthread_cond_t cv;    /* on CLOCK_MONOTONIC */
    pthread_t thread;
    int running, stop, fd, writing;
    long tid;
    int64_t interval, deadline, last; /* CLOCK_MONOTONIC ns */
    unsigned long long writes, errors;
    int err;
} warm_state;

static warm_state *state_of(PyObject *module) { return PyModule_GetState(module); }

static int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void *warm_main(void *arg) {
    warm_state *w = arg;
    sigset_t all; /* signals are for the interpreter's threads, never this one */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    char buf[24];
    long tid = (long)syscall(SYS_gettid);
    int n = snprintf(buf, sizeof buf, "%ld", tid);
    pthread_mutex_lock(&w->mu);
    w->tid = tid;
    pthread_cond_broadcast(&w->cv);
    while (!w->stop) {
        int64_t now = mono_ns();
        if (w->fd < 0 || now >= w->deadline) {
            pthread_cond_wait(&w->cv, &w->mu);
            continue;
        }
        int64_t next = w->last + w->interval;
        if (now < next) {
            struct timespec ts = {(time_t)(next / 1000000000), (long)(next % 1000000000)};
            pthread_cond_timedwait(&w->cv, &w->mu, &ts);
            continue;
        }
        int fd = w->fd; /* not closed while writing is set: see warm_start, warm_stop */
        w->writing = 1;
        pthread_mutex_unlock(&w->mu);
        ssize_t r = write(fd, buf, (size_t)n);
        int e = errno;
        pthread_mutex_lock(&w->mu);
        w->writing = 0;
        pthread_cond_broadcast(&w->cv); /* a warm_start or warm_stop waiting for it */
        w->last = mono_ns();
        if (r >= 0) {
            w->writes++;
        } else if (e != EINTR) {
            w->err = e;
            w->errors++;
            w->deadline = 0;
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* with w->mu held: until the thread is not in a write(2) */
static void wait_write(warm_state *w) {
    while (w->writing)
        pthread_cond_wait(&w->cv, &w->mu);
}

static PyObject *warm_start(PyObject *module, PyObject *args) {
    warm_state *w = state_of(module);
    int fd;
    long long interval;
    if (!PyArg_ParseTuple(args, "iL", &fd, &interval))
        return NULL;
    if (interval <= 0) {
        PyErr_SetString(PyExc_ValueError, "warm_start: the interval must be positive");
        return NULL;
    }
    int mine = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (mine < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    long tid;
    int rc = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&w->mu);
    wait_write(w); /* the old fd may be the one being written to */
    int old = w->fd;
    w->fd = mine;
    w->interval = interval;
    w->err = 0;
    if (!w->running) {
        w->stop = 0;
        w->tid = 0;
        w->deadline = 0;
        rc = pthread_create(&w->thread, NULL, warm_main, w);
        if (rc == 0) {
            w->running = 1;
            while (w->tid == 0)
                pthread_cond_wait(&w->cv, &w->mu);
        } else {
            w->fd = -1;
        }
    }
    pthread_cond_broadcast(&w->cv);
    tid = w->tid;
    pthread_mutex_unlock(&w->mu);
    if (old >= 0 && old != mine)
        close(old);
    if (rc != 0)
        close(mine);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(tid);
}

static PyObject *warm_until(PyObject *module, PyObject *arg) {
    warm_state *w = state_of(module);
    long long deadline = PyLong_AsLongLong(arg);
    if (deadline == -1 && PyErr_Occurred())
        return NULL;
    /* the mutex is only ever held for a few loads and stores (never across a write):
     * taken with the GIL held, it cannot keep the listener waiting */
    pthread_mutex_lock(&w->mu);
    int64_t now = mono_ns();
    w->last = now; /* called right after a move: that write counts */
    if (deadline > w->deadline || w->deadline <= now) {
        int wake = w->deadline <= now;
        w->deadline = deadline;
        if (wake)
            pthread_cond_broadcast(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    Py_RETURN_NONE;
}

static PyObject *warm_stats(PyObject *module, PyObject *unused) {
    warm_state *w = state_of(module);
    pthread_mutex_lock(&w->mu);
    unsigned long long writes = w->writes, errors = w->errors;
    int err = w->err;
    long tid = w->running ? w->tid : 0;
    pthread_mutex_unlock(&w->mu);
    return Py_BuildValue("(KKil)", writes, errors, err, tid);
}

/* stop and join the thread, close its fd (the GIL released by the caller, or not needed:
 * the thread never takes it) */
static void stop_thread(warm_state *w) {
    pthread_mutex_lock(&w->mu);
    int running = w->running;
    w->stop = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (running)
        pthread_join(w->thread, NULL); /* (it finishes a write under way first) */
    pthread_mutex_lock(&w->mu);
    w->running = 0;
    w->deadline = 0;
    if (w->fd >= 0)
        close(w->fd);
    w->fd = -1;
    pthread_mutex_unlock(&w->mu);
}

static PyObject *warm_stop(PyObject *module, PyObject *unused) {
    warm_state *w = state_of(module);
    Py_BEGIN_ALLOW_THREADS
    stop_thread(w);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static int exec_module(PyObject *module) {
    warm_state *w = state_of(module);
    pthread_condattr_t ca;
    int rc = pthread_condattr_init(&ca);
    if (rc == 0) {
        rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        if (rc == 0)
            rc = pthread_cond_init(&w->cv, &ca);
        pthread_condattr_destroy(&ca);
    }
    if (rc == 0 && (rc = pthread_mutex_init(&w->mu, NULL)) != 0)
        pthread_cond_destroy(&w->cv);
    if (rc != 0) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    w->fd = -1; /* (the state starts zeroed: fd 0 is stdin, never ours) */
    w->ready = 1;
    return 0;
}

static void free_module(void *module) {
    warm_state *w = state_of(module);
    if (w == NULL || !w->ready)
        return;
    stop_thread(w);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    w->ready = 0;
}

static PyMethodDef methods[] = {
    {"warm_start", warm_start, METH_VARARGS,
     "warm_start(fd, interval_ns) -> tid of the keep-warm thread (started once; the fd is "
     "dup'ed, and replaces the one it had)"},
    {"warm_until", warm_until, METH_O,
     "warm_until(deadline_ns) -> None: a move just happened; write until CLOCK_MONOTONIC "
     "deadline_ns"},
    {"warm_stats", warm_stats, METH_NOARGS,
     "warm_stats() -> (writes, errors, errno of the last failed write (0: none since "
     "warm_start), tid (0: not running))"},
    {"warm_stop", warm_stop, METH_NOARGS, "warm_stop() -> None: stop and join the thread"},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_keepwarm",
    .m_doc = "keep_warm's writer thread in C (see _keepwarm.c).",
    .m_size = sizeof(warm_state),
    .m_methods = methods,
    .m_slots = slots,
    .m_free = free_module,
};

PyMODINIT_FUNC PyInit__keepwarm(void) { return PyModuleDef_Init(&module); }
