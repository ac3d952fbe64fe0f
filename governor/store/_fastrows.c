/* governor.store._fastrows: the rows of a pass's raw samples in C (optional accelerator).
 *
 *   sample_rows(samples, ids, node_id, attrs, psi_keys, io_fields, cache, fresh, limit)
 *       -> (rows, io_rows)
 *
 * governor.store.bulk._sample_rows_py for SQLite and PostgreSQL alike, in one pass over
 * the samples: each sample's group id (ids[(tenant, group, cgroup_id)]), its time as the
 * store keeps it, then
 *     rows:    (node_id, gid, ts, monotonic, *getattr(s, a) for a in attrs,
 *               *s.psi.get(k) for k in psi_keys)
 *     io_rows: (node_id, gid, ts, device, *counters[f] for f in io_fields) per device.
 * The time: with ``cache`` None the datetime itself (PostgreSQL); else SQLite's text,
 * ``YYYY-MM-DD HH:MM:SS.ffffff``, from ``cache`` (the store's time-text cache, a dict) or
 * made here for an aware UTC datetime and put into it, its key appended to ``fresh`` (the
 * cache's current generation); any other datetime, or a cache holding ``limit`` new
 * times already, goes through ``cache[wall]`` (its __missing__: the Python rule, which also
 * turns a full generation).  A sample at 1,000 groups a pass was 17% of the daemon's own
 * CPU in Python (issue #16: the row tuple, the attribute fetches, the time's text).
 *
 *   flat_chunks(rows, k) -> [tuple, ...]
 *
 * governor.store.bulk._flat_chunks_py: the values of each run of ``k`` consecutive rows
 * in one tuple, for full runs only (``len(rows) // k`` of them): the parameters of one
 * ``INSERT ... VALUES (...), (...), ...`` of ``k`` rows (SQLite: a statement step per
 * ``k`` rows instead of per row, issue #16).
 *
 * Module state only (interned attribute names); errors raise (a sample whose group has no id is a KeyError, as the
 * twin's); none is cleared.  tests/unit/test_fastrows.py compares it with the twin.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <stdio.h>
#include "_slots.h"          /* slot_offset */

/* ---- reading a slotted object's attributes ------------------------------------------ */

/* getattr(obj, name), a new reference: read from the slot when ``obj`` is exactly of the
 * type ``off`` was found for and the slot is set (an unset one raises through GetAttr) */
static inline PyObject *get_attr(PyObject *obj, PyTypeObject *type, Py_ssize_t off,
                                 PyObject *name)
{
    if (off >= 0 && Py_IS_TYPE(obj, type)) {
        PyObject *v = *(PyObject **)((char *)obj + off);
        if (v != NULL)
            return Py_NewRef(v);
    }
    return PyObject_GetAttr(obj, name);
}

static PyObject *sqlite_text(PyObject *wall)
{
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%04d-%02d-%02d %02d:%02d:%02d.%06d",
                     PyDateTime_GET_YEAR(wall), PyDateTime_GET_MONTH(wall),
                     PyDateTime_GET_DAY(wall), PyDateTime_DATE_GET_HOUR(wall),
                     PyDateTime_DATE_GET_MINUTE(wall), PyDateTime_DATE_GET_SECOND(wall),
                     PyDateTime_DATE_GET_MICROSECOND(wall));
    if (n < 0 || n >= (int)sizeof buf) {
        PyErr_SetString(PyExc_ValueError, "sample_rows: a time does not fit its text");
        return NULL;
    }
    return PyUnicode_FromStringAndSize(buf, n);
}

/* the stored time of ``wall`` (a new reference) */
static PyObject *stored_time(PyObject *wall, PyObject *cache, PyObject *fresh,
                             Py_ssize_t limit)
{
    if (cache == Py_None)
        return Py_NewRef(wall);
    PyObject *got = PyDict_GetItemWithError(cache, wall);
    if (got != NULL)
        return Py_NewRef(got);
    if (PyErr_Occurred())
        return NULL;
    if (!PyDateTime_CheckExact(wall) || !((PyDateTime_DateTime *)wall)->hastzinfo ||
        ((PyDateTime_DateTime *)wall)->tzinfo != PyDateTime_TimeZone_UTC ||
        PyList_GET_SIZE(fresh) >= limit)
        return PyObject_GetItem(cache, wall);  /* the Python rule (__missing__) */
    PyObject *text = sqlite_text(wall);
    if (text == NULL)
        return NULL;
    if (PyDict_SetItem(cache, wall, text) < 0 || PyList_Append(fresh, wall) < 0) {
        Py_DECREF(text);
        return NULL;
    }
    return text;
}

/* counters[field] of one device: a dict (the sampler's), or any mapping */
static PyObject *field_of(PyObject *counters, PyObject *name)
{
    if (PyDict_CheckExact(counters)) {
        PyObject *v = PyDict_GetItemWithError(counters, name);
        if (v != NULL)
            return Py_NewRef(v);
        if (!PyErr_Occurred())
            PyErr_SetObject(PyExc_KeyError, name);
        return NULL;
    }
    return PyObject_GetItem(counters, name);
}

static int add_io_rows(PyObject *io_rows, PyObject *io, PyObject *node_id, PyObject *gid,
                       PyObject *ts, PyObject *io_fields)
{
    Py_ssize_t nf = PyTuple_GET_SIZE(io_fields);
    PyObject *items = PyMapping_Items(io);  /* any mapping; a dict's in its order */
    if (items == NULL)
        return -1;
    int rc = -1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *pair = PyList_GET_ITEM(items, i);
        PyObject *row = PyTuple_New(4 + nf);
        if (row == NULL)
            goto done;
        PyTuple_SET_ITEM(row, 0, Py_NewRef(node_id));
        PyTuple_SET_ITEM(row, 1, Py_NewRef(gid));
        PyTuple_SET_ITEM(row, 2, Py_NewRef(ts));
        PyTuple_SET_ITEM(row, 3, Py_NewRef(PyTuple_GET_ITEM(pair, 0)));
        PyObject *counters = PyTuple_GET_ITEM(pair, 1);
        for (Py_ssize_t f = 0; f < nf; f++) {
            PyObject *v = field_of(counters, PyTuple_GET_ITEM(io_fields, f));
            if (v == NULL) {
                Py_DECREF(row);
                goto done;
            }
            PyTuple_SET_ITEM(row, 4 + f, v);
        }
        int e = PyList_Append(io_rows, row);
        Py_DECREF(row);
        if (e < 0)
            goto done;
    }
    rc = 0;
done:
    Py_DECREF(items);
    return rc;
}

typedef struct {
    PyObject *tenant, *group, *cgroup_id, *wall, *monotonic, *psi, *io;
} names_t;

PyDoc_STRVAR(sample_rows_doc,
"sample_rows(samples, ids, node_id, attrs, psi_keys, io_fields, cache, fresh, limit)\n"
"-> (rows, io_rows): governor.store.bulk._sample_rows_py in C.");

static PyObject *sample_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "sample_rows takes 9 arguments");
        return NULL;
    }
    PyObject *samples = args[0], *ids = args[1], *node_id = args[2], *attrs = args[3],
             *psi_keys = args[4], *io_fields = args[5], *cache = args[6], *fresh = args[7];
    Py_ssize_t limit = PyLong_AsSsize_t(args[8]);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    if (!PyDict_Check(ids) || !PyTuple_Check(attrs) || !PyTuple_Check(psi_keys) ||
        !PyTuple_Check(io_fields) || (cache != Py_None && !PyDict_Check(cache)) ||
        (cache != Py_None && !PyList_Check(fresh))) {
        PyErr_SetString(PyExc_TypeError, "sample_rows: ids a dict; attrs, psi_keys, "
                        "io_fields tuples; cache a dict (and fresh a list) or None");
        return NULL;
    }
    names_t *nm = (names_t *)PyModule_GetState(self);
    PyObject *seq = PySequence_Fast(samples, "sample_rows: samples must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Py_ssize_t na = PyTuple_GET_SIZE(attrs), np = PyTuple_GET_SIZE(psi_keys);
    PyObject *rows = PyList_New(0), *io_rows = PyList_New(0), *result = NULL;
    /* the slots of the first sample's type: tenant, group, cgroup_id, wall, monotonic,
     * psi, io, then attrs */
    PyTypeObject *type = n > 0 ? Py_TYPE(PySequence_Fast_GET_ITEM(seq, 0)) : NULL;
    Py_ssize_t *off = PyMem_New(Py_ssize_t, 7 + na);
    if (off == NULL)
        PyErr_NoMemory();
    if (rows == NULL || io_rows == NULL || off == NULL)
        goto done;
    {
        PyObject *fixed[7] = {nm->tenant, nm->group, nm->cgroup_id, nm->wall, nm->monotonic,
                              nm->psi, nm->io};
        for (Py_ssize_t j = 0; j < 7 + na; j++)
            off[j] = type == NULL ? -1 : slot_offset(
                type, j < 7 ? fixed[j] : PyTuple_GET_ITEM(attrs, j - 7));
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *s = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *key = PyTuple_New(3), *gid, *wall, *ts, *psi, *io, *row;
        if (key == NULL)
            goto done;
        PyObject *parts[3] = {nm->tenant, nm->group, nm->cgroup_id};
        for (int k = 0; k < 3; k++) {
            PyObject *v = get_attr(s, type, off[k], parts[k]);
            if (v == NULL) {
                Py_DECREF(key);
                goto done;
            }
            PyTuple_SET_ITEM(key, k, v);
        }
        gid = PyDict_GetItemWithError(ids, key);
        if (gid == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetObject(PyExc_KeyError, key);
            Py_DECREF(key);
            goto done;
        }
        Py_INCREF(gid);
        Py_DECREF(key);
        wall = get_attr(s, type, off[3], nm->wall);
        if (wall == NULL) {
            Py_DECREF(gid);
            goto done;
        }
        ts = stored_time(wall, cache, fresh, limit);
        Py_DECREF(wall);
        if (ts == NULL) {
            Py_DECREF(gid);
            goto done;
        }
        row = PyTuple_New(4 + na + np);
        psi = row == NULL ? NULL : get_attr(s, type, off[5], nm->psi);
        if (psi == NULL) {
            Py_XDECREF(row);
            Py_DECREF(gid);
            Py_DECREF(ts);
            goto done;
        }
        PyTuple_SET_ITEM(row, 0, Py_NewRef(node_id));
        PyTuple_SET_ITEM(row, 1, Py_NewRef(gid));
        PyTuple_SET_ITEM(row, 2, Py_NewRef(ts));
        int bad = 0;
        PyObject *mono = get_attr(s, type, off[4], nm->monotonic);
        if (mono == NULL)
            bad = 1;
        else
            PyTuple_SET_ITEM(row, 3, mono);
        for (Py_ssize_t a = 0; !bad && a < na; a++) {
            PyObject *v = get_attr(s, type, off[7 + a], PyTuple_GET_ITEM(attrs, a));
            if (v == NULL)
                bad = 1;
            else
                PyTuple_SET_ITEM(row, 4 + a, v);
        }
        for (Py_ssize_t p = 0; !bad && p < np; p++) {
            PyObject *v;
            if (PyDict_Check(psi)) {
                v = PyDict_GetItemWithError(psi, PyTuple_GET_ITEM(psi_keys, p));
                if (v == NULL && PyErr_Occurred()) {
                    bad = 1;
                    break;
                }
                v = Py_NewRef(v != NULL ? v : Py_None);
            } else {
                v = PyObject_CallMethod(psi, "get", "O", PyTuple_GET_ITEM(psi_keys, p));
                if (v == NULL) {
                    bad = 1;
                    break;
                }
            }
            PyTuple_SET_ITEM(row, 4 + na + p, v);
        }
        Py_DECREF(psi);
        /* the slots left NULL on an error are fine: a tuple's dealloc skips them */
        if (bad || PyList_Append(rows, row) < 0) {
            Py_DECREF(row);
            Py_DECREF(gid);
            Py_DECREF(ts);
            goto done;
        }
        Py_DECREF(row);
        io = get_attr(s, type, off[6], nm->io);
        int e = io == NULL ? -1 : add_io_rows(io_rows, io, node_id, gid, ts, io_fields);
        Py_XDECREF(io);
        Py_DECREF(gid);
        Py_DECREF(ts);
        if (e < 0)
            goto done;
    }
    result = PyTuple_Pack(2, rows, io_rows);
done:
    PyMem_Free(off);
    Py_XDECREF(rows);
    Py_XDECREF(io_rows);
    Py_DECREF(seq);
    return result;
}

PyDoc_STRVAR(flat_chunks_doc,
"flat_chunks(rows, k) -> [tuple, ...]: governor.store.bulk._flat_chunks_py in C.");

static PyObject *flat_chunks(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "flat_chunks takes 2 arguments");
        return NULL;
    }
    Py_ssize_t k = PyLong_AsSsize_t(args[1]);
    if (k == -1 && PyErr_Occurred())
        return NULL;
    if (k <= 0) {
        PyErr_SetString(PyExc_ValueError, "flat_chunks: k must be positive");
        return NULL;
    }
    /* tuples (the rows are: no copy), so no row's iteration can change what is copied */
    PyObject *seq = PySequence_Tuple(args[0]);
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(seq) / k;
    /* the rows of one chunk */
    PyObject **fast = PyMem_New(PyObject *, k);
    PyObject *out = fast == NULL ? NULL : PyList_New(n);
    if (out == NULL) {
        if (fast == NULL)
            PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t c = 0; c < n; c++) {
        Py_ssize_t total = 0, got = 0;
        for (Py_ssize_t r = 0; r < k; r++) {
            PyObject *row = PySequence_Tuple(PyTuple_GET_ITEM(seq, c * k + r));
            if (row == NULL)
                break;
            fast[got++] = row;
            total += PyTuple_GET_SIZE(row);
        }
        PyObject *chunk = got == k ? PyTuple_New(total) : NULL;
        if (chunk != NULL) {
            Py_ssize_t at = 0;
            for (Py_ssize_t r = 0; r < k; r++) {
                for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(fast[r]); i++)
                    PyTuple_SET_ITEM(chunk, at++, Py_NewRef(PyTuple_GET_ITEM(fast[r], i)));
            }
            PyList_SET_ITEM(out, c, chunk);
        }
        for (Py_ssize_t r = 0; r < got; r++)
            Py_DECREF(fast[r]);
        if (chunk == NULL)
            goto fail;
    }
    PyMem_Free(fast);
    Py_DECREF(seq);
    return out;
fail:
    PyMem_Free(fast);
    Py_XDECREF(out);
    Py_DECREF(seq);
    return NULL;
}

static PyMethodDef methods[] = {
    {"sample_rows", (PyCFunction)(void (*)(void))sample_rows, METH_FASTCALL,
     sample_rows_doc},
    {"flat_chunks", (PyCFunction)(void (*)(void))flat_chunks, METH_FASTCALL, flat_chunks_doc},
    {NULL, NULL, 0, NULL},
};

static int exec_module(PyObject *m)
{
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL)
        return -1;
    names_t *nm = (names_t *)PyModule_GetState(m);
    PyObject **slot[] = {&nm->tenant, &nm->group, &nm->cgroup_id, &nm->wall, &nm->monotonic,
                         &nm->psi, &nm->io};
    const char *text[] = {"tenant", "group", "cgroup_id", "wall", "monotonic", "psi", "io"};
    for (size_t i = 0; i < sizeof slot / sizeof slot[0]; i++) {
        *slot[i] = PyUnicode_InternFromString(text[i]);
        if (*slot[i] == NULL)
            return -1;
    }
    return 0;
}

static int traverse(PyObject *m, visitproc visit, void *arg)
{
    names_t *nm = (names_t *)PyModule_GetState(m);
    Py_VISIT(nm->tenant);
    Py_VISIT(nm->group);
    Py_VISIT(nm->cgroup_id);
    Py_VISIT(nm->wall);
    Py_VISIT(nm->monotonic);
    Py_VISIT(nm->psi);
    Py_VISIT(nm->io);
    return 0;
}

static int clear(PyObject *m)
{
    names_t *nm = (names_t *)PyModule_GetState(m);
    Py_CLEAR(nm->tenant);
    Py_CLEAR(nm->group);
    Py_CLEAR(nm->cgroup_id);
    Py_CLEAR(nm->wall);
    Py_CLEAR(nm->monotonic);
    Py_CLEAR(nm->psi);
    Py_CLEAR(nm->io);
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "governor.store._fastrows",
    .m_doc = "The rows of a pass's raw samples in C (twin: governor/store/bulk.py).",
    .m_size = sizeof(names_t),
    .m_methods = methods,
    .m_slots = slots,
    .m_traverse = traverse,
    .m_clear = clear,
};

PyMODINIT_FUNC PyInit__fastrows(void)
{
    return PyModuleDef_Init(&module);
}
