/* governor.metering._fastmeter: the meter's per-sample step in C (optional accelerator).
 *
 *   interval(prev, cur) -> Interval | None | NotImplemented
 *   rollup_add(rollups, rkey, covered_us, quantities) -> None   (see its doc below)
 *   step_into(samples, last, ids, span, acc, done, anchors, ...) -> (leftover, n, skipped)
 *       Meter.step and Pending.add of a pass in one loop, for the samples whose
 *       incarnation has an anchor in memory (governor/metering/meter.py, Meter.step_into)
 *
 * governor.metering.usage.interval_between for two samples of the same incarnation, the
 * case of nearly every group in nearly every pass: the counters' deltas (None when a
 * counter is missing from either sample; None for the whole interval when one went
 * down: a reset), the IO totals over every device (a device first seen counts from 0; one
 * that went down is a reset), the memory and storage (writable layers) integrals by the
 * trapezoid rule rounded half to even (None unless both ends are known), the monotonic
 * length rounded half to even.  Every other case is handed back as
 * NotImplemented and the Python twin computes it, so its rules stay in one place: no
 * previous sample or another incarnation (counted from its birth), samples of different
 * groups (the twin raises), a monotonic clock that did not advance (the twin takes the
 * wall clock), a value that is not an int or does not fit 64 bits, io counters that are
 * not a dict of the five fields.  tests/unit/test_fastmeter.py runs both over the same
 * samples and compares.
 *
 * Module state only (the Interval class and interned names, set by configure() when
 * usage.py is imported); nothing global.  Errors raise; none is cleared.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <math.h>
#include "_slots.h"          /* slot_offset */

#define US_PER_S 1000000LL

/* the counters of a sample, in governor.metering.sample.COUNTER_FIELDS order */
#define N_COUNTERS 12
static const char *const COUNTER_NAMES[N_COUNTERS] = {
    "cpu_usage_usec", "cpu_user_usec", "cpu_system_usec", "cpu_nr_periods",
    "cpu_nr_throttled", "cpu_throttled_usec", "memory_events_low", "memory_events_high",
    "memory_events_max", "memory_events_oom", "memory_events_oom_kill",
    "memory_events_oom_group_kill",
};
/* where QUANTITIES' counters sit in COUNTER_NAMES */
enum { I_CPU = 0, I_USER = 1, I_SYSTEM = 2, I_THROTTLED = 5, I_OOM = 9, I_KILL = 10 };

/* io.stat fields summed, in IO_FIELDS order */
#define N_IO 5
static const char *const IO_NAMES[N_IO] = {"rbytes", "wbytes", "rios", "wios", "dbytes"};

/* the quantities of an interval (usage.QUANTITIES) */
#define N_QUANTITIES 13

/* the sample attributes read here: node, tenant, group, cgroup_id, wall, the counters,
 * monotonic, io, memory_current, storage_bytes */
#define N_SLOTS (N_COUNTERS + 9)

typedef struct {
    PyObject *interval_type;   /* usage.Interval (a tuple subclass), NULL until configure */
    PyObject *counters[N_COUNTERS];
    PyObject *io_fields[N_IO];
    PyObject *s_node, *s_tenant, *s_group, *s_cgroup_id, *s_wall, *s_monotonic,
        *s_memory_current, *s_storage_bytes, *s_io;
    /* the type whose slots slot_off locates (a strong reference; NULL: none yet), and
     * where each of slot_names (the names above, borrowed) sits in its instances (-1: not
     * a slot, read through getattr) */
    PyObject *slot_type;
    PyObject *slot_names[N_SLOTS];
    Py_ssize_t slot_off[N_SLOTS];
} state_t;

static state_t *get_state(PyObject *module)
{
    return (state_t *)PyModule_GetState(module);
}

/* locate the slots of ``type`` (the samples' type: done again only when it changes) */
static void locate_slots(state_t *st, PyTypeObject *type)
{
    Py_XSETREF(st->slot_type, Py_NewRef((PyObject *)type));
    for (int i = 0; i < N_SLOTS; i++)
        st->slot_off[i] = slot_offset(type, st->slot_names[i]);
}

/* getattr(obj, name), a new reference: from the slot when ``obj`` is exactly of the type
 * located and the slot is set (an unset one raises through getattr) */
static PyObject *get_attr(state_t *st, PyObject *obj, PyObject *name)
{
    if ((PyObject *)Py_TYPE(obj) == st->slot_type) {
        for (int i = 0; i < N_SLOTS; i++) {
            if (st->slot_names[i] != name)
                continue;
            Py_ssize_t off = st->slot_off[i];
            if (off >= 0) {
                PyObject *v = *(PyObject **)((char *)obj + off);
                if (v != NULL)
                    return Py_NewRef(v);
            }
            break;
        }
    }
    return PyObject_GetAttr(obj, name);
}

#define FALLBACK() do { result = Py_NewRef(Py_NotImplemented); goto done; } while (0)

/* an attribute as a 64-bit int: 1 and *out set; 0: None (*out untouched); -1: error set;
 * -2: not handled here (not an exact int, or past 64 bits) */
static int get_ll(state_t *st, PyObject *obj, PyObject *name, long long *out)
{
    PyObject *v = get_attr(st, obj, name);
    if (v == NULL)
        return -1;
    int r;
    if (v == Py_None) {
        r = 0;
    } else if (!PyLong_CheckExact(v)) {
        r = -2;
    } else {
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (x == -1 && PyErr_Occurred())
            r = -1;
        else if (overflow)
            r = -2;
        else {
            *out = x;
            r = 1;
        }
    }
    Py_DECREF(v);
    return r;
}

/* an io counter of one device's dict: 1 set; -1 error; -2 not handled */
static int io_field(PyObject *d, PyObject *name, long long *out)
{
    PyObject *v = PyDict_GetItemWithError(d, name);   /* borrowed */
    if (v == NULL)
        return PyErr_Occurred() ? -1 : -2;
    if (!PyLong_CheckExact(v))
        return -2;
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (overflow)
        return -2;
    *out = x;
    return 1;
}

/* the five io totals since prev: 1 set; 0 a reset; -1 error; -2 not handled */
static int io_totals(state_t *st, PyObject *prev, PyObject *cur, long long tot[N_IO])
{
    for (int f = 0; f < N_IO; f++)
        tot[f] = 0;
    PyObject *cio = get_attr(st, cur, st->s_io);
    if (cio == NULL)
        return -1;
    int r = 1;
    PyObject *pio = NULL;
    if (!PyDict_Check(cio)) {
        r = -2;
        goto out;
    }
    if (PyDict_GET_SIZE(cio) == 0)
        goto out;
    pio = get_attr(st, prev, st->s_io);
    if (pio == NULL) {
        r = -1;
        goto out;
    }
    if (!PyDict_Check(pio)) {
        r = -2;
        goto out;
    }
    Py_ssize_t pos = 0;
    PyObject *dev, *now;
    while (PyDict_Next(cio, &pos, &dev, &now)) {
        if (!PyDict_Check(now)) {
            r = -2;
            goto out;
        }
        PyObject *before = PyDict_GetItemWithError(pio, dev);   /* borrowed */
        if (before == NULL && PyErr_Occurred()) {
            r = -1;
            goto out;
        }
        if (before != NULL && !PyDict_Check(before)) {
            r = -2;
            goto out;
        }
        long long d[N_IO];
        for (int f = 0; f < N_IO; f++) {
            long long n, b = 0;
            int k = io_field(now, st->io_fields[f], &n);
            if (k == 1 && before != NULL)
                k = io_field(before, st->io_fields[f], &b);
            if (k != 1) {
                r = k;
                goto out;
            }
            if ((b < 0 && n > LLONG_MAX + b) || (b > 0 && n < LLONG_MIN + b)) {
                r = -2;
                goto out;
            }
            d[f] = n - b;
        }
        /* as the twin: a device's deltas are all computed, then checked */
        for (int f = 0; f < N_IO; f++)
            if (d[f] < 0) {
                r = 0;
                goto out;
            }
        for (int f = 0; f < N_IO; f++) {
            if (tot[f] > LLONG_MAX - d[f]) {
                r = -2;
                goto out;
            }
            tot[f] += d[f];
        }
    }
out:
    Py_DECREF(cio);
    Py_XDECREF(pio);
    return r;
}

/* (a + b) / 2 * dt_us in byte-seconds, rounded half to even, for a, b >= 0 and dt > 0:
 * 1 and *out set, or -2 when the result does not fit 64 bits */
static int trapezoid(long long a, long long b, long long dt_us, long long *out)
{
    unsigned __int128 num = ((unsigned __int128)(unsigned long long)a + (unsigned long long)b)
                            * (unsigned long long)dt_us;
    unsigned __int128 den = 2 * (unsigned __int128)US_PER_S;
    unsigned __int128 q = num / den, r = num % den;
    if (r > (unsigned __int128)US_PER_S || (r == (unsigned __int128)US_PER_S && (q & 1)))
        q += 1;
    if (q > (unsigned __int128)LLONG_MAX)
        return -2;
    *out = (long long)q;
    return 1;
}

/* The integral of the gauge ``name`` over dt_us, the trapezoid of its values in prev and
 * cur: 1 and *out set; 0 unknown (None in either: the twin's rule); -1 an error set; -2
 * not handled here (not an exact int, past 64 bits, negative, or a result past 64 bits) */
static int gauge_integral(state_t *st, PyObject *prev, PyObject *cur, PyObject *name,
                          long long dt_us, long long *out)
{
    long long a = 0, b = 0;
    int ka = get_ll(st, prev, name, &a);
    if (ka == -1)
        return -1;
    int kb = get_ll(st, cur, name, &b);
    if (kb == -1)
        return -1;
    if (ka == -2 || kb == -2 || (ka == 1 && a < 0) || (kb == 1 && b < 0))
        return -2;
    if (ka != 1 || kb != 1)
        return 0;
    return trapezoid(a, b, dt_us, out);
}

static PyObject *new_int_or_none(int known, long long v)
{
    return known ? PyLong_FromLongLong(v) : Py_NewRef(Py_None);
}

/* one interval of two samples of one incarnation, computed (no objects made) */
typedef struct {
    PyObject *pw, *cw;        /* prev.wall and cur.wall: new references when set */
    long long dt_us;
    int known[N_QUANTITIES];  /* 0: the quantity is unknown (None) */
    long long q[N_QUANTITIES];
} ival_t;

/* usage.interval_between(prev, cur) for prev not None, computed into *iv: 1 an interval;
 * 0 None (it cannot be known: cur not later, a reset); 2 the twin's case (NotImplemented);
 * -1 an error set.  iv->pw and iv->cw are set (new references) on 1 and 0, else NULL. */
static int compute(state_t *st, PyObject *prev, PyObject *cur, ival_t *iv)
{
    PyObject *pm = NULL, *cm = NULL;
    int r = -1;
    iv->pw = iv->cw = NULL;
    if ((PyObject *)Py_TYPE(cur) != st->slot_type)
        locate_slots(st, Py_TYPE(cur));
    /* same group, same incarnation: else the twin (it raises, or counts from birth) */
    PyObject *same_names[4] = {st->s_cgroup_id, st->s_node, st->s_tenant, st->s_group};
    for (int i = 0; i < 4; i++) {
        PyObject *a = get_attr(st, prev, same_names[i]);
        if (a == NULL)
            return -1;
        PyObject *b = get_attr(st, cur, same_names[i]);
        if (b == NULL) {
            Py_DECREF(a);
            return -1;
        }
        int eq = PyObject_RichCompareBool(a, b, Py_EQ);
        Py_DECREF(a);
        Py_DECREF(b);
        if (eq < 0)
            return -1;
        if (!eq)
            return 2;
    }
    iv->pw = get_attr(st, prev, st->s_wall);
    if (iv->pw == NULL)
        goto fail;
    iv->cw = get_attr(st, cur, st->s_wall);
    if (iv->cw == NULL)
        goto fail;
    int later = PyObject_RichCompareBool(iv->cw, iv->pw, Py_GT);
    if (later < 0)
        goto fail;
    if (!later)
        return 0;
    /* counters: deltas, None when missing from either; a decrease is a reset */
    long long delta[N_COUNTERS];
    int known[N_COUNTERS];
    for (int i = 0; i < N_COUNTERS; i++) {
        long long b = 0, n = 0;
        int kb = get_ll(st, prev, st->counters[i], &b);
        if (kb == -1)
            goto fail;
        int kn = get_ll(st, cur, st->counters[i], &n);
        if (kn == -1)
            goto fail;
        if (kb == -2 || kn == -2) {
            r = 2;
            goto fail;
        }
        known[i] = kb == 1 && kn == 1;
        delta[i] = 0;
        if (!known[i])
            continue;
        if (n < b)
            return 0;
        if (b < 0 && n > LLONG_MAX + b) {
            r = 2;
            goto fail;
        }
        delta[i] = n - b;
    }
    /* the monotonic length, rounded half to even as round() does */
    pm = get_attr(st, prev, st->s_monotonic);
    if (pm == NULL)
        goto fail;
    cm = get_attr(st, cur, st->s_monotonic);
    if (cm == NULL)
        goto fail;
    if (!PyFloat_CheckExact(pm) || !PyFloat_CheckExact(cm)) {
        r = 2;
        goto fail;
    }
    double x = (PyFloat_AS_DOUBLE(cm) - PyFloat_AS_DOUBLE(pm)) * 1e6;
    Py_CLEAR(pm);
    Py_CLEAR(cm);
    if (!(x > 0.5 && x < 9.0e18)) {   /* <= 0 after rounding (wall clock), NaN, huge */
        r = 2;
        goto fail;
    }
    double rx = nearbyint(x);   /* the default rounding mode: to nearest, ties to even */
    long long dt_us = (long long)rx;
    long long io[N_IO];
    int k = io_totals(st, prev, cur, io);
    if (k == -1)
        goto fail;
    if (k == -2) {
        r = 2;
        goto fail;
    }
    if (k == 0)
        return 0;
    long long mem = 0, sto = 0;
    int mem_known = gauge_integral(st, prev, cur, st->s_memory_current, dt_us, &mem);
    if (mem_known == -1)
        goto fail;
    if (mem_known == -2) {
        r = 2;
        goto fail;
    }
    int sto_known = gauge_integral(st, prev, cur, st->s_storage_bytes, dt_us, &sto);
    if (sto_known == -1)
        goto fail;
    if (sto_known == -2) {
        r = 2;
        goto fail;
    }
    iv->dt_us = dt_us;
    const int kq[N_QUANTITIES] = {known[I_CPU], known[I_USER], known[I_SYSTEM],
                                  known[I_THROTTLED], mem_known, 1, 1, 1, 1, 1,
                                  known[I_OOM], known[I_KILL], sto_known};
    const long long vq[N_QUANTITIES] = {delta[I_CPU], delta[I_USER], delta[I_SYSTEM],
                                        delta[I_THROTTLED], mem, io[0], io[1], io[2],
                                        io[3], io[4], delta[I_OOM], delta[I_KILL], sto};
    for (int i = 0; i < N_QUANTITIES; i++) {
        iv->known[i] = kq[i];
        iv->q[i] = kq[i] ? vq[i] : 0;
    }
    return 1;
fail:
    Py_XDECREF(pm);
    Py_XDECREF(cm);
    Py_CLEAR(iv->pw);
    Py_CLEAR(iv->cw);
    return r;
}

PyDoc_STRVAR(interval_doc,
"interval(prev, cur, /) -> Interval | None | NotImplemented\n\n"
"usage.interval_between(prev, cur) for two samples of one incarnation; NotImplemented\n"
"for the cases the Python twin computes (see the module's source).");

static PyObject *interval(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "interval() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    state_t *st = get_state(module);
    if (st->interval_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_fastmeter.configure() was not called");
        return NULL;
    }
    PyObject *prev = args[0], *cur = args[1];
    if (prev == Py_None)
        return Py_NewRef(Py_NotImplemented);
    ival_t iv;
    int r = compute(st, prev, cur, &iv);
    if (r == -1)
        return NULL;
    if (r == 2)
        return Py_NewRef(Py_NotImplemented);
    PyObject *result = NULL;
    if (r == 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *q = PyTuple_New(N_QUANTITIES);
    if (q == NULL)
        goto done;
    int failed = 0;
    for (int i = 0; i < N_QUANTITIES; i++) {
        PyObject *v = new_int_or_none(iv.known[i], iv.q[i]);
        if (v == NULL)
            failed = 1;
        PyTuple_SET_ITEM(q, i, v);   /* a NULL item is fine in a tuple freed below */
    }
    if (failed) {
        Py_DECREF(q);
        goto done;
    }
    PyObject *dt = PyLong_FromLongLong(iv.dt_us);
    if (dt == NULL) {
        Py_DECREF(q);
        goto done;
    }
    /* Interval(prev.wall, cur.wall, dt_us, False, q): a NamedTuple is a tuple subclass,
     * made as its own _make makes it (tuple.__new__(cls, iterable)) */
    PyObject *fields = PyTuple_Pack(5, iv.pw, iv.cw, dt, Py_False, q);
    Py_DECREF(dt);
    Py_DECREF(q);
    if (fields == NULL)
        goto done;
    PyObject *targs = PyTuple_Pack(1, fields);
    Py_DECREF(fields);
    if (targs == NULL)
        goto done;
    result = PyTuple_Type.tp_new((PyTypeObject *)st->interval_type, targs, NULL);
    Py_DECREF(targs);
done:
    Py_XDECREF(iv.pw);
    Py_XDECREF(iv.cw);
    return result;
}

PyDoc_STRVAR(rollup_add_doc,
"rollup_add(rollups, rkey, covered_us, quantities, /) -> None\n\n"
"Add one interval piece into rollups[rkey] ([covered_us, intervals, *quantities], None\n"
"quantities as 0), making the entry when absent: meter.add_interval's accumulation.");

/* acc[i] += v for a Python int v (ints of any size: sums may pass 64 bits) */
static int add_at(PyObject *acc, Py_ssize_t i, PyObject *v)
{
    PyObject *old = PyList_GET_ITEM(acc, i);
    PyObject *sum = PyNumber_Add(old, v);
    if (sum == NULL)
        return -1;
    PyList_SET_ITEM(acc, i, sum);
    Py_DECREF(old);
    return 0;
}

static PyObject *rollup_add(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "rollup_add() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *rollups = args[0], *rkey = args[1], *covered = args[2], *q = args[3];
    if (!PyDict_Check(rollups) || !PyTuple_Check(q)) {
        PyErr_SetString(PyExc_TypeError, "rollup_add(rollups: dict, rkey, covered_us: int, "
                        "quantities: tuple)");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(q);
    PyObject *acc = PyDict_GetItemWithError(rollups, rkey);   /* borrowed */
    if (acc == NULL) {
        if (PyErr_Occurred())
            return NULL;
        acc = PyList_New(n + 2);
        if (acc == NULL)
            return NULL;
        PyList_SET_ITEM(acc, 0, Py_NewRef(covered));
        PyList_SET_ITEM(acc, 1, PyLong_FromLong(1));
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *v = PyTuple_GET_ITEM(q, i);
            if (v == Py_None) {
                v = PyLong_FromLong(0);
                if (v == NULL) {
                    Py_DECREF(acc);
                    return NULL;
                }
                PyList_SET_ITEM(acc, i + 2, v);
            } else {
                PyList_SET_ITEM(acc, i + 2, Py_NewRef(v));
            }
        }
        if (PyList_GET_ITEM(acc, 1) == NULL) {
            Py_DECREF(acc);
            return NULL;
        }
        int r = PyDict_SetItem(rollups, rkey, acc);
        Py_DECREF(acc);
        if (r < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (!PyList_Check(acc) || PyList_GET_SIZE(acc) != n + 2) {
        PyErr_SetString(PyExc_ValueError, "a rollup entry is not a list of covered_us, "
                        "intervals and one value per quantity");
        return NULL;
    }
    PyObject *one = PyLong_FromLong(1);
    if (one == NULL)
        return NULL;
    int r = add_at(acc, 0, covered);
    if (r == 0)
        r = add_at(acc, 1, one);
    Py_DECREF(one);
    for (Py_ssize_t i = 0; r == 0 && i < n; i++) {
        PyObject *v = PyTuple_GET_ITEM(q, i);
        if (v == Py_None)
            continue;
        int t = PyObject_IsTrue(v);
        if (t < 0)
            return NULL;
        if (t)
            r = add_at(acc, i + 2, v);
    }
    if (r < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(step_into_doc,
"step_into(samples, last, ids, span, acc, done, anchors, pending_anchors, vseries, vprev,\n"
"          hour_floor, hour, /) -> (leftover, samples, skipped)\n\n"
"Meter.step (with_rollups=False) and Pending.add of it, for each sample whose\n"
"incarnation has an anchor in ``last``: see governor/metering/meter.py, Meter.step_into.");

/* [dt_us, 1, *quantities (unknown: 0)], a new list */
static PyObject *new_acc(const ival_t *iv)
{
    PyObject *a = PyList_New(N_QUANTITIES + 2);
    if (a == NULL)
        return NULL;
    PyObject *items[N_QUANTITIES + 2];
    items[0] = PyLong_FromLongLong(iv->dt_us);
    items[1] = PyLong_FromLong(1);
    for (int i = 0; i < N_QUANTITIES; i++)
        items[i + 2] = PyLong_FromLongLong(iv->q[i]);
    int failed = 0;
    for (int i = 0; i < N_QUANTITIES + 2; i++) {
        if (items[i] == NULL)
            failed = 1;
        PyList_SET_ITEM(a, i, items[i]);
    }
    if (failed) {
        Py_DECREF(a);
        return NULL;
    }
    return a;
}

/* acc += [dt_us, 1, *quantities], a known quantity that is not 0 only (rollup_add's rule) */
static int acc_add(PyObject *acc, const ival_t *iv)
{
    if (!PyList_Check(acc) || PyList_GET_SIZE(acc) != N_QUANTITIES + 2) {
        PyErr_SetString(PyExc_ValueError, "a pending entry is not a list of duration_us, "
                        "pieces and one value per quantity");
        return -1;
    }
    for (int i = -2; i < N_QUANTITIES; i++) {
        long long v = i == -2 ? iv->dt_us : i == -1 ? 1 : iv->q[i];
        if (i >= 0 && (!iv->known[i] || v == 0))
            continue;
        PyObject *old = PyList_GET_ITEM(acc, i + 2);
        PyObject *sum = NULL;
        if (PyLong_CheckExact(old)) {
            int overflow = 0;
            long long o = PyLong_AsLongLongAndOverflow(old, &overflow);
            if (o == -1 && PyErr_Occurred())
                return -1;
            if (!overflow && !((v > 0 && o > LLONG_MAX - v) || (v < 0 && o < LLONG_MIN - v)))
                sum = PyLong_FromLongLong(o + v);
        }
        if (sum == NULL) {
            if (PyErr_Occurred())
                return -1;
            PyObject *pv = PyLong_FromLongLong(v);
            if (pv == NULL)
                return -1;
            sum = PyNumber_Add(old, pv);
            Py_DECREF(pv);
            if (sum == NULL)
                return -1;
        }
        PyList_SET_ITEM(acc, i + 2, sum);
        Py_DECREF(old);
    }
    return 0;
}

/* the hour [*lo, *hi) that holds ``start`` (kept from the last call when it does):
 * Pending.add's cache of hour_floor; 0, or -1 an error set */
static int hour_of(PyObject *start, PyObject *hour_floor, PyObject *hour,
                   PyObject **lo, PyObject **hi)
{
    if (*lo != NULL) {
        int a = PyObject_RichCompareBool(*lo, start, Py_LE);
        if (a < 0)
            return -1;
        if (a) {
            int b = PyObject_RichCompareBool(start, *hi, Py_LT);
            if (b < 0)
                return -1;
            if (b)
                return 0;
        }
    }
    PyObject *l = PyObject_CallOneArg(hour_floor, start);
    if (l == NULL)
        return -1;
    PyObject *h = PyNumber_Add(l, hour);
    if (h == NULL) {
        Py_DECREF(l);
        return -1;
    }
    Py_XSETREF(*lo, l);
    Py_XSETREF(*hi, h);
    return 0;
}

/* Pending.add of one interval (never from a birth) of the group id ``gid`` */
static int pend(PyObject *span, PyObject *acc, PyObject *done, PyObject *gid,
                const ival_t *iv, PyObject *hour_floor, PyObject *hour,
                PyObject **lo, PyObject **hi)
{
    PyObject *sp = PyDict_GetItemWithError(span, gid);   /* borrowed */
    if (sp == NULL && PyErr_Occurred())
        return -1;
    if (sp != NULL) {
        if (!PyList_Check(sp) || PyList_GET_SIZE(sp) != 4) {
            PyErr_SetString(PyExc_ValueError, "a pending span is not a list of start, end, "
                            "the end of its hour and from_creation");
            return -1;
        }
        int same = PyObject_RichCompareBool(PyList_GET_ITEM(sp, 1), iv->pw, Py_EQ);
        if (same < 0)
            return -1;
        if (same) {
            int within = PyObject_RichCompareBool(iv->cw, PyList_GET_ITEM(sp, 2), Py_LE);
            if (within < 0)
                return -1;
            if (within) {
                PyObject *a = PyDict_GetItemWithError(acc, gid);   /* borrowed */
                if (a == NULL) {
                    if (!PyErr_Occurred())
                        PyErr_SetObject(PyExc_KeyError, gid);
                    return -1;
                }
                if (acc_add(a, iv) < 0)
                    return -1;
                Py_INCREF(iv->cw);
                PyList_SetItem(sp, 1, iv->cw);   /* steals; drops the old end */
                return 0;
            }
        }
        /* the span is closed: done.append((gid, sp, acc.pop(gid))) */
        PyObject *a = PyDict_GetItemWithError(acc, gid);
        if (a == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetObject(PyExc_KeyError, gid);
            return -1;
        }
        PyObject *entry = PyTuple_Pack(3, gid, sp, a);
        if (entry == NULL)
            return -1;
        int r = PyList_Append(done, entry);
        Py_DECREF(entry);
        if (r < 0 || PyDict_DelItem(acc, gid) < 0)
            return -1;
    }
    if (hour_of(iv->pw, hour_floor, hour, lo, hi) < 0)
        return -1;
    int fits = PyObject_RichCompareBool(iv->cw, *hi, Py_LE);
    if (fits < 0)
        return -1;
    PyObject *nsp = PyList_New(4);
    if (nsp == NULL)
        return -1;
    PyList_SET_ITEM(nsp, 0, Py_NewRef(iv->pw));
    PyList_SET_ITEM(nsp, 1, Py_NewRef(iv->cw));
    PyList_SET_ITEM(nsp, 2, Py_NewRef(fits ? *hi : iv->pw));
    PyList_SET_ITEM(nsp, 3, Py_NewRef(Py_False));
    int r = PyDict_SetItem(span, gid, nsp);
    Py_DECREF(nsp);
    if (r < 0)
        return -1;
    PyObject *na = new_acc(iv);
    if (na == NULL)
        return -1;
    r = PyDict_SetItem(acc, gid, na);
    Py_DECREF(na);
    return r;
}

static PyObject *step_into(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 12) {
        PyErr_Format(PyExc_TypeError, "step_into() takes 12 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *samples = args[0], *last = args[1], *ids = args[2], *span = args[3],
        *acc = args[4], *done = args[5], *anchors = args[6], *pending_anchors = args[7],
        *vseries = args[8], *vprev = args[9], *hour_floor = args[10], *hour = args[11];
    if (!PyList_Check(samples) || !PyDict_Check(last) || !PyDict_Check(ids) ||
            !PyDict_Check(span) || !PyDict_Check(acc) || !PyList_Check(done) ||
            !PyDict_Check(anchors) || !PyDict_Check(pending_anchors) ||
            !PyDict_Check(vseries) || !PyDict_Check(vprev)) {
        PyErr_SetString(PyExc_TypeError, "step_into(samples: list, last: dict, ids: dict, "
                        "span: dict, acc: dict, done: list, anchors: dict, "
                        "pending_anchors: dict, vseries: dict, vprev: dict, hour_floor, "
                        "hour)");
        return NULL;
    }
    state_t *st = get_state(module);
    PyObject *leftover = PyList_New(0);
    if (leftover == NULL)
        return NULL;
    PyObject *lo = NULL, *hi = NULL, *s_values = NULL, *held = NULL;
    long long n = 0, skipped = 0;
    s_values = PyUnicode_InternFromString("values");
    if (s_values == NULL)
        goto error;
    /* the keys of the samples left to the twin: a later sample of one of them is left
     * too, so the twin pairs them in order */
    held = PySet_New(NULL);
    if (held == NULL)
        goto error;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(samples); i++) {
        PyObject *cur = PyList_GET_ITEM(samples, i);
        if ((PyObject *)Py_TYPE(cur) != st->slot_type)
            locate_slots(st, Py_TYPE(cur));
        PyObject *t = get_attr(st, cur, st->s_tenant);
        if (t == NULL)
            goto error;
        PyObject *g = get_attr(st, cur, st->s_group);
        if (g == NULL) {
            Py_DECREF(t);
            goto error;
        }
        PyObject *c = get_attr(st, cur, st->s_cgroup_id);
        if (c == NULL) {
            Py_DECREF(t);
            Py_DECREF(g);
            goto error;
        }
        PyObject *key = PyTuple_Pack(3, t, g, c);
        Py_DECREF(t);
        Py_DECREF(g);
        Py_DECREF(c);
        if (key == NULL)
            goto error;
        /* a second sample of the key in this pass, a key left to the twin already, or no
         * anchor in memory: the twin's */
        int again = PyDict_Contains(anchors, key);
        if (again == 0)
            again = PySet_Contains(held, key);
        PyObject *prev = again ? NULL : PyDict_GetItemWithError(last, key);   /* borrowed */
        if (again < 0 || (prev == NULL && PyErr_Occurred())) {
            Py_DECREF(key);
            goto error;
        }
        if (prev == NULL) {
            int bad = PySet_Add(held, key) < 0 || PyList_Append(leftover, cur) < 0;
            Py_DECREF(key);
            if (bad)
                goto error;
            continue;
        }
        ival_t iv;
        int r = compute(st, prev, cur, &iv);
        if (r == -1) {
            Py_DECREF(key);
            goto error;
        }
        if (r == 2) {
            int bad = PySet_Add(held, key) < 0 || PyList_Append(leftover, cur) < 0;
            Py_DECREF(key);
            if (bad)
                goto error;
            continue;
        }
        if (r == 0) {
            /* not later than its anchor: left out, as Meter.step leaves it (not counted);
             * later but unknowable (a reset): counted as skipped, the new anchor */
            int later = PyObject_RichCompareBool(iv.cw, iv.pw, Py_GT);
            if (later <= 0) {
                Py_DECREF(iv.pw);
                Py_DECREF(iv.cw);
                Py_DECREF(key);
                if (later < 0)
                    goto error;
                continue;
            }
            skipped++;
        }
        PyObject *gid = PyDict_GetItemWithError(ids, key);   /* borrowed */
        int bad = gid == NULL;
        if (bad && !PyErr_Occurred())
            PyErr_SetObject(PyExc_KeyError, key);
        if (!bad && r == 1)
            bad = pend(span, acc, done, gid, &iv, hour_floor, hour, &lo, &hi) < 0;
        Py_DECREF(iv.pw);
        Py_DECREF(iv.cw);
        if (!bad)
            bad = PyDict_SetItem(anchors, key, cur) < 0 ||
                  PyDict_SetItem(pending_anchors, gid, cur) < 0;
        if (!bad) {
            /* the generic controllers' values are metered by meter_values, over the
             * same pairs */
            PyObject *vals = PyObject_GetAttr(cur, s_values);
            bad = vals == NULL;
            if (!bad && vals != Py_None) {
                PyObject *one = PyList_New(1);
                bad = one == NULL;
                if (!bad) {
                    PyList_SET_ITEM(one, 0, Py_NewRef(cur));
                    bad = PyDict_SetItem(vseries, key, one) < 0 ||
                          PyDict_SetItem(vprev, key, prev) < 0;
                    Py_DECREF(one);
                }
            }
            Py_XDECREF(vals);
        }
        Py_DECREF(key);
        if (bad)
            goto error;
        n++;
    }
    Py_XDECREF(lo);
    Py_XDECREF(hi);
    Py_DECREF(s_values);
    Py_DECREF(held);
    PyObject *res = Py_BuildValue("(NLL)", leftover, n, skipped);
    return res;
error:
    Py_XDECREF(lo);
    Py_XDECREF(hi);
    Py_XDECREF(s_values);
    Py_XDECREF(held);
    Py_DECREF(leftover);
    return NULL;
}

PyDoc_STRVAR(configure_doc,
"configure(interval_type, /) -> None\n\n"
"The Interval class (governor.metering.usage.Interval, a tuple subclass) to build.");

static PyObject *configure(PyObject *module, PyObject *arg)
{
    if (!PyType_Check(arg) || !PyType_IsSubtype((PyTypeObject *)arg, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "configure() takes a tuple subclass");
        return NULL;
    }
    state_t *st = get_state(module);
    Py_XSETREF(st->interval_type, Py_NewRef(arg));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"interval", (PyCFunction)(void (*)(void))interval, METH_FASTCALL, interval_doc},
    {"rollup_add", (PyCFunction)(void (*)(void))rollup_add, METH_FASTCALL, rollup_add_doc},
    {"step_into", (PyCFunction)(void (*)(void))step_into, METH_FASTCALL, step_into_doc},
    {"configure", configure, METH_O, configure_doc},
    {NULL, NULL, 0, NULL},
};

static int exec_module(PyObject *m)
{
    state_t *st = get_state(m);
    for (int i = 0; i < N_COUNTERS; i++)
        if ((st->counters[i] = PyUnicode_InternFromString(COUNTER_NAMES[i])) == NULL)
            return -1;
    for (int i = 0; i < N_IO; i++)
        if ((st->io_fields[i] = PyUnicode_InternFromString(IO_NAMES[i])) == NULL)
            return -1;
    if ((st->s_node = PyUnicode_InternFromString("node")) == NULL ||
            (st->s_tenant = PyUnicode_InternFromString("tenant")) == NULL ||
            (st->s_group = PyUnicode_InternFromString("group")) == NULL ||
            (st->s_cgroup_id = PyUnicode_InternFromString("cgroup_id")) == NULL ||
            (st->s_wall = PyUnicode_InternFromString("wall")) == NULL ||
            (st->s_monotonic = PyUnicode_InternFromString("monotonic")) == NULL ||
            (st->s_memory_current = PyUnicode_InternFromString("memory_current")) == NULL ||
            (st->s_storage_bytes = PyUnicode_InternFromString("storage_bytes")) == NULL ||
            (st->s_io = PyUnicode_InternFromString("io")) == NULL)
        return -1;
    PyObject *slots[N_SLOTS] = {st->s_node, st->s_tenant, st->s_group, st->s_cgroup_id,
                                st->s_wall};
    for (int i = 0; i < N_COUNTERS; i++)
        slots[5 + i] = st->counters[i];
    slots[5 + N_COUNTERS] = st->s_monotonic;
    slots[6 + N_COUNTERS] = st->s_io;
    slots[7 + N_COUNTERS] = st->s_memory_current;
    slots[8 + N_COUNTERS] = st->s_storage_bytes;
    for (int i = 0; i < N_SLOTS; i++)
        st->slot_names[i] = slots[i];
    if (PyModule_AddIntConstant(m, "N_COUNTERS", N_COUNTERS) < 0 ||
            PyModule_AddIntConstant(m, "N_QUANTITIES", N_QUANTITIES) < 0)
        return -1;
    return 0;
}

static int traverse(PyObject *m, visitproc visit, void *arg)
{
    state_t *st = get_state(m);
    if (st == NULL)
        return 0;
    Py_VISIT(st->interval_type);
    Py_VISIT(st->slot_type);
    return 0;
}

static int clear(PyObject *m)
{
    state_t *st = get_state(m);
    if (st == NULL)
        return 0;
    Py_CLEAR(st->interval_type);
    Py_CLEAR(st->slot_type);
    for (int i = 0; i < N_COUNTERS; i++)
        Py_CLEAR(st->counters[i]);
    for (int i = 0; i < N_IO; i++)
        Py_CLEAR(st->io_fields[i]);
    Py_CLEAR(st->s_node);
    Py_CLEAR(st->s_tenant);
    Py_CLEAR(st->s_group);
    Py_CLEAR(st->s_cgroup_id);
    Py_CLEAR(st->s_wall);
    Py_CLEAR(st->s_monotonic);
    Py_CLEAR(st->s_memory_current);
    Py_CLEAR(st->s_storage_bytes);
    Py_CLEAR(st->s_io);
    return 0;
}

static void free_module(void *m)
{
    clear((PyObject *)m);
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "governor.metering._fastmeter",
    .m_doc = "The meter's per-sample step in C (twin: governor/metering/usage.py).",
    .m_size = sizeof(state_t),
    .m_methods = methods,
    .m_slots = slots,
    .m_traverse = traverse,
    .m_clear = clear,
    .m_free = free_module,
};

PyMODINIT_FUNC PyInit__fastmeter(void)
{
    return PyModuleDef_Init(&module);
}
