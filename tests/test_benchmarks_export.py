"""benchmarks/export.py: the dequantisation finding on hand-written HLO, and a --quick run."""

from __future__ import annotations

import importlib.util
import math
import pathlib
import sys

import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "export.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_export", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _load()

# The shape of XLA CPU's output: a loop fusion converts the int8 kernel and scales it into an
# f32 buffer, which the dot (here inside a custom fusion) reads.
_MATERIALISED = """
%fused_dot (p0: f32[4,8], p1: f32[8,8]) -> f32[4,8] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %p1 = f32[8,8]{1,0} parameter(1)
  ROOT %d = f32[4,8]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_deq (q0: f32[1,8], q1: s8[8,8]) -> f32[8,8] {
  %q1 = s8[8,8]{1,0} parameter(1)
  %c = f32[8,8]{1,0} convert(%q1)
  %q0 = f32[1,8]{1,0} parameter(0)
  %b = f32[8,8]{1,0} broadcast(%q0), dimensions={1}
  ROOT %m = f32[8,8]{1,0} multiply(%c, %b)
}

ENTRY %main (s: f32[1,8], k: s8[8,8], x: f32[4,8]) -> f32[4,8] {
  %s = f32[1,8]{1,0} parameter(0)
  %k = s8[8,8]{1,0} parameter(1)
  %x = f32[4,8]{1,0} parameter(2)
  %deq = f32[8,8]{1,0} fusion(%s, %k), kind=kLoop, calls=%fused_deq
  ROOT %out = f32[4,8]{1,0} fusion(%x, %deq), kind=kCustom, calls=%fused_dot
}
"""

# A single fusion that converts the int8 kernel and contracts it: no f32 copy of the kernel.
_FUSED = """
%fused_all (p0: f32[4,8], p1: s8[8,8]) -> f32[4,8] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %p1 = s8[8,8]{1,0} parameter(1)
  %c = f32[8,8]{1,0} convert(%p1)
  ROOT %d = f32[4,8]{1,0} dot(%p0, %c), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main (k: s8[8,8], x: f32[4,8]) -> f32[4,8] {
  %k = s8[8,8]{1,0} parameter(0)
  %x = f32[4,8]{1,0} parameter(1)
  ROOT %out = f32[4,8]{1,0} fusion(%x, %k), kind=kOutput, calls=%fused_all
}
"""


def test_finding_materialised():
    finding = bench.dequant_finding(_MATERIALISED, 64)
    assert finding.startswith("materialised:")
    assert "'deq'" in finding and "f32[8,8]" in finding and "'out'" in finding


def test_finding_fused():
    assert bench.dequant_finding(_FUSED, 64).startswith("fused: 'out'")


def test_finding_needs_the_kernel_size():
    # No f32 buffer of 100 elements and no fusion of a dot with the convert: nothing to claim.
    hlo = _MATERIALISED.replace("kind=kCustom, calls=%fused_dot", "kind=kLoop, calls=%none")
    assert bench.dequant_finding(hlo, 100).startswith("unclear:")
    assert bench.dequant_finding(hlo, 64).startswith("unclear:")  # the f32 copy feeds no dot


def _positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


@pytest.mark.slow
def test_quick_run(capsys):
    result = bench.main(["--quick"])
    out = capsys.readouterr().out

    rows = result["latency"]
    assert [(r.model, r.batch) for r in rows] == [("digits-mlp", 1), ("digits-mlp", 32)]
    for r in rows:
        assert sorted(r.us) == sorted(r.piped_us) == ["jax.jit", "loaded", "nnx.jit"]
        values = [*r.us.values(), *r.piped_us.values(), r.vs_nnx, r.vs_jax, r.piped_vs_nnx]
        assert all(_positive(v) for v in values), r
        assert r.vs_nnx_iqr[0] <= r.vs_nnx <= r.vs_nnx_iqr[1]
    for r in rows:
        line = next(ln for ln in out.splitlines() if ln.startswith(f"digits-mlp{r.batch:>7}"))
        assert f"{r.vs_nnx:.3f}" in line
    assert "target: loaded/nnx.jit <= 1.00" in out
    assert ": PASS" in out or ": FAIL" in out

    (k,) = {r.size for r in result["int8"]}
    for r in result["int8"]:
        assert _positive(r.f32_us) and _positive(r.int8_us) and _positive(r.ratio)
        assert r.f32_bytes == 4 * (k * k + k)  # kernel and bias
        assert r.int8_bytes == k * k + 4 * (2 * k)  # int8 kernel, bias and one scale per column
        assert 0 < r.rel_err < 0.02
    assert "XLA (cpu) dequantisation" in out
    assert any(w in out for w in ("materialised:", "fused:", "unclear:"))
