"""The firmware side owns what the firmware owns: nothing under firmware_model/ imports edgelearn, and the board's
command interpreter runs on plain arrays with the host package made unimportable."""

import ast
import subprocess
import sys
import textwrap

from conftest import REPO


def test_no_module_under_firmware_model_imports_edgelearn():
    offenders = []
    for path in sorted((REPO / "firmware_model").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            offenders += [f"{path.relative_to(REPO)}:{node.lineno} imports {n}" for n in names
                          if n == "edgelearn" or n.startswith("edgelearn.")]
    assert offenders == []


def test_the_board_firmware_runs_without_the_host_package():
    """A board session (identify, configure, pulse, read, counters) on an array given as plain arrays, in a process
    where `import edgelearn` fails."""
    script = textwrap.dedent("""
        import struct, sys
        sys.modules["edgelearn"] = None  # any import of the host package now raises
        import numpy as np
        from firmware_model import board as fw, fixed, protocol as p

        rows, cols, nodes = 2, 3, 5
        params = np.zeros((rows, cols, 5))
        params[..., 0], params[..., 1], params[..., 2], params[..., 3] = 0.1, 0.05, -1.0, 1.0
        params[..., 4] = (nodes - 1) / 2.0
        width = fw.PulseWidth(20, np.ones(nodes), np.ones(nodes), params, 0.0, (500, 3000))
        array = fw.EmulatedCrossbar(np.zeros((rows, cols)), [width], (8, 1.0, 9, 12.0, 0.0, 0, True, 5),
                                    fixed.seed_state(1), fixed.normal_table())
        board = fw.BoardFirmware(array, "bare firmware", "DEV1", 1e-6, 1e-9, 8, 9, 1.0)

        def call(seq, command, body=b""):
            answer = p.parse_message(board.handle(p.Message(p.PROTOCOL_VERSION, seq, command, 0, body, 7).pack()))
            assert answer.status == p.OK, (command, answer.status, answer.body)
            return answer.body

        assert call(1, p.IDENTIFY)[0] == p.PROTOCOL_VERSION
        call(2, p.CONFIGURE_PULSE, struct.pack("<Ih", 20, 1000))
        assert struct.unpack("<I", call(3, p.APPLY_PULSES, struct.pack("<BHHbH", p.SEL_DEVICE, 1, 2, p.UP, 3)))[0] == 3
        body = call(4, p.READ, struct.pack("<BHH", p.SEL_DEVICE, 1, 2))
        (code,) = struct.unpack_from("<h", body, 18)
        assert abs(code * board.w_per_code - 0.3) < board.w_per_code, code
        assert array.state[1, 2] == 0.1 + 0.1 + 0.1 and array.counters[0] == 3
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
