"""The compiled modules, built at install time (pip install, python -m build, pip install -e).

Both are optional: where they cannot be built (no C compiler, no Python headers) the install
still succeeds and midgram serves with the socket module (``midgram --version`` says why).
Nothing is compiled at run time. The rest of the metadata is in pyproject.toml.
"""

from setuptools import Extension, setup

CFLAGS = ["-O2", "-Wall", "-Wextra"]

setup(
    ext_modules=[
        # recvmmsg/sendmmsg batches and the bare-call fast path of the workers.
        Extension(
            "midgram.server._batchio",
            ["src/midgram/server/_batchio.c"],
            extra_compile_args=CFLAGS,
            optional=True,
        ),
        # midgram bench's load generator, run as `python -m midgram.cli.loadgen`.
        Extension(
            "midgram.client._loadgen",
            ["src/midgram/client/_loadgen.c", "src/midgram/client/loadgen.c"],
            extra_compile_args=CFLAGS,
            optional=True,
        ),
    ],
)
