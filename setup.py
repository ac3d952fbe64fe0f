"""Only the optional C accelerators live here; pyproject.toml holds all the metadata.

``governor.cgroupfs._fastread`` (governor/cgroupfs/_fastread.c) is the sampler's hot path
in C: the preads of a group's cached descriptors and the parsing of their numbers, and the
mapping of those values onto a ``GroupSample``.  ``governor.metering._fastmeter``
(governor/metering/_fastmeter.c) meters two samples of one incarnation, and
``governor.exporter._fastrender`` (governor/exporter/_fastrender.c) writes the exporter's
per-group families, and ``governor.store._fastrows`` (governor/store/_fastrows.c) makes the
rows of a pass's raw samples.  All are optional (as in SQLAlchemy, msgpack, PyYAML): when they
cannot be built (no compiler or Python headers) the install goes on and governor uses the
pure-Python twins, which give identical results (tests/unit/test_fastread.py,
test_fastmeter.py, test_fastrender.py, test_fastrows.py).
"""

from setuptools import Extension, setup


def accelerator(module: str) -> Extension:
    """``governor.<package>._<name>`` from ``governor/<package>/_<name>.c``, optional."""
    return Extension(
        module,
        [module.replace(".", "/") + ".c"],
        extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                            "-Wno-missing-field-initializers"],
        optional=True,
    )


setup(
    ext_modules=[
        accelerator("governor.cgroupfs._fastread"),
        accelerator("governor.metering._fastmeter"),
        accelerator("governor.exporter._fastrender"),
        accelerator("governor.store._fastrows"),
    ],
)
