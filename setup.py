"""Only the optional C accelerators live here; pyproject.toml holds all the metadata.

One extension per concern, each in the package of the layer it serves.
``governor.cgroupfs._fastread`` (governor/cgroupfs/_fastread.c) is the reader's hot path in
C: the preads of a group's cached descriptors and the parsing of their numbers.
``governor.metering._fastsample`` (governor/metering/_fastsample.c) maps those values onto
a ``GroupSample`` and runs the sampling pass's fast-tier loop.  ``governor.metering._fastmeter``
(governor/metering/_fastmeter.c) meters two samples of one incarnation, and
``governor.exporter._fastrender`` (governor/exporter/_fastrender.c) writes the exporter's
per-group families, and ``governor.store._fastrows`` (governor/store/_fastrows.c) makes the
rows of a pass's raw samples.  ``governor.placement._fastnetlink``
(governor/placement/_fastnetlink.c) parses the process connector's datagrams and
``governor.placement._fastproc`` (governor/placement/_fastproc.c) does placement's procfs
reads; ``governor.cgroupfs._keepwarm`` (governor/cgroupfs/_keepwarm.c) is keep_warm's
writer thread.
``governor/placement/governor-launch`` is an executable, the
launcher's client (governor/placement/_launch_client.c, ``governor launcher``), built with
the same compiler next to the package's modules.  All are optional (as in SQLAlchemy,
msgpack, PyYAML): when they cannot be built (no compiler or Python headers) the install goes
on and governor uses the pure-Python twins, which give identical results
(tests/unit/test_fastread.py, test_fastsample.py, test_fastmeter.py, test_fastrender.py,
test_fastrows.py, test_fastnetlink.py, test_fastproc.py, test_keepwarm.py), and
``governor launch`` in place of the client.
"""

import os
import shutil

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import BaseError, CCompilerError

CLIENT_SRC = "governor/placement/_launch_client.c"
CLIENT = "governor-launch"


def accelerator(module: str) -> Extension:
    """``governor.<package>._<name>`` from ``governor/<package>/_<name>.c``, optional."""
    return Extension(
        module,
        [module.replace(".", "/") + ".c"],
        include_dirs=["governor"],       # _slots.h, shared by the sample accelerators
        depends=["governor/_slots.h"],
        extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                            "-Wno-missing-field-initializers"],
        optional=True,
    )


class BuildExtAndClient(build_ext):
    """The accelerators, then the launcher's client as an executable in the package (and in
    the source tree for an in-place or editable build); optional like them."""

    def run(self) -> None:
        super().run()
        out = os.path.join(self.build_lib, "governor", "placement")
        try:
            objs = self.compiler.compile([CLIENT_SRC], output_dir=self.build_temp,
                                         extra_postargs=["-O2", "-Wall", "-Wextra"])
            self.compiler.link_executable(objs, CLIENT, output_dir=out)
        except (CCompilerError, BaseError) as e:
            self.warn(f"{CLIENT} not built ({e}): `governor launch` works without it")
            return
        if self.inplace or getattr(self, "editable_mode", False):
            shutil.copy2(os.path.join(out, CLIENT), os.path.join("governor", "placement",
                                                                  CLIENT))


setup(
    cmdclass={"build_ext": BuildExtAndClient},
    ext_modules=[
        accelerator("governor.cgroupfs._fastread"),
        accelerator("governor.metering._fastsample"),
        accelerator("governor.metering._fastmeter"),
        accelerator("governor.exporter._fastrender"),
        accelerator("governor.store._fastrows"),
        accelerator("governor.placement._fastnetlink"),
        accelerator("governor.placement._fastproc"),
        accelerator("governor.cgroupfs._keepwarm"),
    ],
)
