"""nnx.tabulate: rows, shapes, Variable counts, totals, depth, FLOPs, abstract models, and a
model left exactly as it was."""

from __future__ import annotations

import re
import resource
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx


class MLP(nnx.Module):
    def __init__(self, din: int, dhidden: int, dout: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(din, dhidden, rngs=rngs)
        self.bn = nnx.BatchNorm(dhidden, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)
        self.out = nnx.Linear(dhidden, dout, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(nnx.relu(self.bn(self.hidden(x)))))

    def features(self, x):
        return self.bn(self.hidden(x))


class Outer(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.block = MLP(4, 8, 4, rngs=rngs)
        self.head = nnx.Linear(4, 2, rngs=rngs)
        self.spare = nnx.Linear(2, 2, rngs=rngs)  # never called

    def __call__(self, x):
        return self.head(self.block(x))


@pytest.fixture(scope="module")
def mlp() -> MLP:
    """One concrete MLP for the tests that only read it (building layers compiles their
    initialisers, the slow part of these tests). Its default mode is training: BatchNorm
    updates its statistics and Dropout draws keys, so a run that wrote back would show."""
    return MLP(16, 32, 4, rngs=nnx.Rngs(0))


def abstract_outer() -> Outer:
    return nnx.eval_shape(lambda: Outer(nnx.Rngs(0)))


def parse(table: str) -> list[dict[str, str]]:
    """The rows of a table (the header's names as keys; the last row is the totals). A cell
    of several lines comes back joined by newlines."""
    blocks: list[list[list[str]]] = []
    current: list[list[str]] | None = None
    for line in table.splitlines():
        if line.startswith("+"):
            if current is not None:
                blocks.append(current)
            current = None
        elif line.startswith("|"):
            cells = [c.strip() for c in line[1:-1].split("|")]
            if current is None:
                current = [[c] for c in cells]
            else:
                for column, c in zip(current, cells, strict=True):
                    column.append(c)
    header = [" ".join(c).strip() for c in blocks[0]]
    return [
        {h: "\n".join(line for line in c if line) for h, c in zip(header, b, strict=True)}
        for b in blocks[1:]
    ]


def cell(count: int, itemsize: int = 4) -> str:
    """What a Variable column shows: elements and bytes (powers of 1000, one decimal)."""
    n = count * itemsize
    if n < 1000:
        return f"{count:,} ({n} B)"
    value, unit = n / 1000, "KB"
    for bigger in ("MB", "GB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{count:,} ({value:.1f} {unit})"


def test_mlp_rows_counts_shapes_and_totals(mlp):
    din, dh, dout, batch = 16, 32, 4, 8
    model = mlp
    table = nnx.tabulate(model, jnp.ones((batch, din)))
    assert isinstance(table, str)
    assert table.splitlines()[0].strip() == "MLP Summary"
    *rows, total = parse(table)
    assert [r["path"] for r in rows] == ["", "hidden", "bn", "drop", "out"]
    assert [r["type"] for r in rows] == ["MLP", "Linear", "BatchNorm", "Dropout", "Linear"]
    assert [(r["inputs"], r["outputs"]) for r in rows] == [
        ("float32[8,16]", "float32[8,4]"),
        ("float32[8,16]", "float32[8,32]"),
        ("float32[8,32]", "float32[8,32]"),
        ("float32[8,32]", "float32[8,32]"),
        ("float32[8,32]", "float32[8,4]"),
    ]
    hidden, bn, out = din * dh + dh, 2 * dh, dh * dout + dout
    assert rows[1]["Param"] == cell(hidden) == "544 (2.2 KB)"
    assert rows[2]["Param"] == cell(bn) and rows[2]["BatchStat"] == cell(2 * dh)
    assert rows[3]["RngState"] == "2 (12 B)"  # a key (8 bytes) and a uint32 count
    assert rows[4]["Param"] == cell(out) == "132 (528 B)"
    assert rows[0]["Param"] == total["Param"] == cell(hidden + bn + out)
    assert total["BatchStat"] == cell(2 * dh) and total["RngState"] == "2 (12 B)"
    assert total["outputs"] == "Total"
    everything = (hidden + bn + out + 2 * dh) * 4 + 12
    assert table.splitlines()[-1].strip() == (
        f"Total Parameters: {hidden + bn + out + 2 * dh + 2:,} ({everything / 1000:.1f} KB)"
    )
    # the columns: Param and BatchStat first, then the other kinds
    assert list(total)[4:] == ["Param", "BatchStat", "RngState"]


def as_numpy(x):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def test_the_model_is_left_exactly_as_it_was(mlp):
    model = mlp
    rngs = nnx.Rngs(dropout=1)
    graphdef, state = nnx.split(model)
    before = jax.tree.map(as_numpy, nnx.to_pure_dict(state))
    variables = [v for _, v in nnx.iter_graph(model) if isinstance(v, nnx.Variable)]
    rngs_before = jax.tree.map(as_numpy, nnx.to_pure_dict(nnx.state(rngs)))
    linear_call = nnx.Linear.__call__

    nnx.tabulate(model, jnp.ones((3, 16)), compute_flops=True)
    nnx.tabulate(model, jnp.ones((3, 16)), method="features")
    nnx.tabulate(model.drop, jnp.ones((3, 32)), rngs=rngs, compute_flops=True)

    assert nnx.graphdef(model) == graphdef
    after = jax.tree.map(as_numpy, nnx.to_pure_dict(nnx.state(model)))
    jax.tree.map(np.testing.assert_array_equal, after, before)
    assert [v for _, v in nnx.iter_graph(model) if isinstance(v, nnx.Variable)] == variables
    assert type(model.hidden) is nnx.Linear and type(model) is MLP
    assert nnx.Linear.__call__ is linear_call  # classes are not patched either
    after_rngs = jax.tree.map(as_numpy, nnx.to_pure_dict(nnx.state(rngs)))
    jax.tree.map(np.testing.assert_array_equal, after_rngs, rngs_before)


def test_depth_hides_deeper_rows_and_keeps_the_totals():
    model = abstract_outer()
    x = jnp.ones((2, 4))
    *full, total_full = parse(nnx.tabulate(model, x))
    assert [r["path"] for r in full] == [
        "",
        "block",
        "block.hidden",
        "block.bn",
        "block.drop",
        "block.out",
        "head",
        "spare",
    ]
    assert full[-1]["inputs"] == "(not called)" and full[-1]["outputs"] == ""
    assert full[-1]["Param"] == cell(2 * 2 + 2)
    *one, total_one = parse(nnx.tabulate(model, x, depth=1))
    assert [r["path"] for r in one] == ["", "block", "head", "spare"]
    assert one[1]["Param"] == full[1]["Param"]  # a row counts its module's whole subgraph
    assert total_one == total_full
    *zero, total_zero = parse(nnx.tabulate(model, x, depth=0))
    assert [r["path"] for r in zero] == [""] and total_zero == total_full


def test_flops_of_a_linear_match_the_formula():
    batch, din, dout = 8, 64, 32
    model = nnx.eval_shape(lambda: nnx.Linear(din, dout, rngs=nnx.Rngs(0)))
    x = jax.ShapeDtypeStruct((batch, din), jnp.float32)
    (row, total) = parse(nnx.tabulate(model, x, compute_flops=True))
    assert (row["inputs"], row["outputs"]) == ("float32[8,64]", "float32[8,32]")
    flops = int(row["flops"].replace(",", ""))
    expected = 2 * batch * din * dout  # XLA also counts the bias add
    assert 0.5 * expected <= flops <= 2 * expected
    assert total["flops"] == row["flops"]


def test_flops_and_vjp_flops_per_row(mlp):
    model = mlp
    table = nnx.tabulate(model, jnp.ones((3, 16)), compute_flops=True, compute_vjp_flops=True)
    *rows, total = parse(table)
    assert list(total)[:6] == ["path", "type", "inputs", "outputs", "flops", "vjp_flops"]
    numbers = [
        (int(r["flops"].replace(",", "")), int(r["vjp_flops"].replace(",", ""))) for r in rows
    ]
    assert all(f >= 0 for f, _ in numbers) and numbers[0][0] > 0
    assert numbers[1][1] > numbers[1][0]  # Linear: the backward pass costs more
    assert total["flops"] == rows[0]["flops"] and total["vjp_flops"] == rows[0]["vjp_flops"]
    assert "flops" not in parse(nnx.tabulate(model, jnp.ones((3, 16))))[0]  # off by default


def test_a_ten_billion_parameter_abstract_model_is_not_allocated():
    model = nnx.eval_shape(lambda: nnx.Linear(100_000, 100_000, rngs=nnx.Rngs(0)))
    x = jax.ShapeDtypeStruct((16, 100_000), jnp.float32)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux
    table = nnx.tabulate(model, x, compute_flops=True)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    (row, total) = parse(table)
    assert row["Param"] == total["Param"] == "10,000,100,000 (40.0 GB)"
    assert row["inputs"] == "float32[16,100000]" and row["outputs"] == "float32[16,100000]"
    flops = int(row["flops"].replace(",", ""))
    assert 0.5 * 2 * 16 * 100_000**2 <= flops <= 2 * 2 * 16 * 100_000**2
    assert grown_mb < 100, f"peak RSS grew by {grown_mb:.0f} MB"
    assert isinstance(model.kernel.value, jax.ShapeDtypeStruct)  # still abstract


def test_a_wrong_method_name_is_a_clear_error():
    model = abstract_outer().block
    with pytest.raises(
        nnx.errors.AttributeNotFoundError,
        match=r"MLP has no method 'forwrd' to run\.\nFix: pass the name of one of its "
        r"methods, e\.g\. method='__call__' \(MLP has: __call__, features\)",
    ):
        nnx.tabulate(model, jnp.ones((3, 4)), method="forwrd")
    with pytest.raises(AttributeError):  # what flax users catch
        nnx.tabulate(model, jnp.ones((3, 4)), method="forwrd")


def test_another_method_and_its_nested_calls():
    model = abstract_outer().block
    *rows, _ = parse(nnx.tabulate(model, jnp.ones((3, 4)), method="features"))
    assert [(r["path"], r["type"]) for r in rows] == [
        ("", "MLP.features"),
        ("hidden", "Linear"),
        ("bn", "BatchNorm"),
        ("drop", "Dropout"),
        ("out", "Linear"),
    ]
    assert [r["inputs"] for r in rows[3:]] == ["(not called)"] * 2


def test_calls_inside_transforms_and_shared_modules():
    rnn = nnx.eval_shape(lambda: nnx.RNN(nnx.LSTMCell(3, 5, rngs=nnx.Rngs(0))))
    *rows, _ = parse(nnx.tabulate(rnn, jnp.ones((2, 7, 3))))
    by_type = {(r["path"], r["type"]): r for r in rows}
    step = by_type[("cell", "LSTMCell")]  # called inside nnx.scan: one step's shapes
    assert step["inputs"] == "(float32[2,5], float32[2,5])\nfloat32[2,3]"
    assert ("cell.ii", "Linear") in by_type and "(not called)" not in {r["inputs"] for r in rows}

    class Twice(nnx.Module):
        def __init__(self, rngs):
            self.layer = nnx.Linear(3, 3, rngs=rngs)
            self.again = self.layer

        def __call__(self, x):
            return self.again(self.layer(x))

    twice = nnx.eval_shape(lambda: Twice(nnx.Rngs(0)))
    *rows, total = parse(nnx.tabulate(twice, jnp.ones((1, 3))))
    assert [r["path"] for r in rows] == ["", "again", "again"]  # one path per module
    assert rows[1]["Param"] == cell(12) and rows[2]["Param"] == ""  # counted once
    assert total["Param"] == cell(12)


def test_options(mlp):
    model = mlp
    x = jnp.ones((3, 16))
    table = nnx.tabulate(
        model,
        x,
        table_kwargs={"title": "My model", "caption": "a note"},
        column_kwargs={"justify": "right"},
        console_kwargs={"width": 80, "force_terminal": True},
        row_filter=lambda row: row.type is nnx.Linear,
    )
    lines = table.splitlines()
    assert lines[0].strip() == "My model" and lines[-2].strip() == "a note"
    *rows, _ = parse(table)
    assert [r["path"] for r in rows] == ["hidden", "out"]
    assert re.search(r"\|  +Total \|", table)  # right-justified
    headless = nnx.tabulate(model, x, table_kwargs={"show_header": False, "show_lines": False})
    assert "| path" not in headless and len(headless.splitlines()) == 11
    with pytest.warns(UserWarning, match=r"ignores table_kwargs \['box'\]"):
        nnx.tabulate(model, x, table_kwargs={"box": None})
    with pytest.raises(nnx.errors.ArgumentError, match="depth is the number of module levels"):
        nnx.tabulate(model, x, depth=-1)
    with pytest.raises(nnx.errors.ArgumentError, match="summarises a Module"):
        nnx.tabulate(lambda x: x, x)


def test_concurrent_runs_agree(mlp):
    model = mlp
    expected = nnx.tabulate(model, jnp.ones((3, 16)))
    results: list[str] = []

    def work():
        results.extend(nnx.tabulate(model, jnp.ones((3, 16))) for _ in range(3))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 9
