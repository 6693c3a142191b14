"""The optional compiled part: mcp2p._speedups (see mcp2p/transfer/scan.py).

Everything else is in setup.cfg. The extension is optional: where it does
not build (no C compiler, no Python or OpenSSL headers), the install goes
on and mcp2p runs its pure-Python scan. `make install` installs Debian's
compiler and headers first when they are missing and it may.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mcp2p._speedups",
            ["mcp2p/_speedups.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wall", "-Werror=implicit-function-declaration"],
            optional=True,
        )
    ]
)
