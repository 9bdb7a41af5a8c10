"""The C firmware on a Cortex-M target: cross-compile it, report its code and RAM sizes, run its kernels in an emulated
CPU and count the instructions each operation costs.

Build: `python -m ziglang cc` (the `ziglang` package's self-contained clang) compiles el_fixed, el_crossbar,
el_controller, el_frontend and el_protocol (not the board layer) for thumb-freestanding-eabihf at -O2 with
-ffp-contract=off, one section per function, and links them statically (no libc) with a small generated linker
script: code and constants in flash at 0x00000000, static data in RAM at 0x20000000, unused sections garbage-collected
and every public el_* function of el_kernels.h / el_protocol.h kept. Doubles are soft-float (the M4's FPU is
single-precision only), so zig links its compiler-rt (__aeabi_dadd, __aeabi_dmul, ..., written in Zig, not the
hand-tuned assembly of libgcc) and also its memset/memcpy: no start-up file is needed. ELFs are cached by a hash of the
sources, the compiler and the flags in $EDGELEARN_CACHE_DIR/firmware (default ~/.cache/edgelearn/firmware).

CPU models. zig's bare `cortex_m4` CPU has no FPU (it is an M4 without the F: even float arithmetic becomes library
calls, and doubles are passed in core registers); the usual part is the M4F, so "cortex-m4" here is
`cortex_m4+vfp4d16sp` (FPv4-SP-D16). With the hard-float ABI and that FPU, double arguments are passed in d0-d7 and
returned in d0 (checked by disassembly: callees `vmov r0, r1, d0` before calling __aeabi_dadd), while the arithmetic
itself is a compiler-rt call. "cortex-m4-nofpu" is the bare model (doubles in core registers, AAPCS base variant) and
"cortex-m33" is `cortex_m33+fp_armv8d16sp` (FPv5-SP). unicorn's Cortex-M models execute VFP instructions without the
CPACR set-up a reset handler would do.

Counting. The emulator (unicorn) runs one function call at a time: arguments per AAPCS (core registers r0-r3, 64-bit
values in even register pairs, doubles in d-registers or core pairs as the ABI says, then the stack), numpy arrays
copied into emulated RAM and back afterwards (the kernels write into their arguments as the numba kernels do). A block
hook counts executed instructions exactly (each translated block is decoded once; its instructions are classified by
their Thumb-2 encodings; instructions an IT block skips count too, as the core spends a cycle on each: unicorn's
per-instruction code hook does not report those, otherwise the two counts agree address by address); calls into
functions named in `exclude` (the crossbar's device physics, the array's analog sum) are counted apart, so the
firmware's own digital work can be separated from what the real array does, and every instruction is also attributed
to the function it lies in. Per-unit costs are slopes between two runs of different sizes, so fixed call overhead is
separated out.

What the figures say about the C port at -O2 (without LTO): el_mp_update calls el_shift_round and el_sat_i32 out of
line (they live in el_fixed.c), iterates with int64_t indices (64-bit compares on a 32-bit core) and divides in 64
bits (__aeabi_uldivmod) when a cell fires; every double operation is a compiler-rt call of some 40-130 instructions.

Cycles are an estimate, not a measurement: instruction classes weighted with the Cortex-M4 TRM's Table 3-1 (zero wait
states) -- see CYCLE_MODEL. Wall-clock time is never measured.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cbuild import C_DIR, BuildError, cache_dir

SOURCES = ("el_fixed", "el_crossbar", "el_controller", "el_frontend", "el_protocol")
HEADERS = ("el_kernels.h", "el_protocol.h")
START_FILE = "el_target_start.c"  # optional target support (memset/memcpy); not needed while zig supplies them

# cpu name -> zig -mcpu, unicorn CPU model, whether doubles travel in VFP registers
CPUS = {
    "cortex-m4": {"mcpu": "cortex_m4+vfp4d16sp", "uc_cpu": "UC_CPU_ARM_CORTEX_M4", "vfp": True,
                  "note": "Cortex-M4F (FPv4-SP-D16, single precision): doubles are soft-float, passed in d-registers"},
    "cortex-m4-nofpu": {"mcpu": "cortex_m4", "uc_cpu": "UC_CPU_ARM_CORTEX_M4", "vfp": False,
                        "note": "Cortex-M4 without FPU (zig's bare cortex_m4): all floating point soft, doubles in "
                                "core registers"},
    "cortex-m33": {"mcpu": "cortex_m33+fp_armv8d16sp", "uc_cpu": "UC_CPU_ARM_CORTEX_M33", "vfp": True,
                   "note": "Cortex-M33 with FPv5-SP: doubles soft-float, passed in d-registers (cycle model: M4's)"},
}
TARGET = "thumb-freestanding-eabihf"
BASE_FLAGS = ("-mthumb", "-ffreestanding", "-ffp-contract=off", "-fno-fast-math", "-ffunction-sections",
              "-fdata-sections", "-fno-unwind-tables", "-fno-asynchronous-unwind-tables", "-std=c11", "-Wall",
              "-Wextra")
FLASH_BASE, FLASH_SIZE = 0x00000000, 0x00100000
RAM_BASE, RAM_SIZE = 0x20000000, 0x01000000  # generous: the emulated RAM holds the arguments too
LINKER_SCRIPT = """\
MEMORY {{ FLASH (rx) : ORIGIN = {flash:#x}, LENGTH = {flash_size:#x}
         RAM (rwx) : ORIGIN = {ram:#x}, LENGTH = {ram_size:#x} }}
SECTIONS {{
  .text : {{ *(.text .text.*) }} > FLASH
  .rodata : {{ *(.rodata .rodata.*) }} > FLASH
  .ARM.exidx : {{ *(.ARM.exidx*) }} > FLASH
  .data : {{ *(.data .data.*) }} > RAM AT > FLASH
  .bss (NOLOAD) : {{ *(.bss .bss.* COMMON) }} > RAM
}}
""".format(flash=FLASH_BASE, flash_size=FLASH_SIZE, ram=RAM_BASE, ram_size=0x40000)


def _need(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise BuildError(f"firmware_model.measure needs the `{package}` package: pip install {package}") from None


# ------------------------------------------------------------------------------------------------------------------
# build
# ------------------------------------------------------------------------------------------------------------------
def _zig() -> list[str]:
    if __import__("importlib").util.find_spec("ziglang") is None:
        raise BuildError("firmware_model.measure needs the `ziglang` package: pip install ziglang")
    return [sys.executable, "-m", "ziglang"]


@functools.lru_cache(maxsize=None)
def compiler_version() -> str:
    """`zig <version> (clang <version>)` of the installed ziglang package."""
    try:
        zig = subprocess.run([*_zig(), "version"], capture_output=True, text=True, timeout=120).stdout.strip()
        clang = subprocess.run([*_zig(), "cc", "--version"], capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"cannot run zig ({exc})") from None
    match = re.search(r"clang version (\S+)", clang)
    return f"zig {zig} (clang {match.group(1) if match else '?'})"


def _source_files() -> list[Path]:
    files = [C_DIR / f"{name}.c" for name in SOURCES]
    if (C_DIR / START_FILE).exists():
        files.append(C_DIR / START_FILE)
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise BuildError(f"missing C sources: {', '.join(missing)}")
    return files


def source_hash() -> str:
    """sha256 (16 hex digits) of the sources and headers the target build compiles."""
    digest = hashlib.sha256()
    for path in [*_source_files(), *(C_DIR / h for h in HEADERS)]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def flags(cpu: str = "cortex-m4", opt: str = "-O2", extra: tuple[str, ...] = ()) -> list[str]:
    """The compiler flags of a target build (`extra` appended, e.g. ("-flto",) or ("-fomit-frame-pointer",))."""
    if cpu not in CPUS:
        raise ValueError(f"cpu must be one of {', '.join(CPUS)}, got {cpu!r}")
    return ["-target", TARGET, f"-mcpu={CPUS[cpu]['mcpu']}", *BASE_FLAGS, opt, *extra]


def _strip_c(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    text = re.sub(r"#ifdef __cplusplus.*?#endif", " ", text, flags=re.S)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


@functools.lru_cache(maxsize=None)
def prototypes() -> dict[str, tuple[str, tuple[str, ...]]]:
    """{name: (return kind, argument kinds)} of every public function declared in el_kernels.h and el_protocol.h.
    Kinds: 'v' void, 'd' double, 'q' / 'Q' 64-bit signed / unsigned, 'i' / 'I' 32-bit (or narrower) signed /
    unsigned, 'b' bool, 'h' uint16, 'p' pointer."""
    out = {}
    for header in HEADERS:
        text = _strip_c((C_DIR / header).read_text())
        for chunk in re.findall(r"[^;{}]*[;{}]", text):
            match = re.fullmatch(r"\s*([A-Za-z_][\w \t\n*]*?)\b(el_\w+)\s*\(([^()]*)\)\s*;", chunk)
            if match is None or "typedef" in chunk or match.group(1).split()[0] == "return":
                continue  # not a declaration (a statement of an inline helper's body)
            ret, name, args = match.groups()
            arg_kinds = tuple(_kind(a) for a in args.split(",") if a.strip() not in ("", "void"))
            out[name] = (_kind(ret + " x"), arg_kinds)
    return out


_SCALARS = {"double": "d", "int64_t": "q", "uint64_t": "Q", "int32_t": "i", "int": "i", "ptrdiff_t": "i",
            "int16_t": "i", "int8_t": "i", "uint32_t": "I", "size_t": "I", "uint16_t": "h", "uint8_t": "I",
            "bool": "b", "void": "v"}


def _kind(decl: str) -> str:
    decl = decl.strip()
    if "*" in decl or "[" in decl:
        return "p"
    words = decl.replace("const", " ").split()
    base = " ".join(words[:-1]) if len(words) > 1 else words[0]
    if base not in _SCALARS:
        raise BuildError(f"measure: unknown C type {base!r} in a prototype")
    return _SCALARS[base]


def build_elf(cpu: str = "cortex-m4", opt: str = "-O2", extra: tuple[str, ...] = ()) -> Path:
    """Cross-compile the firmware (kernels + protocol) into a static ELF for `cpu`; cached. Returns its path."""
    cmd_flags = flags(cpu, opt, tuple(extra))
    keep = sorted(prototypes())
    version = compiler_version()
    digest = hashlib.sha256()
    for part in [version, source_hash(), *cmd_flags, LINKER_SCRIPT, *keep]:
        digest.update(part.encode() + b"\0")
    out = cache_dir() / f"target-{digest.hexdigest()[:16]}" / f"firmware-{cpu}.elf"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        script = Path(tmp) / "firmware.ld"
        script.write_text(LINKER_SCRIPT)
        target = Path(tmp) / out.name
        cmd = [*_zig(), "cc", *cmd_flags, "-I", str(C_DIR), "-o", str(target), *map(str, _source_files()),
               "-Wl,--gc-sections", f"-Wl,-T,{script}", "-Wl,-e,0", *(f"-Wl,-u,{name}" for name in keep)]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BuildError(f"cannot run zig cc ({exc})") from None
        if run.returncode != 0 or not target.exists():
            lines = (run.stderr or run.stdout).strip().splitlines()
            raise BuildError(f"cross-compiling the firmware failed: {lines[0] if lines else 'no output'} "
                             f"(command: {' '.join(cmd)})")
        meta = {"cpu": cpu, "compiler": version, "flags": cmd_flags, "source_hash": source_hash(),
                "warnings": [line for line in run.stderr.splitlines() if "warning" in line]}
        (Path(tmp) / "build.json").write_text(json.dumps(meta, indent=1))
        os.replace(Path(tmp) / "build.json", out.with_suffix(".json"))
        os.replace(target, out)
    return out


# ------------------------------------------------------------------------------------------------------------------
# sizes
# ------------------------------------------------------------------------------------------------------------------
def _elf_file(elf):
    ELFFile = _need("elftools.elf.elffile", "pyelftools").ELFFile
    return ELFFile(open(elf, "rb"))


def _functions(elf_file) -> dict[str, tuple[int, int]]:
    """{name: (address without the Thumb bit, size)} of the function symbols."""
    out = {}
    symtab = elf_file.get_section_by_name(".symtab")
    for sym in symtab.iter_symbols():
        if sym["st_info"]["type"] == "STT_FUNC" and sym["st_size"] > 0:
            out[sym.name] = (sym["st_value"] & ~1, sym["st_size"])
    return out


def sizes(elf) -> dict:
    """Code and memory sizes of the linked firmware, bytes: text (code, compiler-rt included), rodata (constants,
    in flash), data (initialised RAM, its image also in flash), bss (zeroed RAM); flash = text + rodata + data,
    static_ram = data + bss; text split into the kernels' el_* functions, the protocol's and the runtime (compiler-rt);
    and each el_* function's size. Buffers the caller owns (tiles, the 32 KB normal table, a 16 KB frame decoder) are
    not static data of the firmware and are not counted."""
    f = _elf_file(elf)
    try:
        out = {"text": 0, "rodata": 0, "data": 0, "bss": 0}
        for sec in f.iter_sections():
            flags_ = sec["sh_flags"]
            if not flags_ & 0x2:  # SHF_ALLOC
                continue
            if sec["sh_type"] == "SHT_NOBITS":
                out["bss"] += sec["sh_size"]
            elif flags_ & 0x4:  # SHF_EXECINSTR
                out["text"] += sec["sh_size"]
            elif flags_ & 0x1:  # SHF_WRITE
                out["data"] += sec["sh_size"]
            else:
                out["rodata"] += sec["sh_size"]
        out["flash"] = out["text"] + out["rodata"] + out["data"]
        out["static_ram"] = out["data"] + out["bss"]
        funcs = _functions(f)
    finally:
        f.stream.close()
    protocol = {n for n in prototypes() if n in _protocol_names()}
    by_address = {}
    for name, (addr, size) in funcs.items():
        by_address.setdefault(addr, (name, size))
    el = {name: size for name, (addr, size) in sorted(funcs.items()) if name.startswith("el_")}
    out["text_protocol"] = sum(s for n, s in el.items() if n in protocol)
    out["text_kernels"] = sum(s for n, s in el.items() if n not in protocol)
    out["text_runtime"] = sum(s for a, (n, s) in by_address.items() if not n.startswith("el_"))
    out["functions"] = el
    return out


@functools.lru_cache(maxsize=None)
def _protocol_names() -> frozenset:
    text = _strip_c((C_DIR / "el_protocol.h").read_text())
    return frozenset(re.findall(r"\b(el_\w+)\s*\(", text))


# ------------------------------------------------------------------------------------------------------------------
# Thumb-2 instruction classes and the cycle model
# ------------------------------------------------------------------------------------------------------------------
PIPELINE_REFILL = 2  # P: 1..3 cycles (target alignment and width); the midpoint
CYCLE_MODEL = {
    "source": "ARM Cortex-M4 TRM (DDI 0439), Table 3-1 and the FPU's Table 7-1, zero wait states",
    "alu": 1, "it": 1, "mul": 1, "div": 7, "load": 2, "store": 2, "load_dual": 3, "store_dual": 3,
    "load_multiple": "1 + N", "store_multiple": "1 + N", "branch_taken": f"1 + P, P = {PIPELINE_REFILL}",
    "branch_not_taken": 1, "fp_alu": 1, "fp_div_sqrt": 14, "fp_mov_core": 1, "fp_mov_core_pair": 2,
    "fp_load_store": "1 + words", "fp_load_store_multiple": "1 + words",
    "notes": ["MUL/MLA/MLS and the long multiplies (SMULL, UMULL, SMLAL, UMLAL) are single-cycle on the M4",
              "SDIV/UDIV take 2-12 cycles depending on the operands: counted as 7",
              "no credit for pipelined neighbouring loads/stores (each single load/store counts 2): an upper "
              "estimate for load-heavy code",
              "flash wait states (e.g. 5 at 168 MHz behind an ART accelerator) are not modelled",
              "IT counts 1 cycle (it can be folded); instructions skipped by IT count as executed"],
}


def _popcount(v: int) -> int:
    return bin(v).count("1")


def _classify(hw1: int, hw2: int | None):
    """(class, cycles before a taken-branch penalty, branch kind: None / 'always' / 'cond') of one Thumb
    instruction (hw2 None for a 16-bit one)."""
    if hw2 is None:
        if (hw1 & 0xFF00) == 0xBF00:
            return ("it", 1, None) if hw1 & 0xF else ("alu", 1, None)
        if (hw1 & 0xFF00) == 0x4700:  # BX, BLX register
            return "branch", 1 + PIPELINE_REFILL, "always"
        if (hw1 & 0xFF87) in (0x4687, 0x4487):  # MOV pc / ADD pc
            return "branch", 1 + PIPELINE_REFILL, "always"
        if (hw1 & 0xF800) == 0x4800:
            return "load", 2, None
        if (hw1 & 0xF000) == 0x5000:
            return ("load", 2, None) if (hw1 >> 9) & 7 >= 3 else ("store", 2, None)
        if (hw1 & 0xE000) == 0x6000 or (hw1 & 0xF000) in (0x8000, 0x9000):
            return ("load", 2, None) if hw1 & 0x0800 else ("store", 2, None)
        if (hw1 & 0xFE00) == 0xB400:
            return "store_multiple", 1 + _popcount(hw1 & 0x1FF), None
        if (hw1 & 0xFE00) == 0xBC00:
            n = _popcount(hw1 & 0x1FF)
            if hw1 & 0x100:
                return "load_multiple", 1 + n + PIPELINE_REFILL, "always"
            return "load_multiple", 1 + n, None
        if (hw1 & 0xF500) == 0xB100:
            return "branch", 1, "cond"
        if (hw1 & 0xF000) == 0xC000:
            n = _popcount(hw1 & 0xFF)
            return ("load_multiple" if hw1 & 0x0800 else "store_multiple"), 1 + n, None
        if (hw1 & 0xF000) == 0xD000:
            return ("alu", 1, None) if (hw1 >> 8) & 0xF >= 0xE else ("branch", 1, "cond")
        if (hw1 & 0xF800) == 0xE000:
            return "branch", 1 + PIPELINE_REFILL, "always"
        if (hw1 & 0xFFC0) == 0x4340:
            return "mul", 1, None
        return "alu", 1, None
    if (hw1 & 0xF800) == 0xF000 and hw2 & 0x8000:
        if hw2 & 0x4000 or hw2 & 0x1000:  # BL, BLX, B.W (T4)
            return "branch", 1 + PIPELINE_REFILL, "always"
        if (hw1 >> 6) & 0xF >= 0xE:  # MSR, MRS, barriers, hints
            return "alu", 1, None
        return "branch", 1, "cond"
    if (hw1 & 0xFE40) == 0xE800:  # LDM / STM (PUSH.W / POP.W)
        n = _popcount(hw2)
        if hw1 & 0x10:
            return ("load_multiple", 1 + n + PIPELINE_REFILL, "always") if hw2 & 0x8000 else \
                ("load_multiple", 1 + n, None)
        return "store_multiple", 1 + n, None
    if (hw1 & 0xFE40) == 0xE840:  # load/store dual, exclusive, table branch
        if (hw1 & 0xFFF0) == 0xE8D0 and (hw2 & 0xFFE0) == 0xF000:
            return "branch", 2 + PIPELINE_REFILL, "always"
        if hw1 & 0x0120:
            return ("load_dual", 3, None) if hw1 & 0x10 else ("store_dual", 3, None)
        return ("load", 2, None) if hw1 & 0x10 else ("store", 2, None)
    if (hw1 & 0xFE00) == 0xEA00:
        return "alu", 1, None
    if (hw1 & 0xEC00) == 0xEC00:  # coprocessor space: VFP when the coprocessor is 10 or 11
        coproc = (hw2 >> 8) & 0xF
        if coproc not in (10, 11):
            return "alu", 1, None
        if (hw1 & 0xFFE0) == 0xEC40:
            return "fp_mov_core_pair", 2, None
        if (hw1 & 0xEE00) == 0xEC00:
            if (hw1 & 0xFF20) == 0xED00:  # VLDR / VSTR
                return "fp_load_store", 2 + (coproc == 11), None
            return "fp_load_store_multiple", 1 + (hw2 & 0xFF), None
        if hw2 & 0x0010:
            return "fp_mov_core", 1, None
        opc1 = (hw1 >> 4) & 0xB
        if opc1 == 0x8 or (opc1 == 0xB and (hw1 & 0xF) == 0x1 and (hw2 & 0xC0) == 0xC0):
            return "fp_div_sqrt", 14, None
        return "fp_alu", 1, None
    if (hw1 & 0xF800) == 0xF000:
        return "alu", 1, None
    if (hw1 & 0xFE00) == 0xF800:
        return ("load", 2, None) if hw1 & 0x10 else ("store", 2, None)
    if (hw1 & 0xFF80) == 0xFB00:
        return "mul", 1, None
    if (hw1 & 0xFF80) == 0xFB80:
        return ("div", 7, None) if (hw1 >> 4) & 7 in (1, 3) else ("mul", 1, None)
    return "alu", 1, None


def decode_block(code: bytes):
    """Instructions of a block of Thumb code: [(offset, length, class, cycles, branch kind)]. Branch kinds of
    instructions inside an IT block become 'cond'."""
    out = []
    k = 0
    it_left = 0
    while k + 1 < len(code):
        hw1 = code[k] | code[k + 1] << 8
        wide = (hw1 >> 11) in (0b11101, 0b11110, 0b11111)
        hw2 = code[k + 2] | code[k + 3] << 8 if wide and k + 3 < len(code) else None
        cls, cycles, kind = _classify(hw1, hw2 if wide else None)
        if it_left:
            it_left -= 1
            if kind == "always":
                kind, cycles = "cond", cycles - PIPELINE_REFILL
        if cls == "it":
            mask = hw1 & 0xF
            it_left = 4 - (mask & -mask).bit_length() + 1
        length = 4 if wide else 2
        out.append((k, length, cls, cycles, kind))
        k += length
    return out


# ------------------------------------------------------------------------------------------------------------------
# the emulated target
# ------------------------------------------------------------------------------------------------------------------
@dataclass
class Counts:
    """Instructions and estimated cycles of one call, in total and split: `own` (outside the excluded functions)
    and `excluded` (inside them); `classes` counts instructions per class over the whole call; `stack` is the
    deepest stack use in bytes."""
    instructions: int = 0
    cycles: int = 0
    own_instructions: int = 0
    own_cycles: int = 0
    excluded_instructions: int = 0
    excluded_cycles: int = 0
    excluded_calls: int = 0
    classes: dict = field(default_factory=dict)
    by_function: dict = field(default_factory=dict)
    stack: int = 0

    def as_dict(self):
        return {k: getattr(self, k) for k in ("instructions", "cycles", "own_instructions", "own_cycles",
                                              "excluded_instructions", "excluded_cycles", "excluded_calls", "stack")}


class Target:
    """The firmware ELF loaded into a unicorn Cortex-M; `call` runs one function by name."""

    STACK_SIZE = 0x10000
    ARENA = RAM_BASE + 0x00100000  # argument buffers
    PAD = FLASH_BASE + FLASH_SIZE - 0x100  # return address: emulation stops when the callee returns here

    def __init__(self, elf, cpu: str = "cortex-m4"):
        uc_mod = _need("unicorn", "unicorn")
        self._arm = _need("unicorn.arm_const", "unicorn")
        self.cpu = cpu
        self.vfp = CPUS[cpu]["vfp"]
        self.uc = uc_mod.Uc(uc_mod.UC_ARCH_ARM, uc_mod.UC_MODE_THUMB | uc_mod.UC_MODE_MCLASS)
        self.uc.ctl_set_cpu_model(getattr(self._arm, CPUS[cpu]["uc_cpu"]))
        self.uc.mem_map(FLASH_BASE, FLASH_SIZE)
        self.uc.mem_map(RAM_BASE, RAM_SIZE)
        f = _elf_file(elf)
        try:
            for seg in f.iter_segments():
                if seg["p_type"] == "PT_LOAD" and seg["p_filesz"]:
                    self.uc.mem_write(seg["p_vaddr"], seg.data())  # .data already at its RAM address
            self.functions = _functions(f)
        finally:
            f.stream.close()
        self.uc.mem_write(self.PAD, b"\xfe\xe7")  # b .
        self.stack_top = RAM_BASE + RAM_SIZE
        self._blocks = {}
        names = {}
        for fname, (addr, size) in self.functions.items():  # one name per address: prefer el_*, then short names
            best = names.get(addr)
            if best is None or (fname.startswith("el_"), -len(fname)) > (best[0].startswith("el_"), -len(best[0])):
                names[addr] = (fname, size)
        self._starts = sorted(names)
        self._names = [names[a] for a in self._starts]
        self._hook = self.uc.hook_add(uc_mod.UC_HOOK_BLOCK, self._on_block)
        self._reset_counting(())

    # ---- counting -------------------------------------------------------------------------------------------------
    def _reset_counting(self, exclude):
        self._entries = {self.functions[name][0] for name in exclude}
        self._inside = False
        self._ret = None
        self._execs = [{}, {}]  # bucket 0 own, 1 excluded: {(addr, size): executions}
        self._taken = [{}, {}]  # {(addr, size): times the block was left to a non-fall-through address}
        self._prev = None
        self._excluded_calls = 0

    def _on_block(self, uc, addr, size, _data):
        if addr == self.PAD:
            return
        if self._inside:
            if addr == self._ret:
                self._inside = False
        elif addr in self._entries:
            self._inside = True
            self._excluded_calls += 1
            self._ret = uc.reg_read(self._arm.UC_ARM_REG_LR) & ~1
        bucket = 1 if self._inside else 0
        key = (addr, size)
        execs = self._execs[bucket]
        execs[key] = execs.get(key, 0) + 1
        prev = self._prev
        if prev is not None and addr != prev[0][0] + prev[0][1]:
            taken = self._taken[prev[1]]
            taken[prev[0]] = taken.get(prev[0], 0) + 1
        self._prev = (key, bucket)

    def _block_info(self, key):
        info = self._blocks.get(key)
        if info is None:
            instrs = decode_block(bytes(self.uc.mem_read(key[0], key[1])))
            classes = {}
            for ins in instrs:
                classes[ins[2]] = classes.get(ins[2], 0) + 1
            last_kind = instrs[-1][4] if instrs else None
            info = (len(instrs), sum(i[3] for i in instrs), last_kind, classes)
            self._blocks[key] = info
        return info

    def function_at(self, addr: int) -> str:
        k = bisect.bisect_right(self._starts, addr) - 1
        if k >= 0 and addr < self._starts[k] + self._names[k][1]:
            return self._names[k][0]
        return "?"

    def _tally(self, stack_used):
        counts = Counts(stack=stack_used, excluded_calls=self._excluded_calls)
        for bucket in (0, 1):
            n_ins = cycles = 0
            for key, times in self._execs[bucket].items():
                n, c, _, classes = self._block_info(key)
                n_ins += n * times
                cycles += c * times
                fname = self.function_at(key[0])
                counts.by_function[fname] = counts.by_function.get(fname, 0) + n * times
                for cls, k in classes.items():
                    counts.classes[cls] = counts.classes.get(cls, 0) + k * times
            for key, times in self._taken[bucket].items():
                if self._block_info(key)[2] == "cond":
                    cycles += PIPELINE_REFILL * times
                    counts.classes["branch_taken"] = counts.classes.get("branch_taken", 0) + times
            if bucket == 0:
                counts.own_instructions, counts.own_cycles = n_ins, cycles
            else:
                counts.excluded_instructions, counts.excluded_cycles = n_ins, cycles
        counts.instructions = counts.own_instructions + counts.excluded_instructions
        counts.cycles = counts.own_cycles + counts.excluded_cycles
        return counts

    # ---- calling --------------------------------------------------------------------------------------------------
    def call(self, name: str, *args, exclude=()):
        """Run `name(*args)` per AAPCS; returns (result, Counts). numpy array arguments are copied into the target's
        RAM and, when writable, copied back afterwards; bytes are input buffers; None is NULL; an int for a pointer
        is a raw target address. Functions named in `exclude` are counted apart (Counts.excluded_*)."""
        arm = self._arm
        uc = self.uc
        ret_kind, kinds = prototypes()[name]
        if len(args) != len(kinds):
            raise TypeError(f"{name} takes {len(kinds)} arguments, got {len(args)}")
        arena = self.ARENA
        copies = []
        core, vfp, stack = {}, {}, bytearray()
        ncrn, free_s = 0, [True] * 16

        def to_stack(data: bytes, align: int):
            while len(stack) % align:
                stack.append(0)
            stack.extend(data)

        for kind, arg in zip(kinds, args):
            if kind == "p":
                if arg is None:
                    value = 0
                elif isinstance(arg, (int, np.integer)):
                    value = int(arg)
                else:
                    buf = arg.tobytes() if isinstance(arg, np.ndarray) else bytes(arg)
                    if isinstance(arg, np.ndarray) and not arg.flags.c_contiguous:
                        raise ValueError(f"{name}: array arguments must be C-contiguous")
                    arena = (arena + 15) & ~15
                    value = arena
                    if buf:
                        uc.mem_write(arena, buf)
                    if isinstance(arg, np.ndarray) and arg.flags.writeable:
                        copies.append((arena, arg))
                    arena += max(len(buf), 1)
                    if arena >= self.stack_top - self.STACK_SIZE:
                        raise MemoryError(f"{name}: arguments do not fit the emulated RAM")
                arg = value
            if kind == "d" and self.vfp:
                for d in range(8):
                    if free_s[2 * d] and free_s[2 * d + 1]:
                        free_s[2 * d] = free_s[2 * d + 1] = False
                        vfp[d] = _f64_bits(arg)
                        break
                else:
                    free_s = [False] * 16
                    to_stack(struct.pack("<d", float(arg)), 8)
                continue
            if kind in ("d", "q", "Q"):
                bits = _f64_bits(arg) if kind == "d" else int(arg) & 0xFFFFFFFFFFFFFFFF
                ncrn += ncrn & 1
                if ncrn <= 2:
                    core[ncrn], core[ncrn + 1] = bits & 0xFFFFFFFF, bits >> 32
                    ncrn += 2
                else:
                    ncrn = 4
                    to_stack(struct.pack("<Q", bits), 8)
                continue
            value = (1 if arg else 0) if kind == "b" else int(arg) & 0xFFFFFFFF
            if ncrn < 4:
                core[ncrn] = value
                ncrn += 1
            else:
                to_stack(struct.pack("<I", value), 4)
        stack_used = self._run(self.functions[name][0], core, vfp, bytes(stack), exclude)
        for addr, arr in copies:
            data = bytes(uc.mem_read(addr, arr.nbytes))
            arr[...] = np.frombuffer(data, arr.dtype).reshape(arr.shape)
        r0 = uc.reg_read(arm.UC_ARM_REG_R0)
        r1 = uc.reg_read(arm.UC_ARM_REG_R1)
        if ret_kind == "v":
            result = None
        elif ret_kind == "d":
            bits = uc.reg_read(arm.UC_ARM_REG_D0) if self.vfp else r0 | r1 << 32
            result = struct.unpack("<d", struct.pack("<Q", bits))[0]
        elif ret_kind in ("q", "Q"):
            v = r0 | r1 << 32
            result = v - (1 << 64) if ret_kind == "q" and v >> 63 else v
        elif ret_kind == "i":
            result = r0 - (1 << 32) if r0 >> 31 else r0
        elif ret_kind == "h":
            result = r0 & 0xFFFF
        elif ret_kind == "b":
            result = bool(r0 & 0xFF)
        else:
            result = r0
        return result, self._tally(stack_used)

    def _run(self, entry: int, core: dict, vfp: dict, stack: bytes, exclude) -> int:
        """Run from `entry` with these registers and stacked arguments until the callee returns; returns the deepest
        stack use in bytes (the stack is painted before the call)."""
        arm, uc = self._arm, self.uc
        stack = stack + bytes(-len(stack) % 8)
        sp = (self.stack_top - 64 - len(stack)) & ~7
        uc.mem_write(self.stack_top - self.STACK_SIZE, b"\xa5" * (self.STACK_SIZE - 64))
        if stack:
            uc.mem_write(sp, stack)
        for r in range(13):
            uc.reg_write(getattr(arm, f"UC_ARM_REG_R{r}"), core.get(r, 0))
        if self.vfp:
            for d in range(16):
                uc.reg_write(getattr(arm, f"UC_ARM_REG_D{d}"), vfp.get(d, 0))
        uc.reg_write(arm.UC_ARM_REG_SP, sp)
        uc.reg_write(arm.UC_ARM_REG_LR, self.PAD | 1)
        self._reset_counting(exclude)
        uc.emu_start(entry | 1, self.PAD)
        low = bytes(uc.mem_read(self.stack_top - self.STACK_SIZE, self.STACK_SIZE - 64))
        untouched = len(low) - len(low.lstrip(b"\xa5"))
        return self.STACK_SIZE - 64 - untouched

    def call_address(self, name: str, *words: int):
        """Call a runtime routine by symbol (e.g. compiler-rt's __aeabi_dadd) with 32-bit words in r0-r3 (the
        __aeabi_* routines always use the base, core-register AAPCS); returns ((r0, r1), Counts)."""
        if len(words) > 4:
            raise TypeError("call_address passes at most four words")
        stack_used = self._run(self.functions[name][0], dict(enumerate(w & 0xFFFFFFFF for w in words)), {}, b"", ())
        arm = self._arm
        return (self.uc.reg_read(arm.UC_ARM_REG_R0), self.uc.reg_read(arm.UC_ARM_REG_R1)), self._tally(stack_used)

    def count_instructions_per_step(self, name: str, *args) -> int:
        """Cross-check of the block counting: the same call counted with a per-instruction code hook."""
        uc_mod = _need("unicorn", "unicorn")
        n = [0]

        def on_code(uc, addr, size, data):
            if addr != self.PAD:
                n[0] += 1

        hook = self.uc.hook_add(uc_mod.UC_HOOK_CODE, on_code)
        self.uc.ctl_flush_tb()  # blocks translated before the hook existed carry no per-instruction callback
        try:
            self.call(name, *args)
        finally:
            self.uc.hook_del(hook)
            self.uc.ctl_flush_tb()
        return n[0]


def _f64_bits(v) -> int:
    return struct.unpack("<Q", struct.pack("<d", float(v)))[0]


def tile_args(state, params, table_up, table_down, c2c_std):
    """The leading C arguments of the tile kernels: state, params, rows, cols, table_up, n_up, table_down, n_down,
    c2c_std."""
    rows, cols = state.shape
    return (state, params, rows, cols, table_up, table_up.shape[0], table_down, table_down.shape[0], float(c2c_std))


# ------------------------------------------------------------------------------------------------------------------
# measurements
# ------------------------------------------------------------------------------------------------------------------
def random_tile(rng, rows, cols, nodes=6):
    """A tile of devices (state, params, table_up, table_down) like the tests': per-device bounds and scales."""
    table_up = rng.uniform(0.05, 2.0, nodes)
    table_down = rng.uniform(0.05, 2.0, nodes)
    shape = (rows, cols)
    w_min = -rng.uniform(0.3, 1.2, shape)
    w_max = rng.uniform(0.3, 1.2, shape)
    params = np.empty((rows, cols, 5))
    params[..., 0] = rng.uniform(0.005, 0.3, shape)
    params[..., 1] = rng.uniform(0.005, 0.3, shape)
    params[..., 2] = w_min
    params[..., 3] = w_max
    params[..., 4] = (nodes - 1) / (w_max - w_min)
    state = rng.uniform(w_min, w_max)
    return state, params, table_up, table_down


def _slope(unit, small, large, what="own", note=""):
    """Per-unit cost between two runs: small / large = (units, Counts)."""
    (n1, c1), (n2, c2) = small, large
    ins = lambda c: getattr(c, f"{what}_instructions") if what != "all" else c.instructions  # noqa: E731
    cyc = lambda c: getattr(c, f"{what}_cycles") if what != "all" else c.cycles  # noqa: E731
    per_ins = (ins(c2) - ins(c1)) / (n2 - n1)
    per_cyc = (cyc(c2) - cyc(c1)) / (n2 - n1)
    out = {"unit": unit, "instructions": round(per_ins, 3), "cycles": round(per_cyc, 3),
           "cycles_per_instruction": round(per_cyc / per_ins, 3) if per_ins else None,
           "overhead_instructions": round(ins(c1) - per_ins * n1, 1),
           "overhead_cycles": round(cyc(c1) - per_cyc * n1, 1),
           "runs": [[n1, ins(c1), cyc(c1)], [n2, ins(c2), cyc(c2)]], "stack_bytes": max(c1.stack, c2.stack)}
    by_function = {}
    for fname in sorted(set(c1.by_function) | set(c2.by_function)):
        per = (c2.by_function.get(fname, 0) - c1.by_function.get(fname, 0)) / (n2 - n1)
        if abs(per) >= 0.05:
            by_function[_short(fname)] = round(per, 2)
    out["instructions_by_function"] = by_function  # all instructions (excluded calls included), per unit
    if what != "all":
        out["counted"] = "excluding the calls named in excluded" if what == "own" else "inside the excluded calls"
    if note:
        out["note"] = note
    return out


def measure(cpu: str = "cortex-m4", opt: str = "-O2", extra: tuple[str, ...] = ()) -> dict:
    """Instructions (exact) and estimated cycles per operation of the firmware on `cpu`. JSON-able."""
    from . import fixed

    elf = build_elf(cpu, opt, extra)
    t = Target(elf, cpu)
    rng = np.random.default_rng(20240601)
    table = fixed.normal_table()
    ops = {}

    def counters():
        return np.zeros(16, np.int64)

    # ---- mixed-precision update: chi per cell, no pulse firing -----------------------------------------------------
    def mp_run(rows, cols, fire):
        state, params, up, down = random_tile(rng, rows, cols)
        chi = rng.integers(-1000, 1000, rows * cols).astype(np.int32)
        x_q = rng.integers(-32767, 32768, cols).astype(np.int32)
        row_mult = rng.integers(-(2**15), 2**15, rows).astype(np.int32)
        eps = 1 if fire else 2**30  # eps = 1: every cell with chi != 0 fires (max_pulses 1)
        dp = np.zeros((2, rows, cols, 2), np.int32)
        _, c = t.call("el_mp_update", *tile_args(state, params, up, down, 0.05), chi, x_q, row_mult, eps, eps, 1,
                      fixed.seed_state(3), table, dp, counters(), exclude=("el_pulse_device",))
        return rows * cols, c

    ops["mp_update_chi_per_cell"] = _slope("cell", mp_run(8, 16, False), mp_run(8, 48, False),
                                           note="el_mp_update, no pulse fires (|chi| < eps): read chi, "
                                                "shift_round(row_mult * x_q, 15), saturate, compare, store")
    ops["mp_update_fire_per_cell"] = _slope(
        "firing cell", mp_run(8, 16, True), mp_run(8, 48, True),
        note="el_mp_update with every cell firing one pulse: threshold, div_trunc, remainder, pulse counters; the "
             "el_pulse_device call (device physics) excluded")

    def inc_run(n_x, n_d):
        x = rng.normal(0, 1, n_x)
        d = rng.normal(0, 1, n_d)
        _, c = t.call("el_chi_increments", x, n_x, d, n_d, 0.01, 20, np.zeros(n_x, np.int32),
                      np.zeros(n_d, np.int32))
        return c

    ops["chi_increments_per_x"] = _slope("x element", (16, inc_run(16, 4)), (64, inc_run(64, 4)), "all",
                                         note="x_q[j] = round(x_j / xmax * 32767) with soft-float doubles, plus "
                                              "the abs-max scan")
    ops["chi_increments_per_d"] = _slope("d element", (16, inc_run(4, 16)), (64, inc_run(4, 64)), "all",
                                         note="row_mult[i] = clamp(round(-lr d_i xmax 2^F)), soft-float")
    cell = ops["mp_update_chi_per_cell"]
    per_x, per_d = ops["chi_increments_per_x"], ops["chi_increments_per_d"]
    ops["mp_step_per_cell_with_increments"] = {
        "unit": "cell", "formula": "chi_per_cell + (per_x * cols + per_d * rows) / (rows * cols)",
        "tiles": {f"{r}x{c}": {"instructions": round(cell["instructions"] + (per_x["instructions"] * c
                                                                           + per_d["instructions"] * r) / (r * c), 2),
                               "cycles": round(cell["cycles"] + (per_x["cycles"] * c + per_d["cycles"] * r) / (r * c),
                                               2)}
                  for r, c in ((16, 16), (64, 64), (256, 785))}}

    # ---- MVM ---------------------------------------------------------------------------------------------------------
    def mvm_args(rows, cols, transpose=False):
        state, params, up, down = random_tile(rng, rows, cols)
        n_in, n_out = (rows, cols) if transpose else (cols, rows)
        vec = rng.normal(0, 1, n_in)
        return (state, np.zeros_like(state), rows, cols, False, vec, transpose, 8, 1.0, 8, 1e9, 0.0, 1, True, 3,
                fixed.seed_state(4), table, np.zeros(n_out, np.int32), counters(), np.zeros(n_in), np.zeros(n_out))

    def mvm_run(rows, cols):
        return t.call("el_mvm", *mvm_args(rows, cols), exclude=("el_analog_mvm",))[1]

    note = ("el_mvm forward (8-bit DAC and ADC, abs-max noise management, bound management on but never "
            "triggered, out_noise 0: output noise is the array's physics); the analog sum el_analog_mvm excluded")
    ops["mvm_per_input"] = _slope("input (DAC code)", (16, mvm_run(8, 16)), (48, mvm_run(8, 48)),
                                  note=note + "; abs-max scan and quantisation of one input")
    ops["mvm_per_output"] = _slope("output (ADC code)", (16, mvm_run(16, 8)), (48, mvm_run(48, 8)),
                                   note=note + "; bound check and quantisation of one output")
    ops["mvm_per_output"]["overhead_note"] = "overhead = the call's fixed cost with 8 inputs"
    run_small, run_large = mvm_run(8, 16), mvm_run(8, 48)
    ops["mvm_whole_call"] = {"unit": "call", "shape_8x16": run_small.as_dict(), "shape_8x48": run_large.as_dict(),
                             "note": "el_mvm including the analog sum (excluded_* is el_analog_mvm)"}

    def analog_run(rows, cols, transpose):
        state, _, _, _ = random_tile(rng, rows, cols)
        n_in, n_out = (rows, cols) if transpose else (cols, rows)
        _, c = t.call("el_analog_mvm", state, np.zeros_like(state), rows, cols, False, rng.normal(0, 1, n_in),
                      transpose, np.zeros(n_out))
        return rows * cols, c

    ops["analog_mvm_per_cell"] = _slope("cell", analog_run(8, 16, False), analog_run(8, 48, False), "all",
                                        note="the crossbar's physics (a soft-float multiply-add per device), "
                                             "reported for the host to exclude: not firmware work")

    # ---- front end ---------------------------------------------------------------------------------------------------
    def wf_run(windows, length):
        n = windows * length
        codes = rng.integers(-2000, 2000, (n, 1)).astype(np.int16)
        out = np.zeros((windows, 5), np.int32)
        res, c = t.call("el_window_features", codes, n, 1, length, length, out, 5)
        assert res == windows
        return c

    per_sample = _slope("sample (one channel)", (32, wf_run(4, 32)), (96, wf_run(4, 96)), "all")
    per_sample["instructions"] = round(per_sample["instructions"] / 4, 3)
    per_sample["cycles"] = round(per_sample["cycles"] / 4, 3)
    per_sample["note"] = ("el_window_features, 1 channel, hop = length: sum, sum of squares, sum of magnitudes, "
                          "min, max per sample (slope over the window length with 4 windows, divided by 4)")
    ops["window_features_per_sample"] = per_sample
    per_window = _slope("window (one channel, 32 samples)", (4, wf_run(4, 32)), (12, wf_run(12, 32)), "all")
    per_window["excluding_samples_instructions"] = round(per_window["instructions"] - 32 * per_sample["instructions"],
                                                         3)
    per_window["excluding_samples_cycles"] = round(per_window["cycles"] - 32 * per_sample["cycles"], 3)
    per_window["note"] = ("per window and channel: the 64-bit variance and mean divisions (__aeabi_ldivmod) and "
                          "isqrt64; excluding_samples_* subtracts 32 samples")
    ops["window_features_per_window"] = per_window

    def norm_run(windows):
        n = 5
        feats = rng.integers(-3000, 3000, (windows, n)).astype(np.int32)
        offset = rng.integers(-100, 100, n).astype(np.int32)
        mult = rng.integers(2**14, 2**15, n).astype(np.int32)
        shift = rng.integers(18, 24, n).astype(np.int32)
        _, c = t.call("el_normalise", feats, windows, n, offset, mult, shift, np.zeros((windows, n), np.int16))
        return windows * n, c

    ops["normalise_per_feature"] = _slope("feature value", norm_run(8), norm_run(40), "all",
                                          note="el_normalise: ((f - offset) * multiplier + half) >> shift, "
                                               "saturated to int16 (64-bit product and shift)")

    # ---- random numbers and pulse trains -----------------------------------------------------------------------------
    state = fixed.seed_state(11)
    ops["rng_u32_call"] = {"unit": "call", **_mean_calls(t, "el_rng_u32", lambda: (state,), 16),
                           "note": "one xorshift64* draw as a call (inlined where the kernels draw)"}
    ops["rng_normal_call"] = {"unit": "call", **_mean_calls(t, "el_rng_normal", lambda: (state, table), 16),
                              "note": "one draw + a quantile-table load, as a call"}

    def bits_run(n, bl):
        values = rng.uniform(-1, 1, n)
        return t.call("el_train_bits", values, n, 0.8, bl, fixed.seed_state(5), np.zeros(n, np.uint32))[1]

    slot = _slope("slot (one value)", (8, bits_run(8, 8)), (24, bits_run(8, 24)), "all")
    slot["instructions"] = round(slot["instructions"] / 8, 3)
    slot["cycles"] = round(slot["cycles"] / 8, 3)
    slot["note"] = ("el_train_bits: one rng_u32 draw, compare with the threshold and set a bit, per slot of one "
                    "value's train (slope over BL with 8 values, divided by 8)")
    ops["train_bits_per_slot"] = slot
    ops["train_bits_per_value"] = _slope("value (BL = 8)", (8, bits_run(8, 8)), (24, bits_run(24, 8)), "all",
                                         note="the per-value threshold (soft-float |v| * scale, min, to uint64) "
                                              "and 8 slots")

    # ---- apply_counts: the firmware's bookkeeping; the device physics apart ----------------------------------------
    def counts_run(rows, cols, pulses):
        state, params, up, down = random_tile(rng, rows, cols)
        if pulses:
            counts = rng.integers(1, 4, rows * cols).astype(np.int32) * rng.choice([-1, 1], rows * cols)
        else:
            counts = np.zeros(rows * cols, np.int32)
        _, c = t.call("el_apply_counts", *tile_args(state, params, up, down, 0.05), counts.astype(np.int32),
                      fixed.seed_state(6), table, np.zeros((2, rows, cols, 2), np.int32), counters(),
                      exclude=("el_pulse_device",))
        return rows * cols, c, int(np.abs(counts).sum())

    z1, z2 = counts_run(8, 16, False), counts_run(8, 48, False)
    ops["apply_counts_per_idle_cell"] = _slope("cell with count 0", z1[:2], z2[:2],
                                               note="el_apply_counts: read a zero count and skip")
    p1, p2 = counts_run(8, 8, True), counts_run(8, 24, True)
    device = _slope("device with pulses", p1[:2], p2[:2],
                    note="el_apply_counts per device given 1-3 pulses: sign, pulse_device call set-up, device_pulses "
                         "and total/net counters (the firmware's bookkeeping); el_pulse_device excluded")
    device["pulses_in_runs"] = [p1[2], p2[2]]
    device["physics_per_pulse_in_runs"] = round((p2[1].excluded_instructions - p1[1].excluded_instructions)
                                                / (p2[2] - p1[2]), 2)
    ops["apply_counts_per_pulsed_device"] = device

    def pulse_run(n):
        state, params, up, down = random_tile(rng, 2, 2)
        return t.call("el_pulse_device", state, params, 2, 2, 1, 0, n, 1 if n % 2 else -1, up, up.shape[0], down,
                      down.shape[0], 0.05, fixed.seed_state(7), table)[1]

    ops["pulse_device_per_pulse"] = _slope("pulse", (2, pulse_run(2)), (18, pulse_run(18)), "all",
                                           note="the crossbar's physics: c2c draw (rng_normal), step_state "
                                                "(soft-float relative_step and clip); not firmware work")

    def step_args():
        state, params, up, down = random_tile(rng, 1, 1)
        p = params[0, 0]
        return (float(state[0, 0]), int(rng.choice([-1, 1])), up, up.shape[0], down, down.shape[0], p[0], p[1], p[2],
                p[3], p[4], float(rng.normal(0, 0.05)))

    ops["step_state_call"] = {"unit": "call", **_mean_calls(t, "el_step_state", step_args, 64),
                              "note": "device physics of one pulse (soft-float), mean over 64 random states"}

    # ---- protocol ----------------------------------------------------------------------------------------------------
    def payload(n):
        data = rng.integers(0, 256, n).astype(np.uint8)
        return data.tobytes()

    def crc_run(n):
        return t.call("el_crc16", payload(n), n)[1]

    ops["crc16_per_byte"] = _slope("byte", (64, crc_run(64)), (1024, crc_run(1024)), "all",
                                   note="table-driven CRC-16/CCITT-FALSE")

    def cobs_run(n):
        return t.call("el_cobs_encode", payload(n), n, np.zeros(n + n // 254 + 1, np.uint8), n + n // 254 + 1)[1]

    ops["cobs_encode_per_byte"] = _slope("byte", (64, cobs_run(64)), (1024, cobs_run(1024)), "all")

    def frame_run(n):
        cap = 1 + (n + 2) + (n + 2) // 254 + 1 + 2
        return t.call("el_encode_frame", payload(n), n, np.zeros(cap, np.uint8), cap)[1]

    ops["encode_frame_per_byte"] = _slope("payload byte", (64, frame_run(64)), (1024, frame_run(1024)), "all",
                                          note="CRC + COBS + delimiters")
    dec_size = t.call("el_decoder_size")[0]

    def feed_run(n):
        from . import protocol

        data = payload(n)
        wire = protocol.encode_frame(data)
        dec = np.zeros(dec_size, np.uint8)
        t.call("el_decoder_init", dec)
        out = np.zeros(n + 8, np.uint8)
        consumed = np.zeros(1, np.uint32)
        res, c = t.call("el_decoder_feed", dec, wire, len(wire), out, out.shape[0], consumed)
        if res != n or out[:n].tobytes() != data:
            raise AssertionError(f"el_decoder_feed did not return the {n}-byte payload ({res})")
        return len(wire), c

    ops["decoder_feed_per_byte"] = _slope("wire byte", feed_run(64), feed_run(1024), "all",
                                          note="el_decoder_feed over a whole frame: buffering each byte, then COBS "
                                               "decoding in place and the CRC check at the closing delimiter")

    ops["softfloat"] = _softfloat(t, rng)

    result = {
        "cpu": cpu, "cpu_note": CPUS[cpu]["note"], "compiler": compiler_version(),
        "flags": flags(cpu, opt, tuple(extra)),
        "source_hash": source_hash(), "elf": str(elf), "sizes": {k: v for k, v in sizes(elf).items()
                                                                 if k != "functions"},
        "decoder_struct_bytes": dec_size, "cycle_model": CYCLE_MODEL,
        "method": "instructions counted exactly in unicorn (block hook, each block decoded once); per-unit figures "
                  "are slopes between two runs of different sizes (overhead_* is the rest of the smaller run); "
                  "cycles = instruction classes weighted per cycle_model (an estimate)",
        "operations": ops,
    }
    return result


def _softfloat(t: Target, rng) -> dict:
    """Instructions per compiler-rt routine (mean over random operands), each result checked against the host's
    IEEE arithmetic: what every double operation of the kernels costs on a single-precision FPU."""
    def bits(v):
        return _f64_bits(v)

    def words(v):
        b = bits(v)
        return [b & 0xFFFFFFFF, b >> 32]

    def as_double(r):
        return struct.unpack("<d", struct.pack("<Q", r[0] | r[1] << 32))[0]

    binary = {"__aeabi_dadd": lambda a, b: a + b, "__aeabi_dsub": lambda a, b: a - b,
              "__aeabi_dmul": lambda a, b: a * b, "__aeabi_ddiv": lambda a, b: a / b}
    out = {}
    n = 32
    a_vals = (rng.normal(0, 1, n) * 10.0 ** rng.uniform(-3, 3, n)).tolist()
    b_vals = (rng.normal(0, 1, n) * 10.0 ** rng.uniform(-3, 3, n)).tolist()
    for name, op in binary.items():
        if name not in t.functions:
            continue
        counts = []
        for a, b in zip(a_vals, b_vals):
            r, c = t.call_address(name, *words(a), *words(b))
            if bits(as_double(r)) != bits(op(a, b)):
                raise AssertionError(f"{name}({a!r}, {b!r}) = {as_double(r)!r}, IEEE says {op(a, b)!r}")
            counts.append(c.instructions)
        out[name] = {"instructions": round(float(np.mean(counts)), 1), "min": min(counts), "max": max(counts)}
    compares = {"__aeabi_dcmplt": lambda a, b: a < b, "__aeabi_dcmpgt": lambda a, b: a > b,
                "__aeabi_dcmple": lambda a, b: a <= b, "__aeabi_dcmpge": lambda a, b: a >= b,
                "__aeabi_dcmpeq": lambda a, b: a == b}
    for name, op in compares.items():
        if name not in t.functions:
            continue
        counts = []
        for a, b in zip(a_vals, b_vals):
            r, c = t.call_address(name, *words(a), *words(b))
            if bool(r[0]) != op(a, b):
                raise AssertionError(f"{name}({a!r}, {b!r}) = {r[0]}")
            counts.append(c.instructions)
        out[name] = {"instructions": round(float(np.mean(counts)), 1), "min": min(counts), "max": max(counts)}
    ints = rng.integers(-(2**40), 2**40, n).tolist()
    conversions = {"__aeabi_l2d": (lambda v: [v & 0xFFFFFFFF, (v >> 32) & 0xFFFFFFFF], ints,
                                   lambda v, r: bits(as_double(r)) == bits(float(v))),
                   "__aeabi_d2lz": (words, a_vals, lambda v, r: (r[0] | r[1] << 32) == int(v) & (2**64 - 1)),
                   "__aeabi_d2iz": (words, a_vals, lambda v, r: r[0] == int(v) & 0xFFFFFFFF)}
    for name, (make, values, check) in conversions.items():
        if name not in t.functions:
            continue
        counts = []
        for v in values:
            r, c = t.call_address(name, *make(v))
            if not check(v, r):
                raise AssertionError(f"{name}({v!r}) gave {r}")
            counts.append(c.instructions)
        out[name] = {"instructions": round(float(np.mean(counts)), 1), "min": min(counts), "max": max(counts)}
    if "__aeabi_ldivmod" in t.functions:
        counts = []
        for a, b in zip(rng.integers(-(2**50), 2**50, n).tolist(), rng.integers(1, 2**20, n).tolist()):
            r, c = t.call_address("__aeabi_ldivmod", a & 0xFFFFFFFF, (a >> 32) & 0xFFFFFFFF, b, 0)
            q = abs(a) // b * (1 if a >= 0 else -1)
            if (r[0] | r[1] << 32) != q & (2**64 - 1):
                raise AssertionError(f"__aeabi_ldivmod({a}, {b})")
            counts.append(c.instructions)
        out["__aeabi_ldivmod"] = {"instructions": round(float(np.mean(counts)), 1), "min": min(counts),
                                  "max": max(counts), "operands": "51-bit / 21-bit"}
    out["note"] = ("zig's compiler-rt (generic Zig code, not libgcc's hand-written ARM assembly), called with the "
                   "base AAPCS; every result checked bit for bit against the host's IEEE double arithmetic")
    return out


def _short(name: str) -> str:
    return name.split(".")[-1]


def _mean_calls(t: Target, name, make_args, n):
    ins, cyc = [], []
    for _ in range(n):
        _, c = t.call(name, *make_args())
        ins.append(c.instructions)
        cyc.append(c.cycles)
    return {"instructions": round(float(np.mean(ins)), 2), "cycles": round(float(np.mean(cyc)), 2),
            "instructions_min": int(min(ins)), "instructions_max": int(max(ins)), "calls": n}


if __name__ == "__main__":  # pragma: no cover
    path = build_elf()
    print(json.dumps(sizes(path), indent=1))
    print(json.dumps(measure(), indent=1))
