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
            "midgram._batchio",
            ["src/midgram/_batchio.c"],
            extra_compile_args=CFLAGS,
            optional=True,
        ),
        # midgram bench's load generator, run as `python -m midgram.cli.loadgen`.
        Extension(
            "midgram._loadgen",
            ["src/midgram/_loadgen.c", "src/midgram/loadgen.c"],
            extra_compile_args=CFLAGS,
            optional=True,
        ),
    ],
)
