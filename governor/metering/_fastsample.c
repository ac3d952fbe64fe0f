/* governor.metering._fastsample: the sampling pass's mapping onto GroupSample in C
 * (optional accelerator).
 *
 * Two functions, each an exact equivalent of pure-Python code in
 * governor/metering/sampler.py that stays the fallback (tests/unit/test_fastsample.py runs
 * both over the same inputs and compares):
 *
 *   to_sample(st, node, path, started, t0, mono, created) -> GroupSample
 *       sampler.to_sample_at of the same GroupStats: wall = started +
 *       timedelta(seconds=mono - t0), storage_bytes None (the pass sets it later);
 *       anything it does not handle (a mapping that is not a dict, a pressure resource
 *       other than cpu/memory/io, times that are not floats) is passed to the Python
 *       to_sample_at (configure_sample's py_to_sample): a deliberate fallback, tested.
 *
 *   sample_groups(paths, start, groups, read, prefix, ...) -> index
 *       Sampler.sample's per-group loop for the groups on the fast path (below).  It
 *       reads each group through `read`, the cgroupfs layer's C reader
 *       (governor.cgroupfs._fastread.read_fast, which the reader hands out as
 *       StatReader.fast_read): this module never reads a file itself.
 *
 * Objects are built the way GroupSample's fast constructor in sampler.py builds them:
 * allocated by their type, each __slots__ member set through its member descriptor (the
 * frozen dataclass's __setattr__ is bypassed, as object.__setattr__ does in its
 * __init__).  configure_sample() hands over the class, its field names and the Python
 * fallback once (sampler.py, at import).
 *
 * State: everything is the module's (PEP 489 multi-phase init, PyModule_GetState), with
 * GC traverse/clear; the one process-wide pointer is datetime's C API capsule
 * (PyDateTime_IMPORT), which is how CPython hands it out.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "_slots.h"          /* descriptors */
#include <datetime.h>
#include <math.h>
#include <stdint.h>
#include <time.h>

#define MAX_FIELDS 40
#define N_SAMPLE_FIELDS 32

static const char *CPU_KEYS[6] = {"usage_usec", "user_usec", "system_usec", "nr_periods",
                                  "nr_throttled", "throttled_usec"};
static const char *EV_KEYS[6] = {"low", "high", "max", "oom", "oom_kill", "oom_group_kill"};
static const char *MS_KEYS[5] = {"anon", "file", "kernel", "sock", "shmem"};
static const char *IO_KEYS[5] = {"rbytes", "wbytes", "rios", "wios", "dbytes"};
static const char *PSI_RES[3] = {"cpu", "memory", "io"};

/* X-macro of the interned names the state holds: (member, text) */
#define NAMES(X)                                                                           \
    X(s_cpu, "cpu") X(s_memory_current, "memory_current") X(s_memory_peak, "memory_peak")   \
    X(s_swap_current, "swap_current") X(s_memory_events, "memory_events")                  \
    X(s_memory_stat, "memory_stat") X(s_io, "io") X(s_pids_current, "pids_current")         \
    X(s_psi, "psi") X(s_cgroup_id, "cgroup_id") X(s_some, "some") X(s_full, "full")         \
    X(s_total, "total") X(s_post_init, "__post_init__") X(s_fast, "fast")                  \
    X(s_cache, "cache") X(s_ino, "ino") X(s_fp_name, "metering.sample.group")

typedef struct {
    int sample_ready; /* configure_sample() was called */
    PyTypeObject *sample_type;
    PyObject *sample_descr[MAX_FIELDS];
    int n_sample_fields;
    PyObject *py_to_sample;
    /* interned names: GroupStats' attributes, the reader entry's, the failpoint's */
#define DECLARE(name, text) PyObject *name;
    NAMES(DECLARE)
#undef DECLARE
    PyObject *k_cpu[6], *k_ev[6], *k_ms[5], *k_io[5], *k_psi_res[3], *k_psi_names[3][2];
} ss_state;

static ss_state *state_of(PyObject *module) { return PyModule_GetState(module); }

/* ---- building slotted objects ------------------------------------------------------- */

/* an aware datetime whose tzinfo is datetime.UTC itself: what __post_init__ accepts first */
static int utc_datetime(PyObject *dt) {
    return PyDateTime_Check(dt) && ((PyDateTime_DateTime *)dt)->hastzinfo &&
           ((PyDateTime_DateTime *)dt)->tzinfo == PyDateTime_TimeZone_UTC;
}

/* A new instance of ``type`` with its members set from values[0:n] through descr[0:n]
 * (values are borrowed).  No __init__: GroupSample is a slotted dataclass. */
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

static PyObject *make_sample(ss_state *S, PyObject *st, PyObject *node, PyObject *path, PyObject *started,
                             PyObject *t0, PyObject *mono, PyObject *created) {
    PyObject *v[MAX_FIELDS] = {NULL};
    PyObject *cpu = NULL, *ev = NULL, *ms = NULL, *io = NULL, *psi = NULL, *result = NULL;
    int fb = 0, k = 0;
    if (get_dict(st, S->s_cpu, &cpu, &fb) < 0 || get_dict(st, S->s_memory_events, &ev, &fb) < 0 ||
        get_dict(st, S->s_memory_stat, &ms, &fb) < 0 || get_dict(st, S->s_io, &io, &fb) < 0)
        goto done;
    if (fb)
        goto fallback;
    psi = PyObject_GetAttr(st, S->s_psi);
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
    if ((v[k++] = PyObject_GetAttr(st, S->s_cgroup_id)) == NULL)
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
        PyObject *x = (cpu == Py_None) ? NULL : PyDict_GetItemWithError(cpu, S->k_cpu[i]);
        if (x == NULL && PyErr_Occurred())
            goto done;
        v[k++] = Py_NewRef(x ? x : Py_None);
    }
    PyObject *single[3] = {S->s_memory_current, S->s_memory_peak, S->s_swap_current};
    for (int i = 0; i < 3; i++)
        if ((v[k++] = PyObject_GetAttr(st, single[i])) == NULL)
            goto done;
    for (int i = 0; i < 6; i++) {
        PyObject *x = (ev == Py_None) ? NULL : PyDict_GetItemWithError(ev, S->k_ev[i]);
        if (x == NULL && PyErr_Occurred())
            goto done;
        v[k++] = Py_NewRef(x ? x : Py_None);
    }
    for (int i = 0; i < 5; i++) {
        PyObject *x = (ms == Py_None) ? NULL : PyDict_GetItemWithError(ms, S->k_ms[i]);
        if (x == NULL && PyErr_Occurred())
            goto done;
        v[k++] = Py_NewRef(x ? x : Py_None);
    }
    if ((v[k++] = PyObject_GetAttr(st, S->s_pids_current)) == NULL)
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
                PyObject *x = PyDict_GetItemWithError(c, S->k_io[i]), *n;
                if (x == NULL && PyErr_Occurred()) {
                    Py_DECREF(cc);
                    goto done;
                }
                n = x == NULL ? PyLong_FromLong(0)
                              : (PyLong_CheckExact(x) ? Py_NewRef(x) : PyNumber_Long(x));
                if (n == NULL || PyDict_SetItem(cc, S->k_io[i], n) < 0) {
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
                int eq = PyUnicode_Check(res) ? PyUnicode_Compare(res, S->k_psi_res[i]) : 1;
                if (eq == -1 && PyErr_Occurred())
                    goto done;
                if (eq == 0) {
                    r = i;
                    break;
                }
            }
            if (r < 0)
                goto fallback; /* an unknown resource: __post_init__ says what is wrong */
            PyObject *line[2] = {PyObject_GetAttr(p, S->s_some), NULL};
            if (line[0] == NULL)
                goto done;
            line[1] = PyObject_GetAttr(p, S->s_full);
            if (line[1] == NULL) {
                Py_DECREF(line[0]);
                goto done;
            }
            for (int j = 0; j < 2; j++) {
                if (j == 1 && line[1] == Py_None)
                    break;
                PyObject *tot = PyObject_GetAttr(line[j], S->s_total);
                int e = tot == NULL ? -1 : PyDict_SetItem(psid, S->k_psi_names[r][j], tot);
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
    /* values: the generic controllers' (governor.controllers), set by the pass after */
    v[k++] = Py_NewRef(Py_None);
    if (k != S->n_sample_fields) {
        PyErr_Format(PyExc_RuntimeError, "to_sample built %d fields, GroupSample has %d", k,
                     S->n_sample_fields);
        goto done;
    }
    result = new_slotted(S->sample_type, S->sample_descr, v, k);
    if (result == NULL)
        goto done;
    /* GroupSample.__post_init__: wall and created must be aware.  A wall in UTC, and a
     * created None or in UTC, need no check (the PSI keys made here are all known ones);
     * else run it.  (A created time is known for every group governor made: checking it
     * in Python was 3% of the daemon's CPU at 1,000 groups, issue #16.) */
    PyObject *wall = v[4];
    if (!utc_datetime(wall) || (created != Py_None && !utc_datetime(created))) {
        PyObject *r = PyObject_CallMethodNoArgs(result, S->s_post_init);
        if (r == NULL)
            Py_CLEAR(result);
        Py_XDECREF(r);
    }
    goto done;
fallback:
    result = PyObject_CallFunction(S->py_to_sample, "OOOOOOO", st, node, path, started, t0, mono,
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
    ss_state *S = state_of(self);
    PyObject *st, *node, *path, *started, *t0, *mono, *created;
    if (!PyArg_ParseTuple(args, "OUUOOOO", &st, &node, &path, &started, &t0, &mono, &created))
        return NULL;
    if (!S->sample_ready) {
        PyErr_SetString(PyExc_RuntimeError, "_fastsample.configure_sample() was not called");
        return NULL;
    }
    return make_sample(S, st, node, path, started, t0, mono, created);
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

/* one group of sample_groups: True when sampled, False when left to the caller */
static PyObject *sample_one(ss_state *S, PyObject *path, PyObject *groups, PyObject *read,
                            PyObject *prefix,
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
    PyObject *fast = PyObject_GetAttr(g, S->s_fast);
    PyObject *cache = fast ? PyObject_GetAttr(g, S->s_cache) : NULL;
    PyObject *ino = cache ? PyObject_GetAttr(g, S->s_ino) : NULL;
    Py_DECREF(g);
    if (ino == NULL) {
        Py_XDECREF(fast);
        Py_XDECREF(cache);
        return NULL;
    }
    int stop = fast == Py_None;
    PyObject *prev = stop ? NULL : PyDict_GetItemWithError(latest, path);
    if (prev != NULL) {
        PyObject *pid = PyObject_GetAttr(prev, S->s_cgroup_id);
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
        PyObject *rargs[3] = {fast, cache, ino};
        st = mono == NULL ? NULL : PyObject_Vectorcall(read, rargs, 3, NULL);
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
        PyObject *r = PyObject_CallOneArg(hook, S->s_fp_name);
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
    PyObject *sample = err ? NULL : make_sample(S, st, node, path, started, t0, mono, when);
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

/* sample_groups(paths, start, groups, read, prefix, latest, created, births, node, started,
 *               t0, samples, hook[, end]) -> index
 * From paths[start] on, for each group whose reader entry (groups[prefix + path], or
 * groups[prefix[path]] when prefix is a dict: StatReader.entries) has its fast
 * descriptors: stamp, read (read(entry.fast, entry.cache, entry.ino): StatReader.fast_read,
 * the cgroupfs layer's C read), call hook("metering.sample.group") when it is
 * not None, latest[path] = stats, append to samples the GroupSample (to_sample, with the
 * creation time of created[path] when its cgroup id is this one).  Returns the index of
 * the first group it leaves to the caller's Python loop: no entry or no fast descriptors
 * yet, a birth to note (path in births), a new incarnation to log (latest[path] has
 * another cgroup id), or any error while reading (the caller reads it again and reports
 * it); len(paths) when done, or end (exclusive) when given: the caller calls it again, and
 * the interpreter may hand the GIL to another thread in between.  The caller's loop does
 * exactly this for those groups. */
static PyObject *sample_groups(PyObject *self, PyObject *args) {
    ss_state *S = state_of(self);
    PyObject *paths, *groups, *read, *prefix, *latest, *created, *births, *node, *started, *t0,
        *samples, *hook;
    Py_ssize_t i, end = PY_SSIZE_T_MAX;
    if (!PyArg_ParseTuple(args, "O!nO!OOO!O!O!UOOO!O|n", &PyList_Type, &paths, &i,
                          &PyDict_Type, &groups, &read, &prefix, &PyDict_Type, &latest, &PyDict_Type, &created,
                          &PyDict_Type, &births, &node, &started, &t0, &PyList_Type, &samples,
                          &hook, &end))
        return NULL;
    if (!S->sample_ready) {
        PyErr_SetString(PyExc_RuntimeError, "_fastsample.configure_sample() was not called");
        return NULL;
    }
    for (; i < PyList_GET_SIZE(paths) && i < end; i++) {
        PyObject *path = PyList_GET_ITEM(paths, i);
        if (!PyUnicode_Check(path))
            break;
        Py_INCREF(path); /* held: the hook or a parser may run Python code */
        PyObject *r = sample_one(S, path, groups, read, prefix, latest, created, births, node,
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

static PyObject *configure_sample(PyObject *self, PyObject *args, PyObject *kw) {
    ss_state *S = state_of(self);
    static char *kwlist[] = {"sample_type", "sample_fields", "py_to_sample", NULL};
    PyObject *smt, *smf, *pts;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O!O", kwlist, &PyType_Type, &smt,
                                     &PyTuple_Type, &smf, &pts))
        return NULL;
    S->sample_ready = 0;
    if (descriptors((PyTypeObject *)smt, smf, S->sample_descr, MAX_FIELDS, &S->n_sample_fields) < 0)
        return NULL;
    if (S->n_sample_fields != N_SAMPLE_FIELDS) {
        PyErr_Format(PyExc_ValueError, "to_sample makes %d fields, not %d", N_SAMPLE_FIELDS,
                     S->n_sample_fields);
        return NULL;
    }
    Py_XSETREF(S->sample_type, (PyTypeObject *)Py_NewRef(smt));
    Py_XSETREF(S->py_to_sample, Py_NewRef(pts));
    S->sample_ready = 1;
    Py_RETURN_NONE;
}


static PyMethodDef methods[] = {
    {"configure_sample", (PyCFunction)(void (*)(void))configure_sample,
     METH_VARARGS | METH_KEYWORDS,
     "configure_sample(*, sample_type, sample_fields, py_to_sample): GroupSample, its "
     "fields in order, the Python to_sample (the fallback)"},
    {"sample_groups", sample_groups, METH_VARARGS,
     "sample_groups(paths, start, groups, read, prefix, latest, created, births, node, "
     "started, t0, samples, hook[, end]) -> index of the first group left to the caller"},
    {"to_sample", to_sample, METH_VARARGS,
     "to_sample(st, node, path, started, t0, mono, created) -> GroupSample"},
    {NULL, NULL, 0, NULL},
};

static int traverse(PyObject *module, visitproc visit, void *arg) {
    ss_state *S = state_of(module);
    Py_VISIT(S->sample_type);
    Py_VISIT(S->py_to_sample);
    for (int i = 0; i < MAX_FIELDS; i++)
        Py_VISIT(S->sample_descr[i]);
    return 0;
}

static int clear(PyObject *module) {
    ss_state *S = state_of(module);
    S->sample_ready = 0;
    Py_CLEAR(S->sample_type);
    Py_CLEAR(S->py_to_sample);
    for (int i = 0; i < MAX_FIELDS; i++)
        Py_CLEAR(S->sample_descr[i]);
#define CLEAR_NAME(name, text) Py_CLEAR(S->name);
    NAMES(CLEAR_NAME)
#undef CLEAR_NAME
    for (int i = 0; i < 6; i++) {
        Py_CLEAR(S->k_cpu[i]);
        Py_CLEAR(S->k_ev[i]);
        Py_CLEAR(S->k_psi_names[i / 2][i % 2]);
    }
    for (int i = 0; i < 5; i++) {
        Py_CLEAR(S->k_ms[i]);
        Py_CLEAR(S->k_io[i]);
    }
    for (int i = 0; i < 3; i++)
        Py_CLEAR(S->k_psi_res[i]);
    return 0;
}

static void free_module(void *module) { clear(module); }

static int intern(PyObject **slot, const char *s) {
    *slot = PyUnicode_InternFromString(s);
    return *slot == NULL ? -1 : 0;
}

static int exec_module(PyObject *module) {
    ss_state *S = state_of(module);
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL)
        return -1;
#define INTERN_NAME(name, text)                                                            \
    if (intern(&S->name, text))                                                            \
        return -1;
    NAMES(INTERN_NAME)
#undef INTERN_NAME
    for (int i = 0; i < 6; i++)
        if (intern(&S->k_cpu[i], CPU_KEYS[i]) || intern(&S->k_ev[i], EV_KEYS[i]))
            return -1;
    for (int i = 0; i < 5; i++)
        if (intern(&S->k_ms[i], MS_KEYS[i]) || intern(&S->k_io[i], IO_KEYS[i]))
            return -1;
    for (int i = 0; i < 3; i++) {
        if (intern(&S->k_psi_res[i], PSI_RES[i]))
            return -1;
        for (int j = 0; j < 2; j++) {
            S->k_psi_names[i][j] = PyUnicode_FromFormat("%s_%s", PSI_RES[i], j ? "full" : "some");
            if (S->k_psi_names[i][j] == NULL)
                return -1;
            PyUnicode_InternInPlace(&S->k_psi_names[i][j]);
        }
    }
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_fastsample",
    .m_doc = "The sampling pass's GroupSample mapping in C (see _fastsample.c).",
    .m_size = sizeof(ss_state),
    .m_methods = methods,
    .m_slots = slots,
    .m_traverse = traverse,
    .m_clear = clear,
    .m_free = free_module,
};

PyMODINIT_FUNC PyInit__fastsample(void) { return PyModuleDef_Init(&module); }
