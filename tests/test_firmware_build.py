"""Building the C firmware on a fresh machine: $CC wins, then a system compiler, then ziglang's clang (in the test
extra, so a machine without any C compiler still builds); without any, a one-line BuildError."""

import importlib.util
import sys

import pytest

from firmware_model import cbuild


def test_cc_wins_then_the_system_compiler_then_ziglang(monkeypatch):
    monkeypatch.setenv("CC", "my-cc -m32")
    assert cbuild.compiler() == ["my-cc", "-m32"]
    monkeypatch.delenv("CC")
    monkeypatch.setattr(cbuild.shutil, "which", lambda name: f"/usr/bin/{name}" if name == "gcc" else None)
    assert cbuild.compiler() == ["/usr/bin/gcc"]
    monkeypatch.setattr(cbuild.shutil, "which", lambda name: None)
    if importlib.util.find_spec("ziglang") is None:
        with pytest.raises(cbuild.BuildError, match="no C compiler: set CC, install one"):
            cbuild.compiler()
    else:
        assert cbuild.compiler() == [sys.executable, "-m", "ziglang", "cc"]


def test_the_ziglang_build_gives_the_same_codec(monkeypatch, tmp_path):
    """With no system compiler, the library built by ziglang's clang computes what the Python protocol does."""
    pytest.importorskip("ziglang", reason="ziglang is not installed (pip install '.[test]' brings it)")
    import ctypes

    from firmware_model import protocol

    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("EDGELEARN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cbuild.shutil, "which", lambda name: None)
    lib = ctypes.CDLL(str(cbuild.library_path(("el_protocol",))))
    lib.el_crc16.restype = ctypes.c_uint16
    lib.el_crc16.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    for data in (b"", b"123456789", bytes(range(256)) * 3):
        assert lib.el_crc16(data, len(data)) == protocol.crc16(data)


def test_a_compiler_that_refuses_the_sources_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGELEARN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cbuild, "compiler", lambda: [sys.executable, "-c", "import sys; print('boom: no'); sys.exit(1)"])
    with pytest.raises(cbuild.BuildError, match=r"^building the C firmware failed: boom: no \(command: "):
        cbuild.library_path(("el_protocol",))
