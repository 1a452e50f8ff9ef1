"""The one piece of charlstm in C: an LSTM layer's int8 sampling step, compiled on first use.

On a CPU without fast bf16 a batch-32 sampling step is bound by its int8 multiply-adds. Through
PyTorch each layer was fbgemm's quantised product (a fixed cost of about 13 µs a call: it measures
and quantises the input, then scales the sums out to memory) followed by ten-odd passes for the cell
update, each dispatched on its own; none of that can be fused with PyTorch's own operations. So
``lstm_layer.c`` does a layer in one call: it quantises the input once, keeps the integer sums in
registers and updates the cells from them. It is compiled with the machine's C compiler (``$CC``,
else ``gcc`` or ``cc``; GCC, whose OpenMP is the runtime PyTorch ships, so the step runs on PyTorch's
threads) for the instruction set PyTorch itself runs at, into the user's
cache folder, and checked against its PyTorch twin (:func:`reference_step`) on a small case before
it is used. Where there is no compiler, or anything in that fails, :func:`layer_kernel` returns why
(:class:`KernelAbsent`) and the stepper keeps fbgemm and PyTorch's passes: sampling is then slower,
never broken. Nothing is downloaded.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
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
# No errno or traps (they stop the loops vectorizing), and no -ffast-math: linking with it would switch
# denormals off for the whole process. (The compiler may still fuse a multiply and an add into one FMA.)
COMPILE_FLAGS = ("-O3", "-fPIC", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math")
# x86 flags by the instruction set PyTorch's own kernels run at (ATEN_CPU_CAPABILITY caps both);
# AVX512 machines with VNNI also get its one-instruction int8 dot products.
ARCH_FLAGS = {
    "AVX512": ("-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma"),
    "AVX2": ("-mavx2", "-mfma"),
}
VNNI_FLAG = "-mavx512vnni"
# Input quantisation: seven bits, q = round(x / s) + 64 with s = max|x| / INPUT_LEVELS (see lstm_layer.c).
INPUT_LEVELS = 63
INPUT_ZERO = 64
COMPILE_SECONDS = 120


def quantize_weight_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 weights with one scale per row (output): ``weight ≈ q * scale[:, None]``."""
    scale = (weight.abs().amax(dim=1) / 127).clamp_min(1e-12)
    return torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def quantize_input_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row as whole numbers in -63..63 and its scale (``x ≈ q * scale[:, None]``): what the kernel
    stores, less its zero point of 64."""
    scale = x.abs().amax(dim=1) / INPUT_LEVELS
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(x / scale[:, None]), scale


def reference_step(weight: torch.Tensor, bias: torch.Tensor | None, table: torch.Tensor | None, ids: torch.Tensor | None,
                   x: torch.Tensor, double_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``lstm_layer_step`` computes, in PyTorch: the new (2c, h/2) of one layer from its input x
    (rows x inputs) and 2c, with gate weights (4H x inputs), bias (4H) and table rows (vocab x 4H) as
    :meth:`LayerKernel.pack` takes them."""
    weight_q, weight_scale = quantize_weight_rows(weight.float())
    x_q, x_scale = quantize_input_rows(x)
    gates = (x_q.double() @ weight_q.double().T).float() * x_scale[:, None] * weight_scale
    if bias is not None:
        gates = gates + bias
    if table is not None:
        gates = gates + table[ids]
    i, f, g, o = gates.sigmoid().chunk(4, dim=1)
    new_double_c = f * double_c + 2 * i * (2 * g - 1)
    return new_double_c, o * (torch.sigmoid(new_double_c) - 0.5)


@dataclass(frozen=True)
class PackedLayer:
    """One layer's weights in the kernel's layout (see lstm_layer.c); the tensors must outlive the calls."""

    hidden: int
    inputs: int
    inputs_padded: int
    weights: torch.Tensor  # int8: blocks x inputs_padded/4 x 4 gates x units x 4
    start: torch.Tensor  # int32, blocks x 4 x units: -64 times each weight row's sum
    scale: torch.Tensor  # blocks x 4 x units
    bias: torch.Tensor  # blocks x 4 x units
    table: torch.Tensor | None  # vocab x blocks x 4 x units


@dataclass(frozen=True)
class LayerKernel:
    """The loaded step, its block size and what it was built with (shown by ``charlstm bench``)."""

    step: ctypes._CFuncPtr
    units: int
    compiler: tuple[str, ...]  # the command, as in ("/usr/bin/ccache", "gcc")
    flags: tuple[str, ...]
    path: Path

    def describe(self) -> str:
        arch = " ".join(flag for flag in self.flags if flag.startswith("-m"))
        return f"compiled int8 layer step ({_named(self.compiler)}, {arch}, on PyTorch's threads)"

    def pack(self, weight: torch.Tensor, bias: torch.Tensor | None, table: torch.Tensor | None) -> PackedLayer:
        """Gate weights (4H x inputs, PyTorch's gate order), bias (4H) and table (vocab x 4H, added per id) in
        the kernel's layout, with hidden units padded to whole blocks and inputs to a multiple of 4."""
        gate_rows, inputs = weight.shape
        hidden, units = gate_rows // 4, self.units
        blocks, inputs_padded = -(-hidden // units), -(-inputs // 4) * 4
        padded = blocks * units

        def per_block(values: torch.Tensor) -> torch.Tensor:  # (..., 4H) -> (..., blocks, 4, units)
            grown = values.new_zeros(*values.shape[:-1], 4, padded)
            grown[..., :hidden] = values.unflatten(-1, (4, hidden))
            return grown.unflatten(-1, (blocks, units)).movedim(-3, -2).contiguous()

        weight_q, weight_scale = quantize_weight_rows(weight.float())
        grown = torch.zeros(4, padded, inputs_padded, dtype=torch.int8)
        grown[:, :hidden, :inputs] = weight_q.view(4, hidden, inputs)
        packed = grown.view(4, blocks, units, inputs_padded // 4, 4).permute(1, 3, 0, 2, 4).contiguous()
        row_sums = weight_q.to(torch.int32).sum(dim=1)
        return PackedLayer(
            hidden, inputs, inputs_padded,
            weights=packed.flatten(),
            start=per_block((-INPUT_ZERO * row_sums).to(torch.int32)),
            scale=per_block(weight_scale.float()),
            bias=per_block(bias.float() if bias is not None else torch.zeros(gate_rows)),
            table=None if table is None else per_block(table.float()),
        )


@dataclass(frozen=True)
class KernelAbsent:
    """Why the compiled step is not in use: said by ``charlstm bench`` next to the figures it explains."""

    reason: str

    def describe(self) -> str:
        return f"fbgemm products and PyTorch passes ({self.reason})"


def _named(compiler: tuple[str, ...] | list[str]) -> str:
    """The compiler's command without its folders, as said in messages: ``gcc``, ``ccache gcc``."""
    return " ".join(Path(part).name for part in compiler)


def _compiler() -> list[str] | None:
    """The compiler's command: ``$CC`` (which may carry arguments, as in ``ccache gcc``), else ``gcc`` or
    ``cc``, the first on the PATH."""
    named = shlex.split(os.environ.get("CC", ""))
    if named:
        found = shutil.which(named[0])
        return [found, *named[1:]] if found else None
    return next(([path] for name in ("gcc", "cc") if (path := shutil.which(name))), None)


def _is_clang(compiler: list[str]) -> bool:
    """clang's OpenMP calls LLVM's runtime, which PyTorch's GNU one (libgomp) does not provide."""
    try:
        said = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=COMPILE_SECONDS,
                              stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "clang" in said.lower()


def _torch_openmp() -> Path | None:
    """PyTorch's own OpenMP runtime (Linux wheels ship GNU's in torch/lib). Linked against it, the update's
    parallel loop runs on the threads PyTorch's kernels use (and its thread count); a second runtime
    would bring threads of its own that spin against them."""
    return next(iter(sorted(Path(torch.__file__).parent.joinpath("lib").glob("libgomp*.so*"))), None)


def _arch_flags() -> tuple[str, ...] | None:
    """The instruction-set flags for the level PyTorch's own kernels run at (``ATEN_CPU_CAPABILITY`` caps
    both), or None below AVX2 or off x86, where fbgemm's int8 does not run either."""
    capability = torch.backends.cpu.get_cpu_capability()
    if platform.machine().lower() not in ("x86_64", "amd64") or capability not in ARCH_FLAGS:
        return None
    vnni = capability == "AVX512" and getattr(torch.cpu, "_is_vnni_supported", lambda: False)()
    return ARCH_FLAGS[capability] + ((VNNI_FLAG,) if vnni else ())


def _flags(arch: tuple[str, ...], openmp: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The compile flags and the link flags (PyTorch's OpenMP runtime)."""
    return COMPILE_FLAGS + ("-fopenmp",) + arch, (str(openmp), f"-Wl,-rpath,{openmp.parent}")


def _build(compiler: list[str], flags: tuple[str, ...], link: tuple[str, ...], source: bytes, target: Path) -> None:
    """Compile ``source`` into the shared library ``target``, written whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as work:
        c_file, object_file, library = Path(work, "lstm_layer.c"), Path(work, "lstm_layer.o"), Path(work, target.name)
        c_file.write_bytes(source)
        # Compile and link apart: the link step gets no optimisation flags that could change the process's float modes.
        for command in ([*compiler, *flags, "-c", str(c_file), "-o", str(object_file)],
                        [*compiler, "-shared", str(object_file), *link, "-o", str(library)]):
            done = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_SECONDS, stdin=subprocess.DEVNULL)
            if done.returncode != 0:
                said = (done.stderr or done.stdout).strip().splitlines()
                raise OSError(f"{_named(compiler)} failed: {said[-1] if said else f'exit status {done.returncode}'}")
        os.replace(library, target)


def _load(path: Path) -> tuple[ctypes._CFuncPtr, int]:
    """The step function and the kernel's units per block."""
    library = ctypes.CDLL(str(path))
    step = library.lstm_layer_step
    i64, pointer = ctypes.c_int64, ctypes.c_void_p
    step.argtypes = [i64, i64, i64, i64, pointer, i64, pointer, pointer, pointer, pointer, pointer, pointer, pointer, i64,
                     pointer, pointer, i64, pointer, i64]
    step.restype = i64
    library.lstm_layer_units.restype = i64
    return step, library.lstm_layer_units()


StepArguments = tuple[tuple[object, ...], tuple[object, ...]]


def step_arguments(layer: PackedLayer, x: torch.Tensor, double_c: torch.Tensor, half_h: torch.Tensor,
                   scratch: torch.Tensor, scratch_scale: torch.Tensor) -> StepArguments:
    """``lstm_layer_step``'s arguments for these tensors (rows of x, double_c and half_h; scratch holds rows x
    inputs_padded bytes), in two parts either side of the ids pointer: worked out once, the stepper passes
    only the ids at each step. The tensors must outlive every call made with them."""
    table = layer.table
    return ((x.shape[0], layer.hidden, layer.inputs, layer.inputs_padded, x.data_ptr(), x.stride(0), scratch.data_ptr(),
             scratch_scale.data_ptr(), layer.weights.data_ptr(), layer.start.data_ptr(), layer.scale.data_ptr(),
             layer.bias.data_ptr(), None if table is None else table.data_ptr(), 0 if table is None else table.shape[0]),
            (double_c.data_ptr(), double_c.stride(0), half_h.data_ptr(), half_h.stride(0)))


def run_step(kernel: LayerKernel, layer: PackedLayer, x: torch.Tensor, ids: torch.Tensor | None, double_c: torch.Tensor,
             half_h: torch.Tensor, scratch: torch.Tensor, scratch_scale: torch.Tensor) -> int:
    """One call of the step on tensors (see :func:`step_arguments`): 0, or -1 when an id is out of range
    (nothing changed)."""
    before_ids, after_ids = step_arguments(layer, x, double_c, half_h, scratch, scratch_scale)
    return kernel.step(*before_ids, None if ids is None else ids.data_ptr(), *after_ids)


def _agrees_with_pytorch(kernel: LayerKernel) -> bool:
    """A small case against :func:`reference_step`: a compiler that miscompiles is not trusted. Odd sizes, so
    that padded units and inputs and a part-filled group of rows (3 of 4 or 1 of 2) are exercised."""
    generator = torch.Generator().manual_seed(0)
    rows, hidden, inputs, vocab = 7, 37, 41, 5
    weight = torch.randn(4 * hidden, inputs, generator=generator)
    bias = torch.randn(4 * hidden, generator=generator)
    table = torch.randn(vocab, 4 * hidden, generator=generator)
    ids = torch.tensor([4, 0, 2, 2, 1, 3, 0])
    x = torch.rand(rows, inputs, generator=generator) - 0.5
    double_c = torch.randn(rows, hidden, generator=generator)
    half_h = torch.zeros(rows, hidden)
    expected_c, expected_h = reference_step(weight, bias, table, ids, x, double_c)
    layer = kernel.pack(weight, bias, table)
    status = run_step(kernel, layer, x, ids, double_c, half_h, torch.empty(rows, layer.inputs_padded, dtype=torch.uint8),
                      torch.empty(rows))
    return status == 0 and torch.allclose(double_c, expected_c, atol=1e-5) and torch.allclose(half_h, expected_h, atol=1e-5)


@functools.cache
def layer_kernel() -> LayerKernel | KernelAbsent:
    """The compiled layer step (built once per source, compiler and flags, then loaded from the cache),
    or why there is none. Decided once per process."""
    if sys.platform == "win32":
        return KernelAbsent("not built on Windows")
    arch = _arch_flags()
    if arch is None:
        return KernelAbsent(f"needs an x86 CPU with AVX2 (PyTorch runs at {torch.backends.cpu.get_cpu_capability()} "
                            f"on {platform.machine()})")
    compiler = _compiler()
    if compiler is None:
        return KernelAbsent("no C compiler found; set CC or install gcc for faster sampling")
    openmp = _torch_openmp()
    if openmp is None:  # one thread against fbgemm's several would lose at batch 32
        return KernelAbsent("this PyTorch has no GNU OpenMP runtime to share its threads with")
    if _is_clang(compiler):
        return KernelAbsent("clang cannot use PyTorch's GNU OpenMP runtime; set CC=gcc for faster sampling")
    flags, link = _flags(arch, openmp)
    source = resources.files(__package__).joinpath("lstm_layer.c").read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(compiler).encode(), " ".join(flags + link).encode(),
                                      platform.machine().encode()]))
    path = user_dir("cache", "kernels", KERNEL_DIR_ENV) / f"lstm_layer-{key.hexdigest()[:16]}.so"
    try:
        try:
            step, units = _load(path)
        except (OSError, AttributeError):  # not built yet, or damaged: build it (again)
            _build(compiler, flags, link, source, path)
            step, units = _load(path)
    except (OSError, subprocess.SubprocessError, AttributeError) as error:
        return KernelAbsent(f"building it failed: {error}")
    kernel = LayerKernel(step, units, tuple(compiler), flags, path)
    if units < 1 or not _agrees_with_pytorch(kernel):
        return KernelAbsent(f"the build in {path} disagreed with PyTorch on a test case")
    return kernel
