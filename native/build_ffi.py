"""Emit the C source of the ``procpoold._ring`` cffi extension (API, out-of-line mode).

Run from the repository root as ``python native/build_ffi.py``. It reads the cdef and the C prelude
from ``native/ffi/`` and writes ``native/generated/_ring.c`` with ``emit_c_code``, so no compiler runs
here: the packaging build compiles the emitted file together with ``native/src/ring.c`` (see the
``ext-modules`` table in ``pyproject.toml``). The emitted file is committed; a unit test re-emits it
and fails when the committed copy is stale.

This script imports nothing from the package, on purpose: it must run before the package exists.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cffi import FFI

#: Dotted name of the extension; must equal the ``name`` in pyproject's ``ext-modules`` table.
MODULE_NAME = "procpoold._ring"

NATIVE = Path(__file__).resolve().parent
CDEF = NATIVE / "ffi" / "ring.cdef.h"
PRELUDE = NATIVE / "ffi" / "ring.source.c"
GENERATED = NATIVE / "generated" / "_ring.c"


def make_builder() -> FFI:
    """Return the one ffibuilder of the extension, configured from the files in ``native/ffi``."""
    ffibuilder = FFI()
    ffibuilder.cdef(CDEF.read_text(encoding="utf-8"))
    ffibuilder.set_source(
        MODULE_NAME,
        PRELUDE.read_text(encoding="utf-8"),
        # Used only by ffibuilder.compile() for local experiments; the wheel build takes its
        # sources and flags from pyproject.toml.
        sources=[str(NATIVE / "src" / "ring.c")],
        include_dirs=[str(NATIVE / "include")],
        extra_compile_args=["-std=gnu11", "-O2"],
    )
    return ffibuilder


def emit(target: Path = GENERATED) -> Path:
    """Write the generated C of the extension to ``target`` and return that path."""
    target.parent.mkdir(parents=True, exist_ok=True)
    make_builder().emit_c_code(str(target))
    return target


if __name__ == "__main__":
    out = emit(Path(sys.argv[1]) if len(sys.argv) > 1 else GENERATED)
    print(f"wrote {out}")
