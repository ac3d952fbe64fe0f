/* governor.placement._fastnetlink: the process connector's datagrams parsed in C
 * (optional accelerator).
 *
 *   proc_events(data, cls) -> [cls(what, pid, tgid, ppid, ptgid, a, b, timestamp_ns), ...]
 *
 * governor.placement.netlink.parse_messages_py in C: the same messages skipped, the same
 * fields (tests/unit/test_fastnetlink.py compares them on the same datagrams).  cls is
 * ProcEvent, a tuple subclass made here without its Python constructor.
 *
 * Every offset and size comes from the kernel's own headers (include/uapi/linux/
 * netlink.h, connector.h, cn_proc.h): a datagram is nlmsghdr, cn_msg, then proc_event,
 * all in host byte order.  Each header is copied out with memcpy (the buffer has no
 * alignment).  The module keeps no state: cls is passed in on every call.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <linux/netlink.h>
#include <linux/connector.h>
#include <linux/cn_proc.h>

/* where each part starts in one netlink message */
#define CN_OFF NLMSG_HDRLEN                                /* struct cn_msg: 16 */
#define EV_OFF (CN_OFF + sizeof(struct cn_msg))            /* struct proc_event: 36 */
#define DATA_OFF (EV_OFF + offsetof(struct proc_event, event_data)) /* the union: 52 */

/* the least each event's part of the union must hold to be parsed (a shorter one is
 * skipped, as netlink.parse_event does).  exit: its code and signal, not the parent
 * pid/tgid that later kernels append (netlink.py reads the first 16 bytes only) */
#define FORK_END (DATA_OFF + sizeof(struct fork_proc_event))
#define ID_END (DATA_OFF + sizeof(struct id_proc_event))
#define EXIT_END (DATA_OFF + offsetof(struct exit_proc_event, parent_pid))
#define PIDS_END (DATA_OFF + sizeof(struct exec_proc_event)) /* exec, sid, ptrace, ... */

_Static_assert(EV_OFF == 36 && DATA_OFF == 52, "the layouts netlink.py documents");
_Static_assert(sizeof(struct fork_proc_event) == 16 && sizeof(struct id_proc_event) == 16 &&
               offsetof(struct exit_proc_event, parent_pid) == 16 &&
               sizeof(struct exec_proc_event) == 8, "the union's members as netlink.py reads them");

/* the pid pair every member of the union but fork starts with (exec's layout) */
struct pids {
    uint32_t pid, tgid;
};

/* One process event of the message m[0:mlen] (a netlink header first) into f (what, pid,
 * tgid, ppid, ptgid, a, b, timestamp_ns): 1, or 0 when it is not a process event or too
 * short for its kind. */
static int parse_event(const unsigned char *m, uint32_t mlen, unsigned long long f[8]) {
    if (mlen < DATA_OFF)
        return 0;
    struct cn_msg cn;
    memcpy(&cn, m + CN_OFF, sizeof cn);
    if (cn.id.idx != CN_IDX_PROC || cn.id.val != CN_VAL_PROC)
        return 0;
    uint32_t what;
    uint64_t ts;
    memcpy(&what, m + EV_OFF + offsetof(struct proc_event, what), sizeof what);
    memcpy(&ts, m + EV_OFF + offsetof(struct proc_event, timestamp_ns), sizeof ts);
    memset(f, 0, 8 * sizeof f[0]);
    f[0] = what;
    f[7] = ts;
    const unsigned char *d = m + DATA_OFF;
    switch (what) {
    case PROC_EVENT_FORK: {
        struct fork_proc_event e;
        if (mlen < FORK_END)
            return 0;
        memcpy(&e, d, sizeof e);
        f[1] = (uint32_t)e.child_pid, f[2] = (uint32_t)e.child_tgid;
        f[3] = (uint32_t)e.parent_pid, f[4] = (uint32_t)e.parent_tgid;
        return 1;
    }
    case PROC_EVENT_UID:
    case PROC_EVENT_GID: {
        struct id_proc_event e;
        if (mlen < ID_END)
            return 0;
        memcpy(&e, d, sizeof e);
        f[1] = (uint32_t)e.process_pid, f[2] = (uint32_t)e.process_tgid;
        f[5] = e.r.ruid, f[6] = e.e.euid;
        return 1;
    }
    case PROC_EVENT_EXIT: {
        struct exit_proc_event e; /* only the part up to parent_pid is there for sure */
        if (mlen < EXIT_END)
            return 0;
        memcpy(&e, d, offsetof(struct exit_proc_event, parent_pid));
        f[1] = (uint32_t)e.process_pid, f[2] = (uint32_t)e.process_tgid;
        f[5] = e.exit_code, f[6] = e.exit_signal;
        return 1;
    }
    case PROC_EVENT_NONE: /* the subscription's acknowledgement */
        return 1;
    default: { /* exec, sid, ptrace, comm, coredump: pid, tgid */
        struct pids e;
        if (mlen < PIDS_END)
            return 0;
        memcpy(&e, d, sizeof e);
        f[1] = e.pid, f[2] = e.tgid;
        return 1;
    }
    }
}

static int append_event(PyObject *out, PyObject *cls, const unsigned long long f[8]) {
    PyObject *t = Py_BuildValue("(KKKKKKKK)", f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]);
    if (t == NULL)
        return -1;
    PyObject *targs = PyTuple_Pack(1, t);
    Py_DECREF(t);
    if (targs == NULL)
        return -1;
    PyObject *ev = PyTuple_Type.tp_new((PyTypeObject *)cls, targs, NULL);
    Py_DECREF(targs);
    if (ev == NULL)
        return -1;
    int r = PyList_Append(out, ev);
    Py_DECREF(ev);
    return r;
}

static PyObject *proc_events(PyObject *self, PyObject *args) {
    Py_buffer b;
    PyObject *cls;
    if (!PyArg_ParseTuple(args, "y*O", &b, &cls))
        return NULL;
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &PyTuple_Type)) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_TypeError, "proc_events: cls must be a tuple subclass");
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        PyBuffer_Release(&b);
        return NULL;
    }
    const unsigned char *buf = b.buf;
    Py_ssize_t len = b.len, off = 0;
    while (len - off >= (Py_ssize_t)sizeof(struct nlmsghdr)) {
        struct nlmsghdr h;
        memcpy(&h, buf + off, sizeof h);
        if (h.nlmsg_len < sizeof h || off + (Py_ssize_t)h.nlmsg_len > len)
            break; /* a broken length: nothing after it can be trusted */
        unsigned long long f[8];
        if (h.nlmsg_type != NLMSG_NOOP && h.nlmsg_type != NLMSG_ERROR &&
            parse_event(buf + off, h.nlmsg_len, f) && append_event(out, cls, f) < 0) {
            PyBuffer_Release(&b);
            Py_DECREF(out);
            return NULL;
        }
        off += NLMSG_ALIGN(h.nlmsg_len);
    }
    PyBuffer_Release(&b);
    return out;
}

static PyMethodDef methods[] = {
    {"proc_events", proc_events, METH_VARARGS,
     "proc_events(data, cls) -> [cls(what, pid, tgid, ppid, ptgid, a, b, timestamp_ns)]"},
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
    .m_name = "_fastnetlink",
    .m_doc = "The process connector's datagrams parsed in C (see _fastnetlink.c).",
    .m_size = 0, /* no state: everything a call needs is passed in */
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC PyInit__fastnetlink(void) { return PyModuleDef_Init(&module); }
