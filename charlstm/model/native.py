"""The one piece of charlstm in C: an LSTM layer's cell update, compiled on first use.

On a CPU without fast bf16, a batch-32 sampling step's int8 gate products already run at
the CPU's int8 peak, and the ten-odd PyTorch passes per layer after them (sigmoids, the
cell update, tanh(c), h, each dispatched on its own) were a third of the step. They cannot
be fused with PyTorch's own operations, so ``lstm_cell.c`` does them in one pass. It is
compiled with the machine's C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``) for the
instruction set PyTorch itself runs at, into the user's cache folder, and checked against
PyTorch on a small case before it is used. Where there is no compiler, or anything in that
fails, :func:`cell_kernel` returns why (:class:`KernelAbsent`) and the stepper keeps PyTorch's passes:
sampling is then slower, never different or broken. Nothing is downloaded.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from ..base.fsutil import user_dir

KERNEL_DIR_ENV = "CHARLSTM_KERNEL_DIR"
# Strict IEEE rounding for everything but errno and traps (which stop the loops vectorizing);
# no -ffast-math: linking with it would switch denormals off for the whole process.
COMPILE_FLAGS = ("-O3", "-fPIC", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math")
# x86 flags by the instruction set PyTorch's own kernels run at (ATEN_CPU_CAPABILITY caps both).
ARCH_FLAGS = {
    "AVX512": ("-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma"),
    "AVX2": ("-mavx2", "-mfma"),
}
COMPILE_SECONDS = 120


@dataclass(frozen=True)
class CellKernel:
    """The loaded update and what it was built with (shown by ``charlstm bench``)."""

    update: ctypes._CFuncPtr
    compiler: str
    flags: tuple[str, ...]
    path: Path

    def describe(self) -> str:
        arch = " ".join(flag for flag in self.flags if flag.startswith("-m")) or "the compiler's default"
        threads = ", on PyTorch's threads" if "-fopenmp" in self.flags else ""
        return f"C cell update ({Path(self.compiler).name}, {arch}{threads})"


@dataclass(frozen=True)
class KernelAbsent:
    """Why the C update is not in use: said by ``charlstm bench`` next to the figures it explains."""

    reason: str

    def describe(self) -> str:
        return f"PyTorch passes ({self.reason})"


def _compiler() -> str | None:
    named = os.environ.get("CC")
    if named:
        return shutil.which(named)
    return next((path for name in ("cc", "gcc", "clang") if (path := shutil.which(name))), None)


def _torch_openmp() -> Path | None:
    """PyTorch's own OpenMP runtime (Linux wheels ship GNU's in torch/lib). Linked against it, the update's
    parallel loop runs on the threads PyTorch's kernels use (and its thread count); a second runtime
    would bring threads of its own that spin against them."""
    return next(iter(sorted(Path(torch.__file__).parent.joinpath("lib").glob("libgomp*.so*"))), None)


def _flags(openmp: Path | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The compile flags and the link flags (PyTorch's OpenMP runtime, where there is one)."""
    flags = COMPILE_FLAGS + (("-fopenmp",) if openmp else ())
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags += ARCH_FLAGS.get(torch.backends.cpu.get_cpu_capability(), ())
    return flags, ((str(openmp), f"-Wl,-rpath,{openmp.parent}") if openmp else ())


def _build(compiler: str, flags: tuple[str, ...], link: tuple[str, ...], source: bytes, target: Path) -> None:
    """Compile ``source`` into the shared library ``target``, written whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as work:
        c_file, object_file, library = Path(work, "lstm_cell.c"), Path(work, "lstm_cell.o"), Path(work, target.name)
        c_file.write_bytes(source)
        # Compile and link apart: the link step gets no optimisation flags that could change the process's float modes.
        for command in ([compiler, *flags, "-c", str(c_file), "-o", str(object_file)],
                        [compiler, "-shared", str(object_file), *link, "-o", str(library)]):
            done = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_SECONDS, stdin=subprocess.DEVNULL)
            if done.returncode != 0:
                said = (done.stderr or done.stdout).strip().splitlines()
                raise OSError(f"{Path(compiler).name} failed: {said[-1] if said else f'exit status {done.returncode}'}")
        os.replace(library, target)


def _load(path: Path) -> ctypes._CFuncPtr:
    update = ctypes.CDLL(str(path)).lstm_cell_update
    i64, pointer = ctypes.c_int64, ctypes.c_void_p
    update.argtypes = [i64, i64, pointer, i64, pointer, i64, pointer, pointer, i64, pointer, i64]
    update.restype = ctypes.c_int64
    return update


def reference_update(gates: torch.Tensor, double_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``lstm_cell_update`` computes, in PyTorch: (new 2c, new h/2) from the gates (rows x 4H)."""
    i, f, g, o = gates.sigmoid().chunk(4, dim=1)
    new_double_c = f * double_c + 2 * i * (2 * g - 1)
    return new_double_c, o * (torch.sigmoid(new_double_c) - 0.5)


def _agrees_with_pytorch(update: ctypes._CFuncPtr) -> bool:
    """A small case against :func:`reference_update`: a compiler that miscompiles is not trusted."""
    generator = torch.Generator().manual_seed(0)
    rows, hidden, vocab = 3, 37, 5
    gates = torch.randn(rows, 4 * hidden, generator=generator) * 4
    table = torch.randn(vocab, 4 * hidden, generator=generator)
    ids = torch.tensor([4, 0, 2])
    double_c = torch.randn(rows, hidden, generator=generator)
    half_h = torch.zeros(rows, hidden)
    expected_c, expected_h = reference_update(gates + table[ids], double_c)
    status = update(rows, hidden, gates.data_ptr(), 4 * hidden, table.data_ptr(), vocab, ids.data_ptr(),
                    double_c.data_ptr(), hidden, half_h.data_ptr(), hidden)
    return status == 0 and torch.allclose(double_c, expected_c, atol=1e-5) and torch.allclose(half_h, expected_h, atol=1e-5)


@functools.cache
def cell_kernel() -> CellKernel | KernelAbsent:
    """The compiled cell update (built once per source, compiler and flags, then loaded from the cache),
    or why there is none. Decided once per process."""
    if sys.platform == "win32":
        return KernelAbsent("not built on Windows")
    compiler = _compiler()
    if compiler is None:
        return KernelAbsent("no C compiler found; set CC or install gcc or clang for faster sampling")
    flags, link = _flags(_torch_openmp())
    source = resources.files(__package__).joinpath("lstm_cell.c").read_bytes()
    key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(flags + link).encode(), platform.machine().encode()]))
    path = user_dir("cache", "kernels", KERNEL_DIR_ENV) / f"lstm_cell-{key.hexdigest()[:16]}.so"
    try:
        try:
            update = _load(path)
        except (OSError, AttributeError):  # not built yet, or damaged: build it (again)
            _build(compiler, flags, link, source, path)
            update = _load(path)
    except (OSError, subprocess.SubprocessError, AttributeError) as error:
        return KernelAbsent(f"building it failed: {error}")
    if not _agrees_with_pytorch(update):
        return KernelAbsent(f"the build in {path} disagreed with PyTorch on a test case")
    return CellKernel(update, compiler, flags, path)
