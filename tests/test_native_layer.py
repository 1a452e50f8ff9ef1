"""The compiled int8 layer step: built where a C compiler is, the arithmetic of its PyTorch twin, and
fbgemm with PyTorch's passes wherever building or loading it fails."""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from charlstm import CharLSTM, ModelConfig
from charlstm.model.native import (
    KernelAbsent,
    LayerKernel,
    layer_kernel,
    reference_step,
    run_step,
)
from charlstm.model.stepper import LSTMStepper, _cell_gate_doubled, int8_available

pytestmark = pytest.mark.skipif(not int8_available(), reason="int8 steps need fbgemm (x86 CPUs)")

HAS_COMPILER = any(shutil.which(name) for name in ("gcc", "cc"))


def build_fresh(monkeypatch: pytest.MonkeyPatch, folder: Path, **env: str) -> LayerKernel | KernelAbsent:
    """What ``layer_kernel`` decides in a process with this environment and an empty kernel folder."""
    monkeypatch.setenv("CHARLSTM_KERNEL_DIR", str(folder))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return layer_kernel.__wrapped__()


def fake_compiler(folder: Path, body: str) -> Path:
    """A shell script standing in for the C compiler: it compiles ``body`` (C) whatever it is asked."""
    source = folder / "impostor.c"
    source.write_text(body)
    script = folder / "impostor-cc"
    script.write_text(
        "#!/bin/sh\n"
        'out=""; prev=""; shared=""\n'
        'for a in "$@"; do [ "$prev" = "-o" ] && out="$a"; [ "$a" = "-shared" ] && shared=1; prev="$a"; done\n'
        f'if [ -n "$shared" ]; then exec cc -shared "$2" -o "$out"; else exec cc -O1 -fPIC -c {source} -o "$out"; fi\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def model(layers: int = 3, hidden: int = 64) -> CharLSTM:
    torch.manual_seed(0)
    return CharLSTM(ModelConfig(vocab_size=30, emb_size=16, hidden_size=hidden, num_layers=layers)).eval()


needs_kernel = pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")


@pytest.mark.skipif(not HAS_COMPILER and not os.environ.get("CI"), reason="no C compiler on this machine")
def test_the_layer_step_is_built_where_there_is_a_c_compiler():
    kernel = layer_kernel()
    assert isinstance(kernel, LayerKernel), kernel.describe()
    assert kernel.path.is_file() and kernel.units in (8, 16)
    assert LSTMStepper(model(), 4, "int8").step_description.startswith("compiled int8 layer step")


@needs_kernel
@pytest.mark.parametrize("rows, hidden, inputs", [(1, 8, 4), (2, 16, 32), (3, 21, 42), (5, 37, 41), (7, 64, 128)])
def test_the_layer_step_is_its_pytorch_twin_to_fp32_rounding(rows, hidden, inputs):
    """Whole and padded blocks of units, inputs that are and are not a multiple of 4, and row counts that
    fill and part-fill the kernel's groups of rows; with the bias, the table, or both."""
    kernel = layer_kernel()
    rng = torch.Generator().manual_seed(rows)
    weight = torch.randn(4 * hidden, inputs, generator=rng) * 0.3
    for bias, table in ((torch.randn(4 * hidden, generator=rng), None), (None, torch.randn(9, 4 * hidden, generator=rng)),
                        (torch.randn(4 * hidden, generator=rng), torch.randn(9, 4 * hidden, generator=rng))):
        ids = torch.randint(0, 9, (rows,), generator=rng) if table is not None else None
        x = torch.rand(rows, inputs, generator=rng) - 0.5
        x[0, 0] = 0.5  # the row's largest value: exactly 63 once quantised
        double_c, half_h = torch.randn(rows, hidden, generator=rng), torch.zeros(rows, hidden)
        expected_c, expected_h = reference_step(weight, bias, table, ids, x, double_c)
        layer = kernel.pack(weight, bias, table)
        scratch = torch.empty(rows, layer.inputs_padded, dtype=torch.uint8)
        assert run_step(kernel, layer, x, ids, double_c, half_h, scratch, torch.empty(rows)) == 0
        torch.testing.assert_close(double_c, expected_c, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(half_h, expected_h, rtol=1e-5, atol=1e-5)


def twin_step(network: CharLSTM, state: tuple[torch.Tensor, torch.Tensor], ids: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """A sampling step of the stepper's int8 arithmetic built from the model's own weights layer by layer with
    :func:`reference_step`: the logits and the new (h, c)."""
    rnn, hidden = network.rnn, network.config.hidden_size
    scale = _cell_gate_doubled(hidden)
    h, c = state
    new_h, new_c = [], []
    below = None
    for layer in range(network.config.num_layers):
        w_hh = getattr(rnn, f"weight_hh_l{layer}") * scale * 2
        w_ih = getattr(rnn, f"weight_ih_l{layer}") * scale
        bias = (getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}")) * scale[:, 0]
        if layer == 0:
            table = network.embedding.weight @ w_ih.T + bias
            double_c, half_h = reference_step(w_hh, None, table, ids, h[0] / 2, c[0] * 2)
        else:
            double_c, half_h = reference_step(torch.cat([w_ih * 2, w_hh], dim=1), bias, None, None,
                                              torch.cat([below, h[layer] / 2], dim=1), c[layer] * 2)
        below = half_h
        new_h.append(half_h * 2)
        new_c.append(double_c / 2)
    return network.head(new_h[-1]), (torch.stack(new_h), torch.stack(new_c))


@needs_kernel
@pytest.mark.parametrize("hidden, streams", [(21, 5), (100, 9)])
def test_compiled_int8_steps_are_their_pytorch_twin_to_fp32_rounding(hidden, streams):
    """Padded blocks of units and of inputs in every layer; at 100 units and 9 streams the layers above the
    first are big enough to run on several threads while reading the buffer they write."""
    network = model(hidden=hidden)
    stepper = LSTMStepper(network, streams, "int8")
    assert stepper.layer_kernel is not None
    rng = torch.Generator().manual_seed(1)
    state = tuple(torch.randn(s.shape, generator=rng) * 0.5 for s in network.init_state(streams))
    ids = torch.tensor([0, 7, 29, 3, 12, 5, 5, 28, 1][:streams])
    with torch.no_grad():
        for rows in (None, torch.tensor([4, 1])):  # all five streams, then two of them (the others finished)
            stepper.load_state(state)
            here = state if rows is None else tuple(s[:, rows] for s in state)
            if rows is not None:
                stepper.keep_rows(rows)
            step_ids = ids if rows is None else ids[rows]
            expected_logits, expected_state = twin_step(network, here, step_ids)
            torch.testing.assert_close(stepper.step(step_ids), expected_logits, rtol=1e-4, atol=1e-4)
            for mine, theirs in zip(stepper.state(), expected_state):
                torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_a_nan_in_one_row_leaves_the_other_rows_alone():
    kernel = layer_kernel()
    rng = torch.Generator().manual_seed(3)
    weight, bias = torch.randn(4 * 24, 20, generator=rng), torch.randn(4 * 24, generator=rng)
    x = torch.rand(3, 20, generator=rng) - 0.5
    x[1, 4] = float("nan")
    double_c, half_h = torch.randn(3, 24, generator=rng), torch.zeros(3, 24)
    expected_c, expected_h = reference_step(weight, bias, None, None, x, double_c)
    layer = kernel.pack(weight, bias, None)
    assert run_step(kernel, layer, x, None, double_c, half_h, torch.empty(3, layer.inputs_padded, dtype=torch.uint8),
                    torch.empty(3)) == 0
    for row in (0, 2):
        torch.testing.assert_close(double_c[row], expected_c[row], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(half_h[row], expected_h[row], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_a_state_or_ids_of_the_wrong_shape_are_refused(precision):
    """The compiled step holds the buffers' addresses: a state that does not fit must not resize them."""
    stepper = LSTMStepper(model(2), 3, precision)
    too_many = tuple(torch.zeros(2, 4, 64) for _ in range(2))
    with pytest.raises(ValueError, match="rows 1..3"):
        stepper.load_state(too_many)
    with pytest.raises(ValueError, match="2 x rows x 64"):
        stepper.load_state((torch.zeros(2, 3, 64), torch.zeros(2, 3, 32)))
    stepper.load_state(tuple(torch.zeros(2, 2, 64) for _ in range(2)))
    if stepper.layer_kernel is not None:
        with pytest.raises(ValueError, match="2 ids"):
            stepper.step(torch.tensor([1, 2, 3]))
    assert stepper.step(torch.tensor([1, 2])).shape == (2, 30)


@needs_kernel
def test_an_id_outside_the_vocabulary_is_refused_and_the_state_kept():
    stepper = LSTMStepper(model(2), 2, "int8")
    before = stepper.state()
    with pytest.raises(IndexError, match="0..29"):
        stepper.step(torch.tensor([3, 30]))
    for now, then in zip(stepper.state(), before):
        assert torch.equal(now, then)


def test_without_a_compiler_sampling_keeps_pytorchs_passes(monkeypatch, tmp_path):
    absent = build_fresh(monkeypatch, tmp_path / "kernels", CC=str(tmp_path / "no-such-compiler"))
    assert isinstance(absent, KernelAbsent) and "no C compiler" in absent.describe()
    monkeypatch.setattr("charlstm.model.stepper.layer_kernel", lambda: absent)
    stepper = LSTMStepper(model(2), 2, "int8")
    assert stepper.layer_kernel is None and "no C compiler" in stepper.step_description
    assert stepper.step(torch.tensor([1, 2])).shape == (2, 30)


def test_below_avx2_there_is_no_build(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    kernel = build_fresh(monkeypatch, tmp_path / "kernels")
    assert isinstance(kernel, KernelAbsent) and "needs an x86 CPU with AVX2" in kernel.reason
    assert not (tmp_path / "kernels").exists()


def test_clang_is_not_used_with_pytorchs_gnu_openmp(monkeypatch, tmp_path):
    clang = tmp_path / "clang"
    clang.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'Debian clang version 17.0.6' && exit 0\nexit 1\n")
    clang.chmod(clang.stat().st_mode | stat.S_IEXEC)
    kernel = build_fresh(monkeypatch, tmp_path / "kernels", CC=str(clang))
    assert isinstance(kernel, KernelAbsent) and "set CC=gcc" in kernel.reason


@needs_kernel
def test_a_compiler_named_with_arguments_is_run_with_them(monkeypatch, tmp_path):
    kernel = build_fresh(monkeypatch, tmp_path / "kernels", CC="env cc")  # as "ccache gcc" would be
    assert isinstance(kernel, LayerKernel), kernel.describe()
    assert kernel.describe().startswith("compiled int8 layer step (env cc, ")


@pytest.mark.skipif(not HAS_COMPILER, reason="needs cc to build the impostor")
def test_a_build_that_disagrees_with_pytorch_is_not_used(monkeypatch, tmp_path):
    does_nothing = (
        "#include <stdint.h>\n"
        "int64_t lstm_layer_units(void) { return 8; }\n"
        "int64_t lstm_layer_step() { return 0; }\n"
    )
    kernel = build_fresh(monkeypatch, tmp_path / "kernels", CC=str(fake_compiler(tmp_path, does_nothing)))
    assert isinstance(kernel, KernelAbsent) and "disagreed with PyTorch" in kernel.reason


def test_a_compiler_that_fails_leaves_nothing_half_built(monkeypatch, tmp_path):
    failing = tmp_path / "failing-cc"
    failing.write_text("#!/bin/sh\necho 'internal compiler error' >&2\nexit 1\n")
    failing.chmod(failing.stat().st_mode | stat.S_IEXEC)
    kernel = build_fresh(monkeypatch, tmp_path / "kernels", CC=str(failing))
    assert isinstance(kernel, KernelAbsent) and kernel.reason.endswith("failed: internal compiler error")
    assert not [p for p in (tmp_path / "kernels").iterdir()]


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
def test_a_damaged_cached_build_is_built_again(monkeypatch, tmp_path):
    folder = tmp_path / "kernels"
    first = build_fresh(monkeypatch, folder)
    assert isinstance(first, LayerKernel)
    first.path.unlink()  # a new file, not the one this process has mapped
    first.path.write_bytes(b"not a library")
    # Another process (this one has the first build loaded under that name) finds the damage and builds again.
    shown = subprocess.run(
        [sys.executable, "-c", "from charlstm.model.native import layer_kernel; print(layer_kernel().describe())"],
        capture_output=True, text=True, env={**os.environ, "CHARLSTM_KERNEL_DIR": str(folder)}, timeout=120,
    )
    assert shown.stdout.startswith("compiled int8 layer step"), shown.stdout + shown.stderr
    assert first.path.read_bytes()[:4] == b"\x7fELF"
