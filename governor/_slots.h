/*
 * governor/_slots.h: reading the __slots__ of governor's frozen dataclasses from C, shared
 * by the accelerators that build or read samples (cgroupfs/_fastread.c,
 * metering/_fastsample.c, metering/_fastmeter.c, store/_fastrows.c).  Header-only: each
 * extension is built alone and keeps no state here.
 */
#ifndef GOVERNOR_SLOTS_H
#define GOVERNOR_SLOTS_H

#include <Python.h>
#include <structmember.h>   /* T_OBJECT_EX: what __slots__ members are */

/* Where attribute ``name`` of ``type``'s instances sits when it is a __slots__ member (its
 * offset in the object), else -1.  PyObject_GetAttr (the type's method cache, the member
 * descriptor's call and checks) for every attribute of every sample was most of the time
 * of the loops that read them (issue #16); a slot is a pointer at a fixed offset.  The
 * descriptor must be the one instances see: a member descriptor of ``type`` or a base. */
static inline Py_ssize_t slot_offset(PyTypeObject *type, PyObject *name)
{
    PyObject *d = PyObject_GetAttr((PyObject *)type, name);
    if (d == NULL) {
        PyErr_Clear();   /* not this type's: every read of it goes through getattr */
        return -1;
    }
    Py_ssize_t off = -1;
    if (Py_IS_TYPE(d, &PyMemberDescr_Type)) {
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type == T_OBJECT_EX && !(m->flags & PY_AUDIT_READ) &&
            PyType_IsSubtype(type, ((PyDescrObject *)d)->d_type))
            off = m->offset;
    }
    Py_DECREF(d);
    return off;
}

/* The member descriptors of ``type``'s slots ``names`` (a tuple of at most ``max``) into
 * ``out`` (new references, replacing what was there), their count into ``n``; -1 with an
 * exception when one is missing or not a slot. */
static inline int descriptors(PyTypeObject *type, PyObject *names, PyObject **out, int max,
                              int *n)
{
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
            PyErr_Format(PyExc_TypeError, "%R.%R is not a slot", type,
                         PyTuple_GET_ITEM(names, i));
            Py_DECREF(d);
            return -1;
        }
        Py_XSETREF(out[i], d);
    }
    return 0;
}

#endif
