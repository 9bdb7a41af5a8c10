"""Build the portable C firmware (firmware_model/c/*.c) as a host shared library and load it with ctypes.

The C sources are the firmware; on the host they run behind the emulated-crossbar HAL so that tests can compare them
bit for bit with the numba model. The compiler is, in order: $CC, the system `cc` / `gcc` / `clang`, or the `ziglang`
package's self-contained clang (`python -m ziglang cc`, from the package registry) where no system compiler exists.
Builds are cached by a hash of the sources, the compiler and the flags in $EDGELEARN_CACHE_DIR/firmware (default
~/.cache/edgelearn/firmware), so a fresh machine builds once and nothing is written into the package.

Floating point: -ffp-contract=off (no fused multiply-add: numba's LLVM does not contract either) and no fast-math,
so every double operation rounds as the numba kernels' do.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

C_DIR = Path(__file__).resolve().parent / "c"
HOST_FLAGS = ("-std=c11", "-O2", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math", "-Wall", "-Wextra",
              "-Werror", "-fvisibility=default")
_loaded: dict[str, ctypes.CDLL] = {}


class BuildError(RuntimeError):
    """The C firmware could not be built (no compiler, or the compiler refused the sources): the message says which."""


def compiler() -> list[str]:
    """The command that compiles C here: $CC, a system compiler, or ziglang's clang."""
    if os.environ.get("CC"):
        return os.environ["CC"].split()
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    import importlib.util

    if importlib.util.find_spec("ziglang") is None:  # the package ships the binary; `python -m ziglang` runs it
        raise BuildError("no C compiler: set CC, install one (cc, gcc or clang), or `pip install ziglang`")
    return [sys.executable, "-m", "ziglang", "cc"]


def sources(names: tuple[str, ...] | None = None) -> list[Path]:
    """The C files to build: all of firmware_model/c, or those named (stems, e.g. ("el_protocol",))."""
    files = sorted(C_DIR.glob("*.c")) if names is None else [C_DIR / f"{n}.c" for n in names]
    missing = [str(f) for f in files if not f.exists()]
    if not files or missing:
        raise BuildError(f"no C sources {', '.join(missing) or 'at all'} in {C_DIR}")
    return files


def cache_dir() -> Path:
    return Path(os.environ.get("EDGELEARN_CACHE_DIR", Path.home() / ".cache" / "edgelearn")) / "firmware"


def library_path(names: tuple[str, ...] | None = None) -> Path:
    """Build (once per sources/compiler/flags) and return the host shared library's path."""
    cc = compiler()
    files = sources(names)
    digest = hashlib.sha256()
    for part in [*cc, *HOST_FLAGS, *(f.name for f in files)]:
        digest.update(part.encode() + b"\0")
    for path in sorted(C_DIR.glob("*.[ch]")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    out = cache_dir() / digest.hexdigest()[:16] / ("libelfw.dll" if sys.platform == "win32" else "libelfw.so")
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        target = Path(tmp) / out.name
        cmd = [*cc, *HOST_FLAGS, "-I", str(C_DIR), "-o", str(target), *map(str, files)]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BuildError(f"{cmd[0]}: cannot run the C compiler ({exc})") from None
        if run.returncode != 0:
            first = (run.stderr or run.stdout).strip().splitlines()
            raise BuildError(f"building the C firmware failed: {first[0] if first else 'no output'} "
                             f"(command: {' '.join(cmd)})")
        os.replace(target, out)  # atomic: a concurrent build of the same sources lands the same bytes
    return out


def load(names: tuple[str, ...] | None = None) -> ctypes.CDLL:
    """The host build of the C firmware (all sources, or those named), loaded (built first where needed)."""
    path = str(library_path(names))
    if path not in _loaded:
        _loaded[path] = ctypes.CDLL(path)
    return _loaded[path]
