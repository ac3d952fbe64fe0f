"""Only the optional C accelerator lives here; pyproject.toml holds all the metadata.

``governor.cgroupfs._fastread`` (governor/cgroupfs/_fastread.c) is the sampler's hot path
in C: the preads of a group's cached descriptors and the parsing of their numbers, and the
mapping of those values onto a ``GroupSample``.  It is optional (as in SQLAlchemy, msgpack,
PyYAML): when it cannot be built (no compiler or Python headers) the install goes on and
governor uses the pure-Python path, which gives identical values (tests/unit/test_fastread.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "governor.cgroupfs._fastread",
            ["governor/cgroupfs/_fastread.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers"],
            optional=True,
        ),
    ],
)
