/* governor.cgroupfs._fastread: the stat-file reads of the sampling pass in C (optional
 * accelerator).  It reads and parses, nothing else (the "reader" layer): mapping the
 * values onto a sample is governor.metering._fastsample's, the placement's procfs reads
 * are governor.placement._fastproc's, its netlink parsing _fastnetlink's, keep_warm's
 * writer governor.cgroupfs._keepwarm's.
 *
 * Each function is an exact equivalent of pure-Python code that stays the fallback
 * (tests/unit/test_fastread.py runs both over the same inputs and compares):
 *
 *   read_fast(fds, cache, cgroup_id) -> GroupStats
 *       StatReader.read's hot path (governor/cgroupfs/reader.py): one pread per cached
 *       descriptor of FAST_FILES (-1: absent, None) into one buffer reused for every file
 *       (Python's os.pread allocates a 64 KiB bytes object per call), parsed in place.  A
 *       file that fills the buffer is read again, whole, into a bigger one (up to
 *       MAX_FILE: past it EFBIG), never parsed truncated.  Only text in the kernel's
 *       exact layout is parsed here (the layouts the regular expressions of
 *       governor/cgroupfs/parse.py match); any other text goes, as bytes, to the Python
 *       parser configured for that file, so values and errors are those of the Python
 *       path by construction.  A pread error raises OSError (errno set; the descriptor has
 *       no path here): the caller retries through its per-file path, which names the
 *       group and the file and maps ENODEV / ENOENT to GroupGone.  The GIL is kept: a
 *       pread of a cgroup file takes microseconds, and dropping the GIL per group would
 *       cost the pass up to the switch interval (5 ms) per group whenever another thread
 *       is busy in Python.  StatReader hands it out as StatReader.fast_read, for the C
 *       sampling pass.
 *
 *   subdirs(dirfd) -> sorted names of the sub-directories (CgroupFS.children).
 *
 * configure_reader() hands over GroupStats, its fields, the fast files' kinds and Python
 * parsers, Psi and PsiLine once (reader.py, at import).  Objects are built the way
 * sampler.py's fast constructor builds GroupSample: allocated by their type, each
 * __slots__ member set through its member descriptor.
 *
 * State: everything is the module's (PEP 489 multi-phase init, PyModule_GetState): the
 * configuration, the key cache, the reused read buffer; with GC traverse/clear.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "_slots.h"          /* descriptors */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define BUF 65536 /* as reader._BUF: what the first pread of a file asks for */
#define MAX_FILE (1 << 20) /* as reader.MAX_FILE: a file this large is an error (EFBIG),
                            * never read truncated */
#define MAX_FILES 16  /* configure_reader refuses more (ValueError): FAST_FILES has 10 */
#define MAX_FIELDS 40 /* GroupStats' fields, likewise */
#define MAX_KEYS 64   /* keys remembered per file (past it a key's str is made each time) */

enum { K_FLAT = 0, K_INT = 1, K_IO = 2, K_PSI = 3 };

static const char *IO_KEYS[6] = {"rbytes", "wbytes", "rios", "wios", "dbytes", "dios"};

typedef struct {
    int reader_ready; /* configure_reader() was called */
    int trust_file;   /* the file whose cache slot may hold a trusted value (-1: none) */
    /* the fast files: kind, GroupStats field index (or pressure key), Python fallback */
    int n_files;
    int f_kind[MAX_FILES];
    int f_field[MAX_FILES];
    PyObject *f_key[MAX_FILES]; /* pressure resource name (str) for K_PSI */
    PyObject *f_fallback[MAX_FILES];
    PyTypeObject *stats_type, *psi_type, *psiline_type;
    PyObject *stats_descr[MAX_FIELDS];
    int n_stats_fields, stats_id_field, stats_psi_field;
    PyObject *psi_descr[2], *psiline_descr[4];
    /* per file, the str of each key position made last time (see key_str) */
    PyObject *key_cache[MAX_FILES][MAX_KEYS];
    PyObject *s_psi, *s_cgroup_id, *k_io_line[6]; /* interned names */
    char *buf; /* BUF bytes, reused by every read_fast that is not nested in another */
    int buf_busy;
} fr_state;

static fr_state *state_of(PyObject *module) { return PyModule_GetState(module); }

/* ---- building slotted objects ------------------------------------------------------- */

/* A new instance of ``type`` with its members set from values[0:n] through descr[0:n]
 * (values are borrowed).  No __init__: GroupStats, Psi and PsiLine are slotted. */
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

static PyObject *key_str(fr_state *S, int file, Py_ssize_t j, const char *k, Py_ssize_t n) {
    PyObject **slot = j < MAX_KEYS ? &S->key_cache[file][j] : NULL;
    if (slot && *slot && PyUnicode_GET_LENGTH(*slot) == n &&
        memcmp(PyUnicode_DATA(*slot), k, n) == 0)
        return Py_NewRef(*slot);
    PyObject *key = PyUnicode_FromStringAndSize(k, n);
    if (key != NULL && slot)
        Py_XSETREF(*slot, Py_NewRef(key));
    return key;
}

/* ``KEY DIGITS\n`` lines, KEY printable ASCII without spaces (empty text: {}) */
static int parse_flat_exact(fr_state *S, int file, const char *p, Py_ssize_t n, PyObject **out) {
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
        PyObject *key = key_str(S, file, j, k, q - k);
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
static int parse_io_exact(fr_state *S, int file, const char *p, Py_ssize_t n, PyObject **out) {
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
        PyObject *key = key_str(S, file, j, dev, q - dev);
        PyObject *c = PyDict_New();
        if (key == NULL || c == NULL)
            goto fail_line;
        for (int i = 0; i < 6; i++) {
            q += strlen(LIT[i]);
            Py_ssize_t d = digits(q, end);
            PyObject *v = int_of(q, d);
            q += d;
            if (v == NULL || PyDict_SetItem(c, S->k_io_line[i], v) < 0) {
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

static PyObject *new_psiline(fr_state *S, double avg[3], const char *tot, Py_ssize_t ntot) {
    PyObject *v[4] = {PyFloat_FromDouble(avg[0]), PyFloat_FromDouble(avg[1]),
                      PyFloat_FromDouble(avg[2]), int_of(tot, ntot)};
    PyObject *r = NULL;
    if (v[0] && v[1] && v[2] && v[3])
        r = new_slotted(S->psiline_type, S->psiline_descr, v, 4);
    for (int i = 0; i < 4; i++)
        Py_XDECREF(v[i]);
    return r;
}

/* ``some ...\n`` then optionally ``full ...\n``, nothing else */
static int parse_psi_exact(fr_state *S, const char *p, Py_ssize_t n, PyObject **out) {
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
    PyObject *v[2] = {new_psiline(S, avg[0], tot[0], ntot[0]), Py_None};
    Py_INCREF(Py_None);
    if (v[0] != NULL && lines == 2) {
        Py_DECREF(Py_None);
        v[1] = new_psiline(S, avg[1], tot[1], ntot[1]);
    }
    PyObject *res = NULL;
    if (v[0] && v[1])
        res = new_slotted(S->psi_type, S->psi_descr, v, 2);
    Py_XDECREF(v[0]);
    Py_XDECREF(v[1]);
    if (res == NULL)
        return -1;
    *out = res;
    return 1;
}

/* ---- read_fast -------------------------------------------------------------------------- */

static PyObject *parse_file(fr_state *S, int i, const char *data, Py_ssize_t n) {
    PyObject *out = NULL;
    int r;
    switch (S->f_kind[i]) {
    case K_FLAT: r = parse_flat_exact(S, i, data, n, &out); break;
    case K_INT: r = parse_int_exact(data, n, &out); break;
    case K_IO: r = parse_io_exact(S, i, data, n, &out); break;
    default: r = parse_psi_exact(S, data, n, &out); break;
    }
    if (r < 0)
        return NULL;
    if (r > 0)
        return out;
    /* not the exact layout: the Python parser decides (same value or same error) */
    PyObject *b = PyBytes_FromStringAndSize(data, n);
    if (b == NULL)
        return NULL;
    out = PyObject_CallOneArg(S->f_fallback[i], b);
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

static PyObject *do_read(fr_state *S, PyObject *fds, PyObject *cache, PyObject *cgroup_id) {
    if (!PyTuple_Check(fds) || !PyList_Check(cache)) {
        PyErr_SetString(PyExc_TypeError, "read_fast(tuple, list, id)");
        return NULL;
    }
    if (PyTuple_GET_SIZE(fds) != S->n_files) {
        PyErr_Format(PyExc_ValueError, "read_fast takes %d descriptors", S->n_files);
        return NULL;
    }
    if (PyList_GET_SIZE(cache) != S->n_files) {
        PyErr_Format(PyExc_ValueError, "read_fast takes a cache list of %d", S->n_files);
        return NULL;
    }
    int fd[MAX_FILES];
    for (int i = 0; i < S->n_files; i++) {
        long v = PyLong_AsLong(PyTuple_GET_ITEM(fds, i));
        if (v == -1 && PyErr_Occurred())
            return NULL;
        fd[i] = (int)v;
    }
    PyObject *values[MAX_FIELDS] = {NULL};
    PyObject *psi = PyDict_New();
    /* the module's buffer, reused by every call; a nested call (a Python parser or a
     * finalizer run meanwhile that reads again, in this thread or another one) gets its
     * own */
    int own = S->buf_busy;
    char *buf = own ? PyMem_RawMalloc(BUF) : S->buf;
    S->buf_busy = 1;
    PyObject *result = NULL, *mark = NULL; /* mark: the trusted file's, while read */
    char *big = NULL; /* a heap buffer for a file larger than BUF (rare: io.stat of
                       * hundreds of devices), as big as it took */
    if (psi == NULL || buf == NULL) {
        if (buf == NULL)
            PyErr_NoMemory();
        goto done;
    }
    for (int i = 0; i < S->n_files; i++) {
        if (fd[i] < 0)
            continue;
        /* the trusted file (memory.events): its cache slot may be a 1-tuple, a mark "watched:
         * read it, and trust what was read", or a 3-tuple (text, value, True), a value
         * nothing changed since (no inotify event since it was read, the OOM watch says:
         * on each event it puts a new mark there), handed out without a read */
        PyObject *slot = PyList_GET_ITEM(cache, i), *v;
        Py_CLEAR(mark);
        if (i == S->trust_file && PyTuple_CheckExact(slot)) {
            if (PyTuple_GET_SIZE(slot) == 3) {
                Py_INCREF(slot);
                v = fresh(PyTuple_GET_ITEM(slot, 1));
                Py_DECREF(slot);
                if (v == NULL)
                    goto done;
                goto got;
            }
            if (PyTuple_GET_SIZE(slot) == 1)
                mark = Py_NewRef(slot); /* held: compared after the read */
        }
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
        PyObject *last = PyList_GET_ITEM(cache, i);
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
            PyObject *parsed = parse_file(S, i, data, n);
            /* marked: trusted from now on, unless the mark changed meanwhile (the parser
             * or a finalizer let the OOM watch's thread run, and an event came since this
             * read): then the new mark stays, and the next pass reads again */
            PyObject *entry = parsed == NULL ? NULL : mark == NULL ? PyTuple_Pack(2, b, parsed)
                : PyList_GET_ITEM(cache, i) == mark ? PyTuple_Pack(3, b, parsed, Py_True)
                : Py_NewRef(PyList_GET_ITEM(cache, i));
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
    got:
        if (S->f_kind[i] == K_PSI) {
            int e = PyDict_SetItem(psi, S->f_key[i], v);
            Py_DECREF(v);
            if (e < 0)
                goto done;
        } else {
            Py_XSETREF(values[S->f_field[i]], v);
        }
    }
    for (int j = 0; j < S->n_stats_fields; j++)
        if (values[j] == NULL)
            values[j] = Py_NewRef(Py_None);
    Py_SETREF(values[S->stats_id_field], Py_NewRef(cgroup_id));
    Py_SETREF(values[S->stats_psi_field], Py_NewRef(psi));
    result = new_slotted(S->stats_type, S->stats_descr, values, S->n_stats_fields);
done:
    Py_XDECREF(mark);
    for (int j = 0; j < S->n_stats_fields; j++)
        Py_XDECREF(values[j]);
    Py_XDECREF(psi);
    PyMem_RawFree(big);
    if (own)
        PyMem_RawFree(buf);
    else
        S->buf_busy = 0;
    return result;
}

/* METH_FASTCALL: the C sampling pass (governor.metering._fastsample) calls it once per
 * group through the vectorcall protocol, with no argument tuple made */
static PyObject *read_fast(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    fr_state *S = state_of(self);
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "read_fast takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *fds = args[0], *cache = args[1], *cgroup_id = args[2];
    if (!S->reader_ready) {
        PyErr_SetString(PyExc_RuntimeError, "_fastread.configure_reader() was not called");
        return NULL;
    }
    return do_read(S, fds, cache, cgroup_id);
}

/* ---- configure -------------------------------------------------------------------------- */

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
    fr_state *S = state_of(self);
    static char *kwlist[] = {"stats_type", "stats_fields", "files", "psi_type",
                             "psiline_type", "trusted", NULL};
    PyObject *st, *sf, *files, *pt, *plt;
    int trusted = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O!O!O!O!|i", kwlist, &PyType_Type, &st,
                                     &PyTuple_Type, &sf, &PyTuple_Type, &files, &PyType_Type,
                                     &pt, &PyType_Type, &plt, &trusted))
        return NULL;
    if (trusted < -1 || trusted >= PyTuple_GET_SIZE(files) || trusted >= MAX_FILES) {
        PyErr_SetString(PyExc_ValueError, "trusted: a file's index, or -1");
        return NULL;
    }
    S->reader_ready = 0;
    PyObject *pnames = Py_BuildValue("(ss)", "some", "full");
    PyObject *plnames = Py_BuildValue("(ssss)", "avg10", "avg60", "avg300", "total");
    int n, ok = pnames && plnames &&
                descriptors((PyTypeObject *)st, sf, S->stats_descr, MAX_FIELDS,
                            &S->n_stats_fields) == 0 &&
                descriptors((PyTypeObject *)pt, pnames, S->psi_descr, 2, &n) == 0 &&
                descriptors((PyTypeObject *)plt, plnames, S->psiline_descr, 4, &n) == 0;
    Py_XDECREF(pnames);
    Py_XDECREF(plnames);
    if (!ok)
        return NULL;
    S->stats_id_field = index_of(sf, S->s_cgroup_id);
    S->stats_psi_field = index_of(sf, S->s_psi);
    if (S->stats_id_field < 0 || S->stats_psi_field < 0) {
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
        S->f_kind[i] = kind;
        Py_XSETREF(S->f_fallback[i], Py_NewRef(fallback));
        Py_XSETREF(S->f_key[i], Py_NewRef(target));
        if (kind != K_PSI) {
            S->f_field[i] = index_of(sf, target);
            if (S->f_field[i] < 0) {
                if (!PyErr_Occurred())
                    PyErr_Format(PyExc_ValueError, "no field %R", target);
                return NULL;
            }
        }
    }
    S->n_files = (int)PyTuple_GET_SIZE(files);
    S->trust_file = trusted;
    Py_XSETREF(S->stats_type, (PyTypeObject *)Py_NewRef(st));
    Py_XSETREF(S->psi_type, (PyTypeObject *)Py_NewRef(pt));
    Py_XSETREF(S->psiline_type, (PyTypeObject *)Py_NewRef(plt));
    S->reader_ready = 1;
    Py_RETURN_NONE;
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


static PyMethodDef methods[] = {
    {"configure_reader", (PyCFunction)(void (*)(void))configure_reader,
     METH_VARARGS | METH_KEYWORDS,
     "configure_reader(*, stats_type, stats_fields, files, psi_type, psiline_type): "
     "GroupStats and its fields, per fast file (kind, field or pressure key, Python "
     "parser), Psi and PsiLine"},
    {"read_fast", (PyCFunction)(void (*)(void))read_fast, METH_FASTCALL,
     "read_fast(fds, cache, cgroup_id) -> GroupStats of the fast files (cache: a list, one "
     "entry per file, None at first, that keeps the last text read and its value)"},
    {"subdirs", subdirs, METH_O, "subdirs(dirfd) -> sorted names of the sub-directories"},
    {NULL, NULL, 0, NULL},
};

/* every object of the state's arrays: (a pointer to) each slot, for traverse and clear */
#define FOR_EACH_OBJECT(S, DO)                                                            \
    do {                                                                                  \
        for (int i_ = 0; i_ < MAX_FILES; i_++) {                                          \
            DO(&(S)->f_key[i_]);                                                          \
            DO(&(S)->f_fallback[i_]);                                                     \
            for (int j_ = 0; j_ < MAX_KEYS; j_++)                                         \
                DO(&(S)->key_cache[i_][j_]);                                              \
        }                                                                                 \
        for (int i_ = 0; i_ < MAX_FIELDS; i_++)                                           \
            DO(&(S)->stats_descr[i_]);                                                    \
        for (int i_ = 0; i_ < 2; i_++)                                                    \
            DO(&(S)->psi_descr[i_]);                                                      \
        for (int i_ = 0; i_ < 4; i_++)                                                    \
            DO(&(S)->psiline_descr[i_]);                                                  \
    } while (0)

static int traverse(PyObject *module, visitproc visit, void *arg) {
    fr_state *S = state_of(module);
    Py_VISIT(S->stats_type);
    Py_VISIT(S->psi_type);
    Py_VISIT(S->psiline_type);
#define VISIT(slot) Py_VISIT(*(slot))
    FOR_EACH_OBJECT(S, VISIT);
#undef VISIT
    return 0;
}

static int clear(PyObject *module) {
    fr_state *S = state_of(module);
    S->reader_ready = 0;
    Py_CLEAR(S->stats_type);
    Py_CLEAR(S->psi_type);
    Py_CLEAR(S->psiline_type);
#define CLEAR(slot) Py_CLEAR(*(slot))
    FOR_EACH_OBJECT(S, CLEAR);
#undef CLEAR
    Py_CLEAR(S->s_psi);
    Py_CLEAR(S->s_cgroup_id);
    for (int i = 0; i < 6; i++)
        Py_CLEAR(S->k_io_line[i]);
    return 0;
}

static void free_module(void *module) {
    clear(module);
    fr_state *S = state_of(module);
    PyMem_RawFree(S->buf);
    S->buf = NULL;
}

static int intern(PyObject **slot, const char *s) {
    *slot = PyUnicode_InternFromString(s);
    return *slot == NULL ? -1 : 0;
}

static int exec_module(PyObject *module) {
    fr_state *S = state_of(module);
    if (intern(&S->s_psi, "psi") || intern(&S->s_cgroup_id, "cgroup_id"))
        return -1;
    for (int i = 0; i < 6; i++)
        if (intern(&S->k_io_line[i], IO_KEYS[i]))
            return -1;
    S->buf = PyMem_RawMalloc(BUF);
    if (S->buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_fastread",
    .m_doc = "The sampling pass's stat-file reads in C (see _fastread.c).",
    .m_size = sizeof(fr_state),
    .m_methods = methods,
    .m_slots = slots,
    .m_traverse = traverse,
    .m_clear = clear,
    .m_free = free_module,
};

PyMODINIT_FUNC PyInit__fastread(void) { return PyModuleDef_Init(&module); }
