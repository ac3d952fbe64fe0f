/* governor.placement._fastproc: placement's procfs reads on every exec event, in C
 * (optional accelerator).
 *
 * Exact equivalents of governor.placement.procfs's pure-Python readers (the fallback;
 * tests/unit/test_fastproc.py compares both on the same files):
 *
 *   proc_stat(path)     -> (comm, state, ppid, flags, starttime, num_threads) | None
 *   proc_cgroup(path)   -> the "0::" line's path | None (no such line) | False (gone)
 *   proc_children(path) -> [pid, ...] | None (gone)
 *   proc_ns(path)       -> the namespace link's inode | None (gone)
 *   pidfd_exited(fd)    -> has the process of the pidfd exited?
 *
 * Each file is read whole, whatever its length (a stack buffer first, then a heap one
 * grown as it takes), up to MAX_FILE: past it EFBIG, never a truncated text.  A vanished
 * process (ENOENT or ESRCH at open or read) is None (False for proc_cgroup); any other
 * errno raises OSError with the errno and the file's path; text not in the kernel's
 * layout raises ValueError naming the file.  Nothing is cleared.  The GIL is kept: a
 * procfs read takes microseconds.  The module keeps no state.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

#define MAX_FILE (1 << 20) /* as procfs.PROC_FILE_MAX: a file this large is an error
                            * (EFBIG), never read truncated */

static PyObject *path_error(PyObject *path) {
    PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
    return NULL;
}

/* The whole file at the path object arg, of any length below MAX_FILE: into the caller's
 * buffer stack[0:cap] when it fits, else into a heap buffer (*heap, freed by the caller
 * with PyMem_RawFree) grown as it takes; *out is where it is, NUL-terminated.  Reads
 * until a read(2) returns less than it asked (a procfs seq_file hands out whole records,
 * as procfs.Proc._read assumes too).  Returns the length, -2 when the process is gone
 * (ENOENT/ESRCH), -1 with an exception set: OSError with errno and the file name, EFBIG
 * for MAX_FILE bytes or more (procfs.PROC_FILE_MAX: the same error from Python).  On -1
 * and -2 nothing is left to free (*heap is NULL). */
static ssize_t slurp_all(PyObject *arg, char *stack, size_t cap, char **out, char **heap) {
    *heap = NULL;
    *out = stack;
    const char *path = PyUnicode_AsUTF8(arg);
    if (path == NULL)
        return -1;
    int fd;
    do
        fd = open(path, O_RDONLY | O_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        if (errno == ENOENT || errno == ESRCH)
            return -2;
        path_error(arg);
        return -1;
    }
    char *buf = stack;
    size_t len = 0, size = cap - 1; /* one byte kept for the NUL */
    ssize_t r = -1;
    for (;;) {
        ssize_t n;
        do
            n = read(fd, buf + len, size - len);
        while (n < 0 && errno == EINTR);
        if (n < 0) {
            if (errno == ENOENT || errno == ESRCH)
                r = -2;
            else
                path_error(arg);
            break;
        }
        len += (size_t)n;
        if (len >= MAX_FILE) {
            errno = EFBIG;
            path_error(arg);
            break;
        }
        if (len < size) {
            buf[len] = 0;
            *out = buf;
            r = (ssize_t)len;
            break;
        }
        size = size * 4 < MAX_FILE ? size * 4 : MAX_FILE;
        char *nb = PyMem_RawRealloc(*heap, size + 1);
        if (nb == NULL) {
            PyErr_NoMemory();
            break;
        }
        if (*heap == NULL)
            memcpy(nb, stack, len);
        *heap = buf = nb;
    }
    close(fd);
    if (r < 0) {
        PyMem_RawFree(*heap);
        *heap = NULL;
        *out = stack;
    }
    return r;
}

/* a signed decimal field of stat (ppid, flags, ...), whitespace-delimited */
static int stat_field(const char **q, const char *end, long long *out) {
    const char *p = *q;
    while (p < end && (*p == ' ' || *p == '\n'))
        p++;
    int neg = 0;
    if (p < end && *p == '-') {
        neg = 1;
        p++;
    }
    if (p >= end || *p < '0' || *p > '9')
        return -1;
    unsigned long long v = 0;
    for (; p < end && *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > ((unsigned long long)LLONG_MAX - d) / 10) /* past a long long (procfs.py) */
            return -1;
        v = v * 10 + d;
    }
    if (p < end && *p != ' ' && *p != '\n')
        return -1;
    *out = neg ? -(long long)v : (long long)v;
    *q = p;
    return 0;
}

static int skip_field(const char **q, const char *end) {
    const char *p = *q;
    while (p < end && (*p == ' ' || *p == '\n'))
        p++;
    if (p >= end)
        return -1;
    while (p < end && *p != ' ' && *p != '\n')
        p++;
    *q = p;
    return 0;
}

/* the fields parse_stat takes from the stat text buf[0:n] (buf[n] is 0), as the tuple
 * (comm, state, ppid, flags, starttime, num_threads); ValueError naming `where` */
static PyObject *stat_tuple(PyObject *where, const char *buf, ssize_t n) {
    const char *end = buf + n;
    const char *open_ = memchr(buf, '(', (size_t)n);
    const char *close_ = NULL;
    for (const char *p = end - 1; p >= buf; p--)
        if (*p == ')') {
            close_ = p;
            break;
        }
    if (open_ == NULL || close_ == NULL || close_ < open_ || close_ + 2 > end ||
        close_[1] != ' ')
        goto bad;
    const char *q = close_ + 2;
    while (q < end && *q == ' ')
        q++;
    const char *st = q;
    while (q < end && *q != ' ' && *q != '\n')
        q++;
    if (q == st)
        goto bad;
    const char *st_end = q;
    long long ppid, flags, nthreads, starttime;
    /* fields after state: 4 ppid, 5-8 skipped, 9 flags, 10-19, 20 num_threads, 21, 22 */
    int bad = stat_field(&q, end, &ppid);
    for (int i = 5; !bad && i <= 8; i++)
        bad = skip_field(&q, end);
    bad = bad || stat_field(&q, end, &flags);
    for (int i = 10; !bad && i <= 19; i++)
        bad = skip_field(&q, end);
    bad = bad || stat_field(&q, end, &nthreads) || skip_field(&q, end) ||
          stat_field(&q, end, &starttime);
    if (bad)
        goto bad;
    PyObject *state = PyUnicode_DecodeUTF8(st, st_end - st, "surrogateescape");
    if (state == NULL)
        return NULL;
    PyObject *comm = PyUnicode_DecodeUTF8(open_ + 1, close_ - open_ - 1, "surrogateescape");
    if (comm == NULL) {
        Py_DECREF(state);
        return NULL;
    }
    return Py_BuildValue("(NNLLLL)", comm, state, ppid, flags, starttime, nthreads);
bad:
    PyErr_Format(PyExc_ValueError, "%U: not the kernel's stat layout: %.200s", where, buf);
    return NULL;
}

/* proc_stat(path) -> (comm, state, ppid, flags, starttime, num_threads) | None:
 * parse_stat's fields (comm between the first "(" and the last ")") */
static PyObject *proc_stat(PyObject *self, PyObject *arg) {
    char stack[4096], *buf, *heap;
    ssize_t n = slurp_all(arg, stack, sizeof stack, &buf, &heap);
    PyObject *r;
    if (n == -1)
        r = NULL;
    else if (n == -2 || n == 0)
        r = Py_NewRef(Py_None);
    else
        r = stat_tuple(arg, buf, n);
    PyMem_RawFree(heap);
    return r;
}

/* pidfd_exited(fd) -> has the process of pidfd fd exited (poll POLLIN, no wait)? */
static PyObject *pidfd_exited(PyObject *self, PyObject *arg) {
    int fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    struct pollfd pfd = {fd, POLLIN, 0};
    int r;
    do
        r = poll(&pfd, 1, 0);
    while (r < 0 && errno == EINTR);
    if (r < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyBool_FromLong(r > 0);
}

/* proc_cgroup(path) -> the path of the "0::" line, None when there is none, False when
 * the process is gone.  Read whole whatever its length (a cgroup v1 host lists a line per
 * hierarchy, each path up to PATH_MAX: far more than one page; issue #15 item 17). */
static PyObject *proc_cgroup(PyObject *self, PyObject *arg) {
    char stack[8192], *buf, *heap;
    ssize_t n = slurp_all(arg, stack, sizeof stack, &buf, &heap);
    if (n == -1)
        return NULL;
    if (n == -2)
        Py_RETURN_FALSE;
    PyObject *r = NULL;
    const char *end = buf + n;
    for (const char *line = buf; line < end;) {
        const char *nl = memchr(line, '\n', (size_t)(end - line));
        const char *le = nl != NULL ? nl : end;
        if (le - line >= 3 && memcmp(line, "0::", 3) == 0) {
            r = PyUnicode_DecodeUTF8(line + 3, le - line - 3, "surrogateescape");
            PyMem_RawFree(heap);
            return r;
        }
        line = nl != NULL ? nl + 1 : end;
    }
    PyMem_RawFree(heap);
    Py_RETURN_NONE;
}

/* proc_children(path) -> [pid, ...] of task/TID/children | None when gone.  Read whole
 * whatever its length (a thread with 10,000 children lists 70 KiB; the old fixed 64 KiB
 * buffer handed such a file back to Python). */
static PyObject *proc_children(PyObject *self, PyObject *arg) {
    char stack[4096], *buf, *heap;
    ssize_t n = slurp_all(arg, stack, sizeof stack, &buf, &heap);
    if (n == -1)
        return NULL;
    if (n == -2)
        Py_RETURN_NONE;
    PyObject *out = PyList_New(0);
    const char *q = buf, *end = buf + n;
    while (out != NULL) {
        while (q < end && (*q == ' ' || *q == '\n'))
            q++;
        if (q >= end)
            break;
        long long v;
        if (stat_field(&q, end, &v) < 0) {
            Py_CLEAR(out);
            PyErr_Format(PyExc_ValueError, "%U: not a list of pids", arg);
            break;
        }
        PyObject *o = PyLong_FromLongLong(v);
        if (o == NULL || PyList_Append(out, o) < 0)
            Py_CLEAR(out);
        Py_XDECREF(o);
    }
    PyMem_RawFree(heap);
    return out;
}

/* proc_ns(path) -> N of the link "pid:[N]" (a namespace's inode) | None when gone.  The
 * link is read whole: readlink(2) truncates silently, so a result that fills the buffer
 * is read again into a bigger one (up to PATH_MAX: a longer link is no namespace's). */
static PyObject *proc_ns(PyObject *self, PyObject *arg) {
    const char *path = PyUnicode_AsUTF8(arg);
    if (path == NULL)
        return NULL;
    char stack[64], *buf = stack, *heap = NULL;
    size_t size = sizeof stack;
    ssize_t n;
    for (;;) {
        n = readlink(path, buf, size);
        if (n < 0) {
            PyMem_RawFree(heap);
            if (errno == ENOENT || errno == ESRCH)
                Py_RETURN_NONE;
            return path_error(arg);
        }
        if ((size_t)n < size)
            break;
        if (size >= PATH_MAX) {
            PyMem_RawFree(heap);
            errno = ENAMETOOLONG;
            return path_error(arg);
        }
        size *= 4;
        char *nb = PyMem_RawRealloc(heap, size);
        if (nb == NULL) {
            PyMem_RawFree(heap);
            return PyErr_NoMemory();
        }
        heap = buf = nb;
    }
    buf[n] = 0;
    PyObject *r = NULL;
    const char *l = strchr(buf, '['), *rb = strrchr(buf, ']');
    unsigned long long v = 0;
    int ok = l != NULL && rb != NULL && rb > l + 1;
    for (const char *p = ok ? l + 1 : rb; ok && p < rb; p++) {
        unsigned d = (unsigned)(*p - '0');
        ok = *p >= '0' && *p <= '9' && v <= (ULLONG_MAX - d) / 10;
        v = v * 10 + d;
    }
    if (ok)
        r = PyLong_FromUnsignedLongLong(v);
    else
        PyErr_Format(PyExc_ValueError, "%U: not a namespace link: %.200s", arg, buf);
    PyMem_RawFree(heap);
    return r;
}

static PyMethodDef methods[] = {
    {"proc_stat", proc_stat, METH_O,
     "proc_stat(path) -> (comm, state, ppid, flags, starttime, num_threads) | None (gone)"},
    {"pidfd_exited", pidfd_exited, METH_O, "pidfd_exited(fd) -> has its process exited?"},
    {"proc_cgroup", proc_cgroup, METH_O,
     "proc_cgroup(path) -> the 0:: line's path | None (no such line) | False (gone)"},
    {"proc_children", proc_children, METH_O, "proc_children(path) -> [pid, ...] | None (gone)"},
    {"proc_ns", proc_ns, METH_O, "proc_ns(path) -> the namespace link's inode | None (gone)"},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_fastproc",
    .m_doc = "placement's procfs reads in C (see _fastproc.c).",
    .m_size = 0, /* no state: every call takes its path */
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC PyInit__fastproc(void) { return PyModuleDef_Init(&module); }
