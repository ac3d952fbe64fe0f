/* The exporter's per-group families in C: one family's sample lines, joined.
 *
 * governor/exporter/render.py renders a family of group series as
 *
 *     "\n".join(f"{prefix}{label}{value}" for label, stats in rows if <value known>)
 *
 * with the value read from each row's GroupStats (an attribute, a key of a dict
 * attribute, a PSI line's total) and written as an exact decimal integer or, for
 * microsecond counters shown in seconds, as repr(value / 1e6).  family() does the same
 * loop here: at 1,000 groups a scrape renders about 45,000 such lines, and the Python
 * loop was two thirds of a scrape's CPU (issue #16: a scrape must cost less than a
 * pass's reads).  render.py keeps the Python loop as the twin: the parity test
 * (tests/unit/test_fastrender.py) renders the same rows both ways.
 *
 * No module state: every input is an argument.  Output grows as needed (no fixed
 * buffer).  Errors (a row that is not a pair, a value that is not an int, an attribute
 * missing) raise, as the Python loop would; none is cleared (an absent dict key is no
 * line, found with PyDict_GetItemWithError, which sets no error for it).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdio.h>
#include <string.h>

/* What a family's value is (the KIND_* constants of the module):
 *   KIND_ATTR:       getattr(stats, attr), an int; None: no line
 *   KIND_DICT:       getattr(stats, attr)[key], an int; the dict None or the key absent: none
 *   KIND_DICT_USEC:  as KIND_DICT, written as repr(value / 1e6) (seconds)
 *   KIND_ITEM:       the row's second element is the dict itself; [key], an int
 *   KIND_PSI_SOME:   getattr(stats, attr).get(key).some.total, in seconds
 *   KIND_PSI_FULL:   getattr(stats, attr).get(key).full.total, in seconds (full None: none)
 */
enum kind {
    KIND_ATTR = 0,
    KIND_DICT = 1,
    KIND_DICT_USEC = 2,
    KIND_ITEM = 3,
    KIND_PSI_SOME = 4,
    KIND_PSI_FULL = 5,
};

#define USEC_PER_SEC 1e6
/* For microseconds x with EXACT_MIN_USEC <= x < EXACT_MAX_USEC, repr(x / 1e6) is the
 * exact decimal x / 10^6 with trailing zeros dropped (one digit kept after the point):
 * x / 1e6 is the double nearest that decimal, and below 2^33 seconds doubles are closer
 * together than 1e-6, so no shorter decimal (another multiple of 1e-6) maps to the same
 * double; from 1e-4 s up to 1e16 s repr writes no exponent.  Outside, PyOS_double_to_string
 * (what repr calls) writes it.  The parity test covers both sides of both bounds. */
#define EXACT_MIN_USEC 100LL
#define EXACT_MAX_USEC ((1LL << 33) * 1000000LL)

typedef struct {
    char *data;
    size_t len;
    size_t cap;
} buf_t;

static int buf_grow(buf_t *b, size_t more)
{
    if (b->len + more <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    char *d = PyMem_Realloc(b->data, cap);
    if (d == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = d;
    b->cap = cap;
    return 0;
}

static int buf_put(buf_t *b, const char *s, size_t n)
{
    if (buf_grow(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

/* an exact int as a long long: 1 and *x set; 0 past 64 bits; -1 an error (TypeError for
 * a value that is not an int, naming ``what``) */
static int as_long_long(PyObject *v, const char *what, long long *x)
{
    if (!PyLong_CheckExact(v)) {
        PyErr_Format(PyExc_TypeError, "expected %s, got %.100s", what, Py_TYPE(v)->tp_name);
        return -1;
    }
    int overflow = 0;
    *x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (*x == -1 && PyErr_Occurred())
        return -1;
    return overflow == 0;
}

/* an int as Python's str(int) writes it; a non-int raises TypeError */
static int put_int(buf_t *b, PyObject *v)
{
    long long x;
    int k = as_long_long(v, "an int value", &x);
    if (k < 0)
        return -1;
    if (k == 1) {
        char tmp[32];
        int n = snprintf(tmp, sizeof tmp, "%lld", x);
        return buf_put(b, tmp, (size_t)n);
    }
    PyObject *s = PyObject_Str(v);   /* beyond 64 bits: Python's own digits */
    if (s == NULL)
        return -1;
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(s, &n);
    int r = u == NULL ? -1 : buf_put(b, u, (size_t)n);
    Py_DECREF(s);
    return r;
}

/* repr(v / 1e6) for an int v, as Python computes it (int to float, then divide) */
static int put_seconds(buf_t *b, PyObject *v)
{
    long long x;
    int k = as_long_long(v, "an int of microseconds", &x);
    if (k < 0)
        return -1;
    if (k == 1 && x >= EXACT_MIN_USEC && x < EXACT_MAX_USEC) {
        /* repr(x / 1e6) is the exact decimal here (see EXACT_MIN_USEC), without dtoa */
        char tmp[40];
        int n = snprintf(tmp, sizeof tmp, "%lld.%06lld", x / 1000000, x % 1000000);
        while (tmp[n - 1] == '0' && tmp[n - 2] != '.')
            n--;
        return buf_put(b, tmp, (size_t)n);
    }
    double d = PyLong_AsDouble(v);
    if (d == -1.0 && PyErr_Occurred())
        return -1;
    char *s = PyOS_double_to_string(d / USEC_PER_SEC, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (s == NULL)
        return -1;
    int r = buf_put(b, s, strlen(s));
    PyMem_Free(s);
    return r;
}

/* The value of one row for ``kind`` (a borrowed or new reference, see *owned), or NULL:
 * no line (no error set) or an error (set). */
/* attribute names of a PSI family, made once per call (no module state) */
typedef struct {
    PyObject *line;    /* "some" or "full" */
    PyObject *total;   /* "total" */
} psi_names_t;

static PyObject *row_value(PyObject *second, int kind, PyObject *attr, PyObject *key,
                           const psi_names_t *names, PyObject **owned)
{
    *owned = NULL;
    if (kind == KIND_ITEM) {
        if (!PyDict_Check(second)) {
            PyErr_Format(PyExc_TypeError, "expected a dict of counters, got %.100s",
                         Py_TYPE(second)->tp_name);
            return NULL;
        }
        return PyDict_GetItemWithError(second, key);
    }
    PyObject *a = PyObject_GetAttr(second, attr);
    if (a == NULL)
        return NULL;
    if (kind == KIND_ATTR) {
        if (a == Py_None) {
            Py_DECREF(a);
            return NULL;
        }
        *owned = a;
        return a;
    }
    if (a == Py_None) {
        Py_DECREF(a);
        return NULL;
    }
    if (!PyDict_Check(a)) {
        PyErr_Format(PyExc_TypeError, "expected a dict in .%U, got %.100s", attr,
                     Py_TYPE(a)->tp_name);
        Py_DECREF(a);
        return NULL;
    }
    PyObject *v = PyDict_GetItemWithError(a, key);   /* borrowed from a */
    if (v == NULL || kind == KIND_DICT || kind == KIND_DICT_USEC) {
        if (v != NULL) {
            Py_INCREF(v);
            *owned = v;
        }
        Py_DECREF(a);
        return v;
    }
    /* PSI: the Psi object, then its some/full PsiLine, then total */
    PyObject *line = PyObject_GetAttr(v, names->line);
    Py_DECREF(a);
    if (line == NULL)
        return NULL;
    if (line == Py_None) {
        Py_DECREF(line);
        return NULL;
    }
    PyObject *total = PyObject_GetAttr(line, names->total);
    Py_DECREF(line);
    if (total != NULL)
        *owned = total;
    return total;
}

PyDoc_STRVAR(family_doc,
"family(prefix, rows, kind, attr, key, /) -> str\n\n"
"The sample lines of one family, joined by newlines (no trailing one); '' when no row\n"
"has a value.  Each line is prefix + label + value; rows are (label, stats) pairs.");

static PyObject *family(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "family() takes 5 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *prefix = args[0], *rows = args[1], *attr = args[3], *key = args[4];
    int kind = PyLong_AsLong(args[2]);
    if (kind == -1 && PyErr_Occurred())
        return NULL;
    if (kind < KIND_ATTR || kind > KIND_PSI_FULL) {
        PyErr_Format(PyExc_ValueError, "unknown kind %d", kind);
        return NULL;
    }
    if (!PyUnicode_Check(prefix) || !PyList_Check(rows) || !PyUnicode_Check(attr)) {
        PyErr_SetString(PyExc_TypeError, "family(prefix: str, rows: list, kind: int, "
                        "attr: str, key: str | None)");
        return NULL;
    }
    Py_ssize_t plen;
    const char *p = PyUnicode_AsUTF8AndSize(prefix, &plen);
    if (p == NULL)
        return NULL;
    psi_names_t names = {NULL, NULL};
    if (kind == KIND_PSI_SOME || kind == KIND_PSI_FULL) {
        names.line = PyUnicode_InternFromString(kind == KIND_PSI_FULL ? "full" : "some");
        names.total = PyUnicode_InternFromString("total");
        if (names.line == NULL || names.total == NULL) {
            Py_XDECREF(names.line);
            Py_XDECREF(names.total);
            return NULL;
        }
    }
    buf_t b = {NULL, 0, 0};
    int first = 1;
    Py_ssize_t n = PyList_GET_SIZE(rows);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 2 ||
                !PyUnicode_Check(PyTuple_GET_ITEM(row, 0))) {
            PyErr_Format(PyExc_TypeError, "row %zd is not a (label, stats) pair", i);
            goto fail;
        }
        PyObject *owned;
        PyObject *v = row_value(PyTuple_GET_ITEM(row, 1), kind, attr, key, &names, &owned);
        if (v == NULL) {
            if (PyErr_Occurred())
                goto fail;
            continue;
        }
        Py_ssize_t llen;
        const char *l = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(row, 0), &llen);
        int r = l == NULL ? -1 : 0;
        if (r == 0 && !first)
            r = buf_put(&b, "\n", 1);
        if (r == 0)
            r = buf_put(&b, p, (size_t)plen);
        if (r == 0)
            r = buf_put(&b, l, (size_t)llen);
        if (r == 0)
            r = (kind == KIND_DICT_USEC || kind == KIND_PSI_SOME || kind == KIND_PSI_FULL)
                ? put_seconds(&b, v) : put_int(&b, v);
        Py_XDECREF(owned);
        if (r < 0)
            goto fail;
        first = 0;
    }
    PyObject *out = PyUnicode_DecodeUTF8(b.data ? b.data : "", (Py_ssize_t)b.len, "strict");
    PyMem_Free(b.data);
    Py_XDECREF(names.line);
    Py_XDECREF(names.total);
    return out;
fail:
    PyMem_Free(b.data);
    Py_XDECREF(names.line);
    Py_XDECREF(names.total);
    return NULL;
}

static PyMethodDef methods[] = {
    {"family", (PyCFunction)(void (*)(void))family, METH_FASTCALL, family_doc},
    {NULL, NULL, 0, NULL},
};

static int exec_module(PyObject *m)
{
    if (PyModule_AddIntConstant(m, "KIND_ATTR", KIND_ATTR) < 0 ||
            PyModule_AddIntConstant(m, "KIND_DICT", KIND_DICT) < 0 ||
            PyModule_AddIntConstant(m, "KIND_DICT_USEC", KIND_DICT_USEC) < 0 ||
            PyModule_AddIntConstant(m, "KIND_ITEM", KIND_ITEM) < 0 ||
            PyModule_AddIntConstant(m, "KIND_PSI_SOME", KIND_PSI_SOME) < 0 ||
            PyModule_AddIntConstant(m, "KIND_PSI_FULL", KIND_PSI_FULL) < 0)
        return -1;
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "governor.exporter._fastrender",
    .m_doc = "The exporter's per-group families in C (twin: governor/exporter/render.py).",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC PyInit__fastrender(void)
{
    return PyModuleDef_Init(&module);
}
