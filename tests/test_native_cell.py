"""The compiled cell update: built where a C compiler is, the same arithmetic as PyTorch's passes, and
a plain fallback wherever building or loading it fails."""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from charlstm import CharLSTM, ModelConfig
from charlstm.model.native import CellKernel, KernelAbsent, cell_kernel
from charlstm.model.stepper import LSTMStepper, int8_available

pytestmark = pytest.mark.skipif(not int8_available(), reason="int8 steps need fbgemm (x86 CPUs)")

HAS_COMPILER = any(shutil.which(name) for name in ("cc", "gcc", "clang"))


def build_fresh(monkeypatch: pytest.MonkeyPatch, folder: Path, **env: str) -> CellKernel | KernelAbsent:
    """What ``cell_kernel`` decides in a process with this environment and an empty kernel folder."""
    monkeypatch.setenv("CHARLSTM_KERNEL_DIR", str(folder))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return cell_kernel.__wrapped__()


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


def model(layers: int = 3) -> CharLSTM:
    torch.manual_seed(0)
    return CharLSTM(ModelConfig(vocab_size=30, emb_size=16, hidden_size=64, num_layers=layers)).eval()


@pytest.mark.skipif(not HAS_COMPILER and not os.environ.get("CI"), reason="no C compiler on this machine")
def test_the_cell_update_is_built_where_there_is_a_c_compiler():
    kernel = cell_kernel()
    assert isinstance(kernel, CellKernel), kernel.describe()
    assert kernel.path.is_file()
    assert LSTMStepper(model(), 4, "int8").cell_update.startswith("C cell update")


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
def test_compiled_int8_steps_equal_pytorchs_passes_to_fp32_rounding():
    network = model()
    compiled, passes = LSTMStepper(network, 5, "int8"), LSTMStepper(network, 5, "int8", native=False)
    assert compiled.cell_kernel is not None and passes.cell_kernel is None
    rng = torch.Generator().manual_seed(1)
    state = tuple(torch.randn(s.shape, generator=rng) * 0.5 for s in network.init_state(5))
    ids = torch.tensor([0, 7, 29, 3, 12])
    for rows in (None, torch.tensor([4, 1])):  # all five streams, then two of them (the others finished)
        compiled.load_state(state)
        passes.load_state(state)
        if rows is not None:
            compiled.keep_rows(rows)
            passes.keep_rows(rows)
        step_ids = ids if rows is None else ids[rows]
        # One step from the same state: the same int8 products, so only the cell update can differ.
        torch.testing.assert_close(compiled.step(step_ids), passes.step(step_ids), rtol=1e-5, atol=1e-5)
        for mine, theirs in zip(compiled.state(), passes.state()):
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
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
    monkeypatch.setattr("charlstm.model.stepper.cell_kernel", lambda: absent)
    stepper = LSTMStepper(model(2), 2, "int8")
    assert stepper.cell_kernel is None and "no C compiler" in stepper.cell_update
    assert stepper.step(torch.tensor([1, 2])).shape == (2, 30)


@pytest.mark.skipif(not HAS_COMPILER, reason="needs cc to build the impostor")
def test_a_build_that_disagrees_with_pytorch_is_not_used(monkeypatch, tmp_path):
    does_nothing = (
        "#include <stdint.h>\n"
        "int64_t lstm_cell_update(int64_t a, int64_t b, const float *c, int64_t d, const float *e, int64_t f,\n"
        "                         const int64_t *g, float *h, int64_t i, float *j, int64_t k) { return 0; }\n"
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
    assert isinstance(first, CellKernel)
    first.path.unlink()  # a new file, not the one this process has mapped
    first.path.write_bytes(b"not a library")
    # Another process (this one has the first build loaded under that name) finds the damage and builds again.
    shown = subprocess.run(
        [sys.executable, "-c", "from charlstm.model.native import cell_kernel; print(cell_kernel().describe())"],
        capture_output=True, text=True, env={**os.environ, "CHARLSTM_KERNEL_DIR": str(folder)}, timeout=120,
    )
    assert shown.stdout.startswith("C cell update"), shown.stdout + shown.stderr
    assert first.path.read_bytes()[:4] == b"\x7fELF"
