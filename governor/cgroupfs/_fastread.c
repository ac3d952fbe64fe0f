/* governor.cgroupfs._fastread: the sampler's hot path in C (optional accelerator).
 *
 * Two functions, each an exact equivalent of pure-Python code that stays the fallback
 * (tests/unit/test_fastread.py runs both over the same inputs and compares):
 *
 *   read_fast(fds, cache, cgroup_id) -> GroupStats
 *       StatReader.read's hot path (governor/cgroupfs/reader.py): one pread per cached
 *       descriptor of FAST_FILES (-1: absent, None) into one buffer reused for every file
 *       (Python's os.pread allocates a 64 KiB bytes object per call), parsed in place.
 *       Only text in the kernel's exact layout is parsed here (the layouts the regular
 *       expressions of governor/cgroupfs/parse.py match); any other text goes, as bytes,
 *       to the Python parser configured for that file, so values and errors are those of
 *       the Python path by construction.  A pread error raises OSError (errno set): the
 *       caller retries through its per-file path, which names the file and maps ENODEV /
 *       ENOENT to GroupGone.  The GIL is kept: a pread of a cgroup file takes
 *       microseconds, and dropping the GIL per group would cost the pass up to the switch
 *       interval (5 ms) per group whenever another thread is busy in Python.
 *
 *   to_sample(st, node, path, started, t0, mono, created) -> GroupSample
 *       governor.metering.sampler.to_sample of the same GroupStats with
 *       wall = started + timedelta(seconds=mono - t0) and storage_bytes None (the pass
 *       sets it later); anything it does not handle (a mapping that is not a dict, a
 *       pressure resource other than cpu/memory/io) is passed to the Python to_sample.
 *
 * Objects are built the way GroupSample's fast constructor in sampler.py builds them:
 * allocated by their type, each __slots__ member set through its member descriptor (the
 * frozen dataclasses' __setattr__ is bypassed, as object.__setattr__ does in their
 * __init__).  configure_reader() and configure_sample() hand over the classes, field
 * names and Python fallbacks once (reader.py and sampler.py, at import).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define BUF 65536 /* as reader._BUF: what the first pread of a file asks for */
#define MAX_FILE (1 << 20) /* as reader.MAX_FILE and procfs.PROC_FILE_MAX: a file this
                            * large is an error (EFBIG), never read truncated */
#define MAX_FILES 16
#define MAX_FIELDS 40

enum { K_FLAT = 0, K_INT = 1, K_IO = 2, K_PSI = 3 };

/* the fast files: kind, GroupStats field index (or pressure key), Python fallback */
static int n_files;
static int f_kind[MAX_FILES];
static int f_field[MAX_FILES];
static PyObject *f_key[MAX_FILES];  /* pressure resource name (str) for K_PSI */
static PyObject *f_fallback[MAX_FILES];

static PyTypeObject *stats_type;
static PyObject *stats_descr[MAX_FIELDS];
static int n_stats_fields, stats_id_field, stats_psi_field;

static PyTypeObject *psi_type, *psiline_type;
static PyObject *psi_descr[2], *psiline_descr[4];

static PyTypeObject *sample_type;
static PyObject *sample_descr[MAX_FIELDS];
static int n_sample_fields;
static PyObject *py_to_sample;

/* interned names */
static PyObject *s_cpu, *s_memory_current, *s_memory_peak, *s_swap_current, *s_memory_events,
    *s_memory_stat, *s_io, *s_pids_current, *s_psi, *s_cgroup_id, *s_some, *s_full, *s_total,
    *s_post_init;
static PyObject *k_cpu[6], *k_ev[6], *k_ms[5], *k_io[5], *k_psi_res[3], *k_psi_names[3][2];
static PyObject *k_io_line[6];

static const char *CPU_KEYS[6] = {"usage_usec", "user_usec", "system_usec", "nr_periods",
                                  "nr_throttled", "throttled_usec"};
static const char *EV_KEYS[6] = {"low", "high", "max", "oom", "oom_kill", "oom_group_kill"};
static const char *MS_KEYS[5] = {"anon", "file", "kernel", "sock", "shmem"};
static const char *IO_KEYS[6] = {"rbytes", "wbytes", "rios", "wios", "dbytes", "dios"};
static const char *PSI_RES[3] = {"cpu", "memory", "io"};

static int reader_ready, sample_ready;
#define N_SAMPLE_FIELDS 31

/* ---- building slotted objects ------------------------------------------------------- */

/* A new instance of ``type`` with its members set from values[0:n] through descr[0:n]
 * (values are borrowed).  No __init__: the callers' classes are slotted dataclasses. */
/* an aware datetime whose tzinfo is datetime.UTC itself: what __post_init__ accepts first */
static int utc_datetime(PyObject *dt) {
    return PyDateTime_Check(dt) && ((PyDateTime_DateTime *)dt)->hastzinfo &&
           ((PyDateTime_DateTime *)dt)->tzinfo == PyDateTime_TimeZone_UTC;
}

static PyObject *new_slotted(PyTypeObject *type, PyObject **descr, PyObject **values, int n) {
    PyObject *obj = type->tp_alloc(type, 0);
    if (obj == NULL)
        return NULL;
    for (int i = 0; i < n; i++) {
        if (Py_TYPE(descr[i])->tp_descr_set(descr[i], obj, values[i]) < 0) {
            Py_DECREF(obj);
            return NULL;
        }
    }
    return obj;
}

/* ---- parsing the kernel's exact layouts (return 1: parsed, 0: not this layout) --------- */

/* digits p[0:n] (n >= 1) as a Python int */
static PyObject *int_of(const char *p, Py_ssize_t n) {
    if (n <= 18) {
        long long v = 0;
        for (Py_ssize_t i = 0; i < n; i++)
            v = v * 10 + (p[i] - '0');
        return PyLong_FromLongLong(v);
    }
    char tmp[64];
    if (n >= (Py_ssize_t)sizeof tmp) { /* absurdly long: let Python do it */
        PyObject *s = PyUnicode_FromStringAndSize(p, n);
        if (s == NULL)
            return NULL;
        PyObject *r = PyLong_FromUnicodeObject(s, 10);
        Py_DECREF(s);
        return r;
    }
    memcpy(tmp, p, n);
    tmp[n] = 0;
    return PyLong_FromString(tmp, NULL, 10);
}

/* the length of the run of digits at p; 0 past 4,000 digits, so that such text is "not
 * this layout" and goes to the Python parser (int() refuses 4,300 digits: its ParseError,
 * not a bare ValueError from here) */
static Py_ssize_t digits(const char *p, const char *end) {
    const char *q = p;
    while (q < end && *q >= '0' && *q <= '9')
        q++;
    return q - p > 4000 ? 0 : q - p;
}

/* ``DIGITS\n`` */
static int parse_int_exact(const char *p, Py_ssize_t n, PyObject **out) {
    Py_ssize_t d = digits(p, p + n);
    if (d == 0 || d + 1 != n || p[d] != '\n')
        return 0;
    *out = int_of(p, d);
    return *out == NULL ? -1 : 1;
}

/* The str of key k[0:n] (ASCII): the one made last time at position j of this file's
 * key cache when the bytes are the same (every group's cpu.stat has the same keys in the
 * same order), else a new one, kept there for the next group. */
#define MAX_KEYS 64
static PyObject *key_cache[MAX_FILES][MAX_KEYS];

static PyObject *key_str(int file, Py_ssize_t j, const char *k, Py_ssize_t n) {
    PyObject **slot = j < MAX_KEYS ? &key_cache[file][j] : NULL;
    if (slot && *slot && PyUnicode_GET_LENGTH(*slot) == n &&
        memcmp(PyUnicode_DATA(*slot), k, n) == 0)
        return Py_NewRef(*slot);
    PyObject *key = PyUnicode_FromStringAndSize(k, n);
    if (key != NULL && slot)
        Py_XSETREF(*slot, Py_NewRef(key));
    return key;
}

/* ``KEY DIGITS\n`` lines, KEY printable ASCII without spaces (empty text: {}) */
static int parse_flat_exact(int file, const char *p, Py_ssize_t n, PyObject **out) {
    const char *end = p + n, *q = p;
    /* validate first, so no object is made for text that goes to the fallback */
    while (q < end) {
        const char *k = q;
        while (q < end && *q > ' ' && *q < 127)
            q++;
        if (q == k || q == end || *q != ' ')
            return 0;
        q++;
        Py_ssize_t d = digits(q, end);
        if (d == 0 || q + d >= end || q[d] != '\n')
            return 0;
        q += d + 1;
    }
    PyObject *dict = PyDict_New();
    if (dict == NULL)
        return -1;
    q = p;
    for (Py_ssize_t j = 0; q < end; j++) {
        const char *k = q;
        while (*q != ' ')
            q++;
        PyObject *key = key_str(file, j, k, q - k);
        q++;
        Py_ssize_t d = digits(q, end);
        PyObject *val = int_of(q, d);
        q += d + 1;
        if (key == NULL || val == NULL || PyDict_SetItem(dict, key, val) < 0) {
            Py_XDECREF(key);
            Py_XDECREF(val);
            Py_DECREF(dict);
            return -1;
        }
        Py_DECREF(key);
        Py_DECREF(val);
    }
    *out = dict;
    return 1;
}

static int expect(const char **q, const char *end, const char *lit) {
    size_t l = strlen(lit);
    if ((size_t)(end - *q) < l || memcmp(*q, lit, l) != 0)
        return 0;
    *q += l;
    return 1;
}

/* ``MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N\n`` lines (empty text: {}) */
static int parse_io_exact(int file, const char *p, Py_ssize_t n, PyObject **out) {
    static const char *LIT[6] = {" rbytes=", " wbytes=", " rios=", " wios=", " dbytes=",
                                 " dios="};
    const char *end = p + n, *q = p;
    while (q < end) {
        Py_ssize_t d = digits(q, end);
        if (d == 0 || q + d >= end || q[d] != ':')
            return 0;
        q += d + 1;
        d = digits(q, end);
        if (d == 0)
            return 0;
        q += d;
        for (int i = 0; i < 6; i++) {
            if (!expect(&q, end, LIT[i]))
                return 0;
            d = digits(q, end);
            if (d == 0)
                return 0;
            q += d;
        }
        if (q >= end || *q != '\n')
            return 0;
        q++;
    }
    PyObject *dict = PyDict_New();
    if (dict == NULL)
        return -1;
    q = p;
    for (Py_ssize_t j = 0; q < end; j++) {
        const char *dev = q;
        q += digits(q, end) + 1;
        q += digits(q, end);
        PyObject *key = key_str(file, j, dev, q - dev);
        PyObject *c = PyDict_New();
        if (key == NULL || c == NULL)
            goto fail_line;
        for (int i = 0; i < 6; i++) {
            q += strlen(LIT[i]);
            Py_ssize_t d = digits(q, end);
            PyObject *v = int_of(q, d);
            q += d;
            if (v == NULL || PyDict_SetItem(c, k_io_line[i], v) < 0) {
                Py_XDECREF(v);
                goto fail_line;
            }
            Py_DECREF(v);
        }
        q++;
        if (PyDict_SetItem(dict, key, c) < 0)
            goto fail_line;
        Py_DECREF(key);
        Py_DECREF(c);
        continue;
    fail_line:
        Py_XDECREF(key);
        Py_XDECREF(c);
        Py_DECREF(dict);
        return -1;
    }
    *out = dict;
    return 1;
}

/* `` avg10=D.D avg60=D.D avg300=D.D total=N\n`` after "some"/"full": 3 floats, 1 int
 * (1: parsed, 0: not this layout, -1: an exception is set) */
static int psi_line(const char **qp, const char *end, double avg[3], const char **tot,
                    Py_ssize_t *ntot) {
    static const char *LIT[3] = {" avg10=", " avg60=", " avg300="};
    const char *q = *qp;
    for (int i = 0; i < 3; i++) {
        if (!expect(&q, end, LIT[i]))
            return 0;
        const char *s = q;
        Py_ssize_t d = digits(q, end);
        if (d == 0 || q + d >= end || q[d] != '.')
            return 0;
        q += d + 1;
        d = digits(q, end);
        if (d == 0)
            return 0;
        q += d;
        /* the same conversion as Python's float() of the same characters */
        char tmp[64];
        if (q - s >= (Py_ssize_t)sizeof tmp)
            return 0;
        memcpy(tmp, s, q - s);
        tmp[q - s] = 0;
        char *stop;
        avg[i] = PyOS_string_to_double(tmp, &stop, NULL);
        if (avg[i] == -1.0 && PyErr_Occurred()) {
            /* not a float after all: the Python parser decides; anything else (no
             * memory) is raised */
            if (!PyErr_ExceptionMatches(PyExc_ValueError))
                return -1;
            PyErr_Clear();
            return 0;
        }
        if (*stop)
            return 0;
    }
    if (!expect(&q, end, " total="))
        return 0;
    Py_ssize_t d = digits(q, end);
    if (d == 0 || q + d >= end || q[d] != '\n')
        return 0;
    *tot = q;
    *ntot = d;
    *qp = q + d + 1;
    return 1;
}

static PyObject *new_psiline(double avg[3], const char *tot, Py_ssize_t ntot) {
    PyObject *v[4] = {PyFloat_FromDouble(avg[0]), PyFloat_FromDouble(avg[1]),
                      PyFloat_FromDouble(avg[2]), int_of(tot, ntot)};
    PyObject *r = NULL;
    if (v[0] && v[1] && v[2] && v[3])
        r = new_slotted(psiline_type, psiline_descr, v, 4);
    for (int i = 0; i < 4; i++)
        Py_XDECREF(v[i]);
    return r;
}

/* ``some ...\n`` then optionally ``full ...\n``, nothing else */
static int parse_psi_exact(const char *p, Py_ssize_t n, PyObject **out) {
    const char *end = p + n, *q = p, *tot[2];
    double avg[2][3];
    Py_ssize_t ntot[2];
    int lines = 1, r;
    if (!expect(&q, end, "some"))
        return 0;
    if ((r = psi_line(&q, end, avg[0], &tot[0], &ntot[0])) <= 0)
        return r;
    if (q < end) {
        if (!expect(&q, end, "full"))
            return 0;
        if ((r = psi_line(&q, end, avg[1], &tot[1], &ntot[1])) <= 0)
            return r;
        if (q != end)
            return 0;
        lines = 2;
    }
    PyObject *v[2] = {new_psiline(avg[0], tot[0], ntot[0]), Py_None};
    Py_INCREF(Py_None);
    if (v[0] != NULL && lines == 2) {
        Py_DECREF(Py_None);
        v[1] = new_psiline(avg[1], tot[1], ntot[1]);
    }
    PyObject *res = NULL;
    if (v[0] && v[1])
        res = new_slotted(psi_type, psi_descr, v, 2);
    Py_XDECREF(v[0]);
    Py_XDECREF(v[1]);
    if (res == NULL)
        return -1;
    *out = res;
    return 1;
}

/* ---- read_fast -------------------------------------------------------------------------- */

static PyObject *parse_file(int i, const char *data, Py_ssize_t n) {
    PyObject *out = NULL;
    int r;
    switch (f_kind[i]) {
    case K_FLAT: r = parse_flat_exact(i, data, n, &out); break;
    case K_INT: r = parse_int_exact(data, n, &out); break;
    case K_IO: r = parse_io_exact(i, data, n, &out); break;
    default: r = parse_psi_exact(data, n, &out); break;
    }
    if (r < 0)
        return NULL;
    if (r > 0)
        return out;
    /* not the exact layout: the Python parser decides (same value or same error) */
    PyObject *b = PyBytes_FromStringAndSize(data, n);
    if (b == NULL)
        return NULL;
    out = PyObject_CallOneArg(f_fallback[i], b);
    Py_DECREF(b);
    return out;
}

/* A value to hand out from a cached one: dicts (flat keyed, io.stat and its devices) are
 * copied, anything else (int, Psi: immutable) is shared. */
static PyObject *fresh(PyObject *v) {
    if (!PyDict_CheckExact(v))
        return Py_NewRef(v);
    PyObject *d = PyDict_Copy(v);
    if (d == NULL)
        return NULL;
    Py_ssize_t pos = 0;
    PyObject *k, *inner;
    while (PyDict_Next(v, &pos, &k, &inner)) {
        if (!PyDict_CheckExact(inner))
            continue;
        PyObject *c = PyDict_Copy(inner);
        if (c == NULL || PyDict_SetItem(d, k, c) < 0) {
            Py_XDECREF(c);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(c);
    }
    return d;
}

static PyObject *do_read(PyObject *fds, PyObject *cache, PyObject *cgroup_id) {
    if (!PyTuple_Check(fds) || !PyList_Check(cache)) {
        PyErr_SetString(PyExc_TypeError, "read_fast(tuple, list, id)");
        return NULL;
    }
    if (PyTuple_GET_SIZE(fds) != n_files) {
        PyErr_Format(PyExc_ValueError, "read_fast takes %d descriptors", n_files);
        return NULL;
    }
    if (PyList_GET_SIZE(cache) != n_files) {
        PyErr_Format(PyExc_ValueError, "read_fast takes a cache list of %d", n_files);
        return NULL;
    }
    int fd[MAX_FILES];
    for (int i = 0; i < n_files; i++) {
        long v = PyLong_AsLong(PyTuple_GET_ITEM(fds, i));
        if (v == -1 && PyErr_Occurred())
            return NULL;
        fd[i] = (int)v;
    }
    PyObject *values[MAX_FIELDS] = {NULL};
    PyObject *psi = PyDict_New();
    /* one static buffer; a nested call (a Python parser or a finalizer run meanwhile that
     * reads again, in this thread or another one) gets its own */
    static char static_buf[BUF];
    static int static_busy;
    int own = static_busy;
    char *buf = own ? PyMem_RawMalloc(BUF) : static_buf;
    static_busy = 1;
    PyObject *result = NULL;
    char *big = NULL; /* a heap buffer for a file larger than BUF (rare: io.stat of
                       * hundreds of devices), as big as it took */
    if (psi == NULL || buf == NULL) {
        if (buf == NULL)
            PyErr_NoMemory();
        goto done;
    }
    for (int i = 0; i < n_files; i++) {
        if (fd[i] < 0)
            continue;
        ssize_t n;
        char *data = buf;
        do
            n = pread(fd[i], buf, BUF, 0);
        while (n < 0 && errno == EINTR); /* as os.pread (PEP 475) */
        for (size_t size = BUF; n == (ssize_t)size;) {
            /* the buffer is full: the file may go on.  Read it whole again, into bigger
             * buffers (reader._whole does the same), up to MAX_FILE: past that, EFBIG */
            if (size >= MAX_FILE) {
                errno = EFBIG;
                n = -1;
                break;
            }
            size = size * 8 < MAX_FILE ? size * 8 : MAX_FILE;
            char *nb = PyMem_RawRealloc(big, size);
            if (nb == NULL) {
                PyErr_NoMemory();
                goto done;
            }
            big = data = nb;
            do
                n = pread(fd[i], big, size, 0);
            while (n < 0 && errno == EINTR);
        }
        if (n < 0) {
            /* the caller (reader.py) reads the group again file by file and names it */
            PyErr_SetFromErrno(PyExc_OSError);
            goto done;
        }
        /* the unchanged text of a file is not parsed again: its value is the one parsed
         * last time (immutable ints and Psi shared, dicts copied: every GroupStats has
         * its own); reader.py's Python path does the same for the pressure files */
        PyObject *last = PyList_GET_ITEM(cache, i), *v;
        if (PyTuple_CheckExact(last) && PyTuple_GET_SIZE(last) == 2 &&
            PyBytes_CheckExact(PyTuple_GET_ITEM(last, 0)) &&
            PyBytes_GET_SIZE(PyTuple_GET_ITEM(last, 0)) == n &&
            memcmp(PyBytes_AS_STRING(PyTuple_GET_ITEM(last, 0)), data, n) == 0) {
            Py_INCREF(last); /* held: a copy may run a finalizer that replaces it */
            v = fresh(PyTuple_GET_ITEM(last, 1));
            Py_DECREF(last);
            if (v == NULL)
                goto done;
        } else {
            PyObject *b = PyBytes_FromStringAndSize(data, n);
            if (b == NULL)
                goto done;
            PyObject *parsed = parse_file(i, data, n);
            PyObject *entry = parsed == NULL ? NULL : PyTuple_Pack(2, b, parsed);
            Py_DECREF(b);
            v = entry == NULL ? NULL : fresh(parsed);
            Py_XDECREF(parsed);
            if (v == NULL) {
                Py_XDECREF(entry);
                goto done;
            }
            /* (the parser may have run Python code: the list's item, not last, goes) */
            if (PyList_SetItem(cache, i, entry) < 0) {
                Py_DECREF(v);
                goto done;
            }
        }
        if (f_kind[i] == K_PSI) {
            int e = PyDict_SetItem(psi, f_key[i], v);
            Py_DECREF(v);
            if (e < 0)
                goto done;
        } else {
            Py_XSETREF(values[f_field[i]], v);
        }
    }
    for (int j = 0; j < n_stats_fields; j++)
        if (values[j] == NULL)
            values[j] = Py_NewRef(Py_None);
    Py_SETREF(values[stats_id_field], Py_NewRef(cgroup_id));
    Py_SETREF(values[stats_psi_field], Py_NewRef(psi));
    result = new_slotted(stats_type, stats_descr, values, n_stats_fields);
done:
    for (int j = 0; j < n_stats_fields; j++)
        Py_XDECREF(values[j]);
    Py_XDECREF(psi);
    PyMem_RawFree(big);
    if (own)
        PyMem_RawFree(buf);
    else
        static_busy = 0;
    return result;
}

static PyObject *read_fast(PyObject *self, PyObject *args) {
    PyObject *fds, *cache, *cgroup_id;
    if (!PyArg_ParseTuple(args, "O!O!O", &PyTuple_Type, &fds, &PyList_Type, &cache, &cgroup_id))
        return NULL;
    if (!reader_ready) {
        PyErr_SetString(PyExc_RuntimeError, "_fastread.configure_reader() was not called");
        return NULL;
    }
    return do_read(fds, cache, cgroup_id);
}

/* ---- to_sample ------------------------------------------------------------------------ */

/* a dict (or None) attribute of st; 0 and *fallback = 1 when it is another type */
static int get_dict(PyObject *st, PyObject *name, PyObject **out, int *fallback) {
    PyObject *v = PyObject_GetAttr(st, name);
    if (v == NULL)
        return -1;
    if (v != Py_None && !PyDict_CheckExact(v)) {
        *fallback = 1;
        Py_DECREF(v);
        *out = NULL;
        return 0;
    }
    *out = v;
    return 0;
}

static PyObject *make_sample(PyObject *st, PyObject *node, PyObject *path, PyObject *started,
                             PyObject *t0, PyObject *mono, PyObject *created) {
    PyObject *v[MAX_FIELDS] = {NULL};
    PyObject *cpu = NULL, *ev = NULL, *ms = NULL, *io = NULL, *psi = NULL, *result = NULL;
    int fb = 0, k = 0;
    if (get_dict(st, s_cpu, &cpu, &fb) < 0 || get_dict(st, s_memory_events, &ev, &fb) < 0 ||
        get_dict(st, s_memory_stat, &ms, &fb) < 0 || get_dict(st, s_io, &io, &fb) < 0)
        goto done;
    if (fb)
        goto fallback;
    psi = PyObject_GetAttr(st, s_psi);
    if (psi == NULL)
        goto done;
    if (!PyDict_CheckExact(psi))
        goto fallback;

    /* node, tenant, group: path.partition("/"), group "" -> None */
    v[k++] = Py_NewRef(node);
    Py_ssize_t slash = PyUnicode_FindChar(path, '/', 0, PyUnicode_GET_LENGTH(path), 1);
    if (slash == -2)
        goto done;
    if (slash < 0) {
        v[k++] = Py_NewRef(path);
        v[k++] = Py_NewRef(Py_None);
    } else {
        v[k++] = PyUnicode_Substring(path, 0, slash);
        if (slash + 1 == PyUnicode_GET_LENGTH(path))
            v[k++] = Py_NewRef(Py_None);
        else
            v[k++] = PyUnicode_Substring(path, slash + 1, PyUnicode_GET_LENGTH(path));
        if (v[1] == NULL || v[2] == NULL)
            goto done;
    }
    if ((v[k++] = PyObject_GetAttr(st, s_cgroup_id)) == NULL)
        goto done;
    /* wall = started + timedelta(seconds=mono - t0).  timedelta takes a float's whole
     * seconds exactly and rounds its fraction * 1e6 to the nearest microsecond, ties to an
     * even total (CPython's delta_new/accum): rint() of the fraction in the default
     * rounding mode, the whole seconds' microseconds being even */
    {
        if (!PyFloat_CheckExact(t0) || !PyFloat_CheckExact(mono))
            goto fallback; /* the Python to_sample takes them (or says what is wrong) */
        double d0 = PyFloat_AS_DOUBLE(t0), d1 = PyFloat_AS_DOUBLE(mono);
        double whole, frac = modf(d1 - d0, &whole);
        if (!(fabs(whole) < 4e9)) /* far beyond any pass; let timedelta say what is wrong */
            goto fallback;
        double us = whole * 1e6 + rint(frac * 1e6);
        long long u = (long long)us;
        PyObject *delta = PyDelta_FromDSU((int)(u / 86400000000LL), (int)((u % 86400000000LL) / 1000000),
                                (int)(u % 1000000));
        if (delta == NULL)
            goto done;
        v[k] = PyNumber_Add(started, delta);
        Py_DECREF(delta);
        if (v[k++] == NULL)
            goto done;
    }
    v[k++] = Py_NewRef(mono);
    for (int i = 0; i < 6; i++) {
        PyObject *x = (cpu == Py_None) ? NULL : PyDict_GetItemWithError(cpu, k_cpu[i]);
        if (x == NULL && PyErr_Occurred())
            goto done;
        v[k++] = Py_NewRef(x ? x : Py_None);
    }
    PyObject *single[3] = {s_memory_current, s_memory_peak, s_swap_current};
    for (int i = 0; i < 3; i++)
        if ((v[k++] = PyObject_GetAttr(st, single[i])) == NULL)
            goto done;
    for (int i = 0; i < 6; i++) {
        PyObject *x = (ev == Py_None) ? NULL : PyDict_GetItemWithError(ev, k_ev[i]);
        if (x == NULL && PyErr_Occurred())
            goto done;
        v[k++] = Py_NewRef(x ? x : Py_None);
    }
    for (int i = 0; i < 5; i++) {
        PyObject *x = (ms == Py_None) ? NULL : PyDict_GetItemWithError(ms, k_ms[i]);
        if (x == NULL && PyErr_Occurred())
            goto done;
        v[k++] = Py_NewRef(x ? x : Py_None);
    }
    if ((v[k++] = PyObject_GetAttr(st, s_pids_current)) == NULL)
        goto done;
    /* io: {dev: {k: int(c.get(k, 0)) for k in IO_FIELDS}} */
    PyObject *iod = v[k++] = PyDict_New();
    if (iod == NULL)
        goto done;
    if (io != Py_None) {
        Py_ssize_t pos = 0;
        PyObject *dev, *c;
        while (PyDict_Next(io, &pos, &dev, &c)) {
            if (!PyDict_CheckExact(c))
                goto fallback;
            PyObject *cc = PyDict_New();
            if (cc == NULL)
                goto done;
            for (int i = 0; i < 5; i++) {
                PyObject *x = PyDict_GetItemWithError(c, k_io[i]), *n;
                if (x == NULL && PyErr_Occurred()) {
                    Py_DECREF(cc);
                    goto done;
                }
                n = x == NULL ? PyLong_FromLong(0)
                              : (PyLong_CheckExact(x) ? Py_NewRef(x) : PyNumber_Long(x));
                if (n == NULL || PyDict_SetItem(cc, k_io[i], n) < 0) {
                    Py_XDECREF(n);
                    Py_DECREF(cc);
                    goto done;
                }
                Py_DECREF(n);
            }
            int e = PyDict_SetItem(iod, dev, cc);
            Py_DECREF(cc);
            if (e < 0)
                goto done;
        }
    }
    /* psi: {"<res>_some": p.some.total, "<res>_full": p.full.total (when full)} */
    PyObject *psid = v[k++] = PyDict_New();
    if (psid == NULL)
        goto done;
    {
        Py_ssize_t pos = 0;
        PyObject *res, *p;
        while (PyDict_Next(psi, &pos, &res, &p)) {
            int r = -1;
            for (int i = 0; i < 3; i++) {
                int eq = PyUnicode_Check(res) ? PyUnicode_Compare(res, k_psi_res[i]) : 1;
                if (eq == -1 && PyErr_Occurred())
                    goto done;
                if (eq == 0) {
                    r = i;
                    break;
                }
            }
            if (r < 0)
                goto fallback; /* an unknown resource: __post_init__ says what is wrong */
            PyObject *line[2] = {PyObject_GetAttr(p, s_some), NULL};
            if (line[0] == NULL)
                goto done;
            line[1] = PyObject_GetAttr(p, s_full);
            if (line[1] == NULL) {
                Py_DECREF(line[0]);
                goto done;
            }
            for (int j = 0; j < 2; j++) {
                if (j == 1 && line[1] == Py_None)
                    break;
                PyObject *tot = PyObject_GetAttr(line[j], s_total);
                int e = tot == NULL ? -1 : PyDict_SetItem(psid, k_psi_names[r][j], tot);
                Py_XDECREF(tot);
                if (e < 0) {
                    Py_DECREF(line[0]);
                    Py_DECREF(line[1]);
                    goto done;
                }
            }
            Py_DECREF(line[0]);
            Py_DECREF(line[1]);
        }
    }
    v[k++] = Py_NewRef(created);
    /* storage_bytes: not a cgroup file; the pass sets it after the sample is built */
    v[k++] = Py_NewRef(Py_None);
    if (k != n_sample_fields) {
        PyErr_Format(PyExc_RuntimeError, "to_sample built %d fields, GroupSample has %d", k,
                     n_sample_fields);
        goto done;
    }
    result = new_slotted(sample_type, sample_descr, v, k);
    if (result == NULL)
        goto done;
    /* GroupSample.__post_init__: wall and created must be aware.  A wall in UTC, and a
     * created None or in UTC, need no check (the PSI keys made here are all known ones);
     * else run it.  (A created time is known for every group governor made: checking it
     * in Python was 3% of the daemon's CPU at 1,000 groups, issue #16.) */
    PyObject *wall = v[4];
    if (!utc_datetime(wall) || (created != Py_None && !utc_datetime(created))) {
        PyObject *r = PyObject_CallMethodNoArgs(result, s_post_init);
        if (r == NULL)
            Py_CLEAR(result);
        Py_XDECREF(r);
    }
    goto done;
fallback:
    result = PyObject_CallFunction(py_to_sample, "OOOOOOO", st, node, path, started, t0, mono,
                                   created);
done:
    for (int i = 0; i < MAX_FIELDS; i++)
        Py_XDECREF(v[i]);
    Py_XDECREF(cpu);
    Py_XDECREF(ev);
    Py_XDECREF(ms);
    Py_XDECREF(io);
    Py_XDECREF(psi);
    return result;
}

static PyObject *to_sample(PyObject *self, PyObject *args) {
    PyObject *st, *node, *path, *started, *t0, *mono, *created;
    if (!PyArg_ParseTuple(args, "OUUOOOO", &st, &node, &path, &started, &t0, &mono, &created))
        return NULL;
    if (!sample_ready) {
        PyErr_SetString(PyExc_RuntimeError, "_fastread.configure_sample() was not called");
        return NULL;
    }
    return make_sample(st, node, path, started, t0, mono, created);
}

/* ---- sample_groups: Sampler.sample's loop for the groups on the fast path --------------- */

/* time.monotonic(): CLOCK_MONOTONIC in nanoseconds, as a float of seconds the way CPython
 * converts it (_PyTime_AsSecondsDouble) */
static PyObject *monotonic(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    int64_t ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    double d = ns % 1000000000 == 0 ? (double)(ns / 1000000000) : (double)ns / 1e9;
    return PyFloat_FromDouble(d);
}

static PyObject *s_fast, *s_cache, *s_ino, *s_fp_name;

/* one group of sample_groups: True when sampled, False when left to the caller */
static PyObject *sample_one(PyObject *path, PyObject *groups, PyObject *prefix,
                            PyObject *latest, PyObject *created, PyObject *births,
                            PyObject *node, PyObject *started, PyObject *t0,
                            PyObject *samples, PyObject *hook) {

    if (PyDict_GET_SIZE(births)) {
        int in = PyDict_Contains(births, path);
        if (in < 0)
            return NULL;
        if (in)
            return Py_NewRef(Py_False);
    }
    /* prefix: a str put before path, or a dict path -> directory (systemd's slice names) */
    PyObject *rel;
    if (PyDict_Check(prefix)) {
        rel = PyDict_GetItemWithError(prefix, path); /* borrowed */
        if (rel == NULL) {
            if (PyErr_Occurred())
                return NULL;
            return Py_NewRef(Py_False);
        }
        Py_INCREF(rel);
    } else {
        rel = PyUnicode_Concat(prefix, path);
        if (rel == NULL)
            return NULL;
    }
    PyObject *g = PyDict_GetItemWithError(groups, rel); /* borrowed */
    Py_DECREF(rel);
    if (g == NULL) {
        if (PyErr_Occurred())
            return NULL;
        return Py_NewRef(Py_False);
    }
    Py_INCREF(g);
    PyObject *fast = PyObject_GetAttr(g, s_fast);
    PyObject *cache = fast ? PyObject_GetAttr(g, s_cache) : NULL;
    PyObject *ino = cache ? PyObject_GetAttr(g, s_ino) : NULL;
    Py_DECREF(g);
    if (ino == NULL) {
        Py_XDECREF(fast);
        Py_XDECREF(cache);
        return NULL;
    }
    int stop = fast == Py_None;
    PyObject *prev = stop ? NULL : PyDict_GetItemWithError(latest, path);
    if (prev != NULL) {
        PyObject *pid = PyObject_GetAttr(prev, s_cgroup_id);
        int same = pid == NULL ? -1 : PyObject_RichCompareBool(pid, ino, Py_EQ);
        Py_XDECREF(pid);
        if (same < 0) {
            Py_DECREF(fast);
            Py_DECREF(cache);
            Py_DECREF(ino);
            return NULL;
        }
        stop = !same;
    } else if (PyErr_Occurred()) {
        stop = -1;
    }
    PyObject *mono = NULL, *st = NULL;
    if (!stop) {
        mono = monotonic();
        st = mono == NULL ? NULL : do_read(fast, cache, ino);
    }
    Py_DECREF(fast);
    Py_DECREF(cache);
    if (stop < 0 || (!stop && mono == NULL)) { /* an error is set (mono is only taken to
                                                  * read: NULL is no error when stopping) */
        Py_DECREF(ino);
        return NULL;
    }
    if (stop) {
        Py_DECREF(ino);
        return Py_NewRef(Py_False);
    }
    if (st == NULL) {
        Py_DECREF(mono);
        Py_DECREF(ino);
        /* a read error (OSError) or text no parser takes (ValueError: ParseError,
         * UnicodeDecodeError): the group is left to the caller's loop, which reads it
         * again file by file and reports it with its file (GroupGone, CgroupError,
         * StatFileError: reader.py) while the other groups are sampled.  Anything else
         * (MemoryError, KeyboardInterrupt, a bug) is raised. */
        if (!PyErr_ExceptionMatches(PyExc_OSError) && !PyErr_ExceptionMatches(PyExc_ValueError))
            return NULL;
        PyErr_Clear();
        return Py_NewRef(Py_False);
    }
    if (hook != Py_None) {
        PyObject *r = PyObject_CallOneArg(hook, s_fp_name);
        if (r == NULL) {
            Py_DECREF(mono);
            Py_DECREF(ino);
            Py_DECREF(st);
            return NULL;
        }
        Py_DECREF(r);
    }
    PyObject *when = Py_None, *known = NULL;
    int err = PyDict_SetItem(latest, path, st);
    if (!err) {
        known = PyDict_GetItemWithError(created, path);
        if (known == NULL && PyErr_Occurred())
            err = -1;
    }
    if (!err && known != NULL) {
        if (!PyTuple_Check(known) || PyTuple_GET_SIZE(known) < 2) {
            PyErr_SetString(PyExc_TypeError, "created: path -> (cgroup id, time)");
            err = -1;
        } else {
            int eq = PyObject_RichCompareBool(PyTuple_GET_ITEM(known, 0), ino, Py_EQ);
            if (eq < 0)
                err = -1;
            else if (eq)
                when = PyTuple_GET_ITEM(known, 1);
        }
    }
    Py_INCREF(when); /* created may change under a finalizer run by make_sample */
    PyObject *sample = err ? NULL : make_sample(st, node, path, started, t0, mono, when);
    Py_DECREF(when);
    Py_DECREF(mono);
    Py_DECREF(ino);
    Py_DECREF(st);
    if (sample == NULL)
        return NULL;
    err = PyList_Append(samples, sample);
    Py_DECREF(sample);
    if (err < 0)
        return NULL;
    return Py_NewRef(Py_True);
}

/* sample_groups(paths, start, groups, prefix, latest, created, births, node, started, t0,
 *               samples, hook[, end]) -> index
 * From paths[start] on, for each group whose reader entry (groups[prefix + path], or
 * groups[prefix[path]] when prefix is a dict) has its
 * fast descriptors: stamp, read (read_fast), call hook("metering.sample.group") when it is
 * not None, latest[path] = stats, append to samples the GroupSample (to_sample, with the
 * creation time of created[path] when its cgroup id is this one).  Returns the index of
 * the first group it leaves to the caller's Python loop: no entry or no fast descriptors
 * yet, a birth to note (path in births), a new incarnation to log (latest[path] has
 * another cgroup id), or any error while reading (the caller reads it again and reports
 * it); len(paths) when done, or end (exclusive) when given: the caller calls it again, and
 * the interpreter may hand the GIL to another thread in between.  The caller's loop does
 * exactly this for those groups. */
static PyObject *sample_groups(PyObject *self, PyObject *args) {
    PyObject *paths, *groups, *prefix, *latest, *created, *births, *node, *started, *t0,
        *samples, *hook;
    Py_ssize_t i, end = PY_SSIZE_T_MAX;
    if (!PyArg_ParseTuple(args, "O!nO!OO!O!O!UOOO!O|n", &PyList_Type, &paths, &i, &PyDict_Type,
                          &groups, &prefix, &PyDict_Type, &latest, &PyDict_Type, &created,
                          &PyDict_Type, &births, &node, &started, &t0, &PyList_Type, &samples,
                          &hook, &end))
        return NULL;
    if (!reader_ready || !sample_ready) {
        PyErr_SetString(PyExc_RuntimeError, "_fastread is not configured");
        return NULL;
    }
    for (; i < PyList_GET_SIZE(paths) && i < end; i++) {
        PyObject *path = PyList_GET_ITEM(paths, i);
        if (!PyUnicode_Check(path))
            break;
        Py_INCREF(path); /* held: the hook or a parser may run Python code */
        PyObject *r = sample_one(path, groups, prefix, latest, created, births, node,
                                 started, t0, samples, hook);
        Py_DECREF(path);
        if (r == NULL)
            return NULL;
        int stop = r == Py_False;
        Py_DECREF(r);
        if (stop)
            break;
    }
    return PyLong_FromSsize_t(i);
}

/* ---- subdirs: CgroupFS.children's listing --------------------------------------------- */

struct linux_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* subdirs(dirfd) -> sorted names of the sub-directories (the names os.scandir(dirfd)
 * gives, is_dir(follow_symlinks=False) decided by d_type, or lstat when the filesystem
 * gives no type); the fd's offset is left at the end (the caller closes it).  A cgroup
 * directory holds ~70 interface files next to its children: no object is made for them. */
static PyObject *subdirs(PyObject *self, PyObject *arg) {
    int fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    PyObject *out = PyList_New(0);
    char *buf = PyMem_RawMalloc(32768);
    if (out == NULL || buf == NULL) {
        Py_XDECREF(out);
        PyMem_RawFree(buf);
        return buf == NULL ? PyErr_NoMemory() : NULL;
    }
    for (;;) {
        long n = syscall(SYS_getdents64, fd, buf, 32768);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            goto fail;
        }
        if (n == 0)
            break;
        for (long off = 0; off < n;) {
            struct linux_dirent64 *d = (struct linux_dirent64 *)(buf + off);
            off += d->d_reclen;
            const char *name = d->d_name;
            if (name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0)))
                continue;
            int dir = d->d_type == DT_DIR;
            if (d->d_type == DT_UNKNOWN) {
                struct stat st;
                if (fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
                    if (errno == ENOENT) /* gone meanwhile: scandir's is_dir says False */
                        continue;
                    PyErr_SetFromErrno(PyExc_OSError);
                    goto fail;
                }
                dir = S_ISDIR(st.st_mode);
            }
            if (!dir)
                continue;
            PyObject *s = PyUnicode_DecodeFSDefault(name);
            if (s == NULL || PyList_Append(out, s) < 0) {
                Py_XDECREF(s);
                goto fail;
            }
            Py_DECREF(s);
        }
    }
    PyMem_RawFree(buf);
    if (PyList_Sort(out) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
fail:
    PyMem_RawFree(buf);
    Py_DECREF(out);
    return NULL;
}

/* ---- configure -------------------------------------------------------------------------- */

static int descriptors(PyTypeObject *type, PyObject *names, PyObject **out, int max, int *n) {
    if (!PyTuple_Check(names) || PyTuple_GET_SIZE(names) > max) {
        PyErr_SetString(PyExc_ValueError, "field names: a tuple of at most MAX_FIELDS");
        return -1;
    }
    *n = (int)PyTuple_GET_SIZE(names);
    for (int i = 0; i < *n; i++) {
        PyObject *d = PyObject_GetAttr((PyObject *)type, PyTuple_GET_ITEM(names, i));
        if (d == NULL)
            return -1;
        if (!Py_IS_TYPE(d, &PyMemberDescr_Type)) {
            PyErr_Format(PyExc_TypeError, "%R.%R is not a slot", type, PyTuple_GET_ITEM(names, i));
            Py_DECREF(d);
            return -1;
        }
        Py_XSETREF(out[i], d);
    }
    return 0;
}

static int index_of(PyObject *names, PyObject *name) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++) {
        int eq = PyObject_RichCompareBool(PyTuple_GET_ITEM(names, i), name, Py_EQ);
        if (eq < 0)
            return -2;
        if (eq)
            return (int)i;
    }
    return -1;
}

static PyObject *configure_reader(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"stats_type", "stats_fields", "files", "psi_type",
                             "psiline_type", NULL};
    PyObject *st, *sf, *files, *pt, *plt;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O!O!O!O!", kwlist, &PyType_Type, &st,
                                     &PyTuple_Type, &sf, &PyTuple_Type, &files, &PyType_Type,
                                     &pt, &PyType_Type, &plt))
        return NULL;
    reader_ready = 0;
    PyObject *pnames = Py_BuildValue("(ss)", "some", "full");
    PyObject *plnames = Py_BuildValue("(ssss)", "avg10", "avg60", "avg300", "total");
    int n, ok = pnames && plnames &&
                descriptors((PyTypeObject *)st, sf, stats_descr, MAX_FIELDS,
                            &n_stats_fields) == 0 &&
                descriptors((PyTypeObject *)pt, pnames, psi_descr, 2, &n) == 0 &&
                descriptors((PyTypeObject *)plt, plnames, psiline_descr, 4, &n) == 0;
    Py_XDECREF(pnames);
    Py_XDECREF(plnames);
    if (!ok)
        return NULL;
    stats_id_field = index_of(sf, s_cgroup_id);
    stats_psi_field = index_of(sf, s_psi);
    if (stats_id_field < 0 || stats_psi_field < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "stats_fields lacks cgroup_id or psi");
        return NULL;
    }
    if (PyTuple_GET_SIZE(files) > MAX_FILES) {
        PyErr_SetString(PyExc_ValueError, "too many files");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(files); i++) {
        int kind;
        PyObject *target, *fallback;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(files, i), "iUO", &kind, &target, &fallback))
            return NULL;
        if (kind < K_FLAT || kind > K_PSI || !PyCallable_Check(fallback)) {
            PyErr_SetString(PyExc_ValueError, "files: (kind 0-3, target, callable)");
            return NULL;
        }
        f_kind[i] = kind;
        Py_XSETREF(f_fallback[i], Py_NewRef(fallback));
        Py_XSETREF(f_key[i], Py_NewRef(target));
        if (kind != K_PSI) {
            f_field[i] = index_of(sf, target);
            if (f_field[i] < 0) {
                if (!PyErr_Occurred())
                    PyErr_Format(PyExc_ValueError, "no field %R", target);
                return NULL;
            }
        }
    }
    n_files = (int)PyTuple_GET_SIZE(files);
    Py_XSETREF(stats_type, (PyTypeObject *)Py_NewRef(st));
    Py_XSETREF(psi_type, (PyTypeObject *)Py_NewRef(pt));
    Py_XSETREF(psiline_type, (PyTypeObject *)Py_NewRef(plt));
    reader_ready = 1;
    Py_RETURN_NONE;
}

static PyObject *configure_sample(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"sample_type", "sample_fields", "py_to_sample", NULL};
    PyObject *smt, *smf, *pts;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O!O", kwlist, &PyType_Type, &smt,
                                     &PyTuple_Type, &smf, &pts))
        return NULL;
    sample_ready = 0;
    if (descriptors((PyTypeObject *)smt, smf, sample_descr, MAX_FIELDS, &n_sample_fields) < 0)
        return NULL;
    if (n_sample_fields != N_SAMPLE_FIELDS) {
        PyErr_Format(PyExc_ValueError, "to_sample makes %d fields, not %d", N_SAMPLE_FIELDS,
                     n_sample_fields);
        return NULL;
    }
    Py_XSETREF(sample_type, (PyTypeObject *)Py_NewRef(smt));
    Py_XSETREF(py_to_sample, Py_NewRef(pts));
    sample_ready = 1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure_reader", (PyCFunction)(void (*)(void))configure_reader,
     METH_VARARGS | METH_KEYWORDS,
     "configure_reader(*, stats_type, stats_fields, files, psi_type, psiline_type): "
     "GroupStats and its fields, per fast file (kind, field or pressure key, Python "
     "parser), Psi and PsiLine"},
    {"configure_sample", (PyCFunction)(void (*)(void))configure_sample,
     METH_VARARGS | METH_KEYWORDS,
     "configure_sample(*, sample_type, sample_fields, py_to_sample): GroupSample, its "
     "fields in order, the Python to_sample (the fallback)"},
    {"read_fast", read_fast, METH_VARARGS,
     "read_fast(fds, cache, cgroup_id) -> GroupStats of the fast files (cache: a list, one "
     "entry per file, None at first, that keeps the last text read and its value)"},
    {"sample_groups", sample_groups, METH_VARARGS,
     "sample_groups(paths, start, groups, prefix, latest, created, births, node, started, "
     "t0, samples, hook) -> index of the first group left to the caller"},
    {"subdirs", subdirs, METH_O, "subdirs(dirfd) -> sorted names of the sub-directories"},
    {"to_sample", to_sample, METH_VARARGS,
     "to_sample(st, node, path, started, t0, mono, created) -> GroupSample"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastread",
                                    "The sampler's hot path in C (see _fastread.c).", -1,
                                    methods};

static int intern(PyObject **slot, const char *s) {
    *slot = PyUnicode_InternFromString(s);
    return *slot == NULL ? -1 : 0;
}

PyMODINIT_FUNC PyInit__fastread(void) {
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL)
        return NULL;
    if (intern(&s_cpu, "cpu") || intern(&s_memory_current, "memory_current") ||
        intern(&s_memory_peak, "memory_peak") || intern(&s_swap_current, "swap_current") ||
        intern(&s_memory_events, "memory_events") || intern(&s_memory_stat, "memory_stat") ||
        intern(&s_io, "io") || intern(&s_pids_current, "pids_current") ||
        intern(&s_psi, "psi") || intern(&s_cgroup_id, "cgroup_id") ||
        intern(&s_some, "some") || intern(&s_full, "full") || intern(&s_total, "total") ||
        intern(&s_post_init, "__post_init__") || intern(&s_fast, "fast") ||
        intern(&s_cache, "cache") || intern(&s_ino, "ino") ||
        intern(&s_fp_name, "metering.sample.group"))
        return NULL;
    for (int i = 0; i < 6; i++)
        if (intern(&k_cpu[i], CPU_KEYS[i]) || intern(&k_ev[i], EV_KEYS[i]) ||
            intern(&k_io_line[i], IO_KEYS[i]))
            return NULL;
    for (int i = 0; i < 5; i++)
        if (intern(&k_ms[i], MS_KEYS[i]) || intern(&k_io[i], IO_KEYS[i]))
            return NULL;
    for (int i = 0; i < 3; i++) {
        char b[32];
        if (intern(&k_psi_res[i], PSI_RES[i]))
            return NULL;
        snprintf(b, sizeof b, "%s_some", PSI_RES[i]);
        if (intern(&k_psi_names[i][0], b))
            return NULL;
        snprintf(b, sizeof b, "%s_full", PSI_RES[i]);
        if (intern(&k_psi_names[i][1], b))
            return NULL;
    }
    return PyModule_Create(&module);
}
