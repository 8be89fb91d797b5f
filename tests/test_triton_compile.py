"""The Triton kernels compile for sm_80 and sm_90 without a GPU, specialised as the JIT
specialises a launch (batch 1 and sizes of 1 included), within register and shared memory budgets
(tests/triton_compile_check.py, run in a process without the interpreter); and the soc_exp
kernels are what their design claims (docs/performance.md): tensor-core instructions, 16-byte
loads and a program per SM at every LipConvNet layer, read off the PTX and the launch grid; the
power iteration is one persistent launch of a program per SM with its grid barriers compiled
in, or a program per matrix where a matrix fits one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

# Shared memory a program may use so that several fit on one SM of any supported GPU (sm_80 has
# 164 KB), and stack bytes a thread may use: a few words of call frame, not spilled tiles.
MAX_SHARED_BYTES = 48 * 1024
MAX_STACK_BYTES = 64


def _compile_check():
    """tests/triton_compile_check.py as a module (its grid; it compiles nothing on import)."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        import triton_compile_check
    finally:
        sys.path.pop(0)
    return triton_compile_check


@pytest.fixture(scope="module")
def compiled():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("triton_compile_check.py")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                            cwd=script.parent.parent, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_every_case_compiles_for_both_architectures(compiled):
    cases = {row["case"] for row in compiled}
    assert {"soc_exp_series-float32-B128-C32-H32-k3", "soc_exp_power-bfloat16-B128-C512-H2-k3",
            "soc_exp_series-float32-B1-C32-H32-k3", "soc_exp_step-bfloat16-B128-C2048-H1-k1",
            "soc_exp_series_fast-bfloat16-B128-C32-H32-k3", "soc_exp_step_last-float32-B128-C32-H32-k3",
            "soc_exp_weight_gradient-float32-B128-C2048-H1-k1",
            "cayley_backward-complex64-n512", "cayley_frequency_product-complex128-C256x512",
            "power_iteration_resident-bfloat16-B128-1x64-T1",
            "power_iteration-float32-B1-1x65536-T1", "conv_spectral_bounds-float32-C1024-k1-T1",
            "power_iteration_gram-float32-B1-2048x18432-T50",
            "frequency_power_iteration-float32-C512-H56-k3",
            "conv_spectral_bounds_backward-bfloat16-C512-k3", "max_min-pairs-float32-B1-C32-H32",
            "householder_backward-bfloat16-B128-C1024-H1", "bjorck-float32-B5-64x64",
            "bcop_filter_backward-float32-k3-512x512",
            "bjorck_backward-float64-B2-9x1"} <= cases
    assert len(compiled) == 2 * len(cases)
    assert {row["capability"] for row in compiled} == {80, 90}


def test_resource_usage_stays_within_budget(compiled):
    for row in compiled:
        where = f"{row['case']} on sm_{row['capability']}"
        assert 0 < row["registers"] <= 255, where
        assert row["shared"] <= MAX_SHARED_BYTES, f"{where}: {row['shared']} bytes of shared memory"
        assert row["stack"] <= MAX_STACK_BYTES, f"{where}: {row['stack']} bytes of stack (spills)"


def _soc_exp_rows(compiled, kernel, batch=None):
    """The compiled cases of one soc_exp kernel: "soc_exp_series" (the forward's persistent
    launch), "soc_exp_step" (the backward's Horner step, with g added), "soc_exp_power"
    (without, the exact backward's powers) or "soc_exp_weight_gradient"; at one batch size or
    all."""
    rows = [row for row in compiled if row["case"].startswith(f"{kernel}-")
            and (batch is None or f"-B{batch}-" in row["case"])]
    assert rows
    return rows


_SOC_EXP_KERNELS = ("soc_exp_series", "soc_exp_step", "soc_exp_power", "soc_exp_weight_gradient")


@pytest.mark.parametrize("kernel", _SOC_EXP_KERNELS)
def test_soc_exp_multiplies_on_tensor_cores(compiled, kernel):
    """Every soc_exp kernel does its channel mixing on tensor cores, fp32 (TF32) and bf16
    alike; on sm_90 the tiles of 64 rows or more use Hopper's warpgroup wgmma (the Horner steps'
    64- and 128-pixel tiles, the weight gradient's 64-channel ones); smaller tiles are below its
    64 rows and use mma.sync. At batch 128 most layers of the grid have such tiles."""
    for row in _soc_exp_rows(compiled, kernel):
        assert row["mma"] + row["wgmma"] > 0, f"{row['case']} on sm_{row['capability']}"
        if row["capability"] == 90 and row["tile_rows"] >= 64:
            assert row["wgmma"] > 0, f"{row['case']}: no wgmma on sm_90"
    rows = _soc_exp_rows(compiled, kernel, batch=128)
    assert 2 * sum(row["tile_rows"] >= 64 for row in rows) > len(rows)


@pytest.mark.parametrize("kernel", ["soc_exp_series", "soc_exp_step", "soc_exp_power"])
def test_horner_steps_load_16_bytes_wide(compiled, kernel):
    """The Horner step's operand loads are 16-byte vectors (cp.async into shared memory in the
    pipelined reduction loop): most of its global loads, on every layer and both
    architectures. (The weight gradient's are not in fp32: TF32 tensor cores read operands
    contiguous along the reduction, here the pixels, and channels-last activations are
    contiguous along the channels; bf16 operands may be transposed and load 16 bytes wide.)"""
    for row in _soc_exp_rows(compiled, kernel):
        assert row["wide_loads"] > row["narrow_loads"], \
            f"{row['case']} on sm_{row['capability']}: {row['wide_loads']} 16-byte loads, " \
            f"{row['narrow_loads']} narrower"
    for row in _soc_exp_rows(compiled, "soc_exp_weight_gradient"):
        if "bfloat16" in row["case"]:
            assert row["wide_loads"] > row["narrow_loads"], row["case"]


@pytest.mark.parametrize("kernel", _SOC_EXP_KERNELS[1:])
def test_soc_exp_fills_an_h100_at_batch_128(compiled, kernel):
    """At batch 128 every layer of the soc_exp benchmark grid has at least a program per SM of
    an H100 (132) in each launch of the backward: the Horner steps by splitting the small-image
    layers' output channels, the weight gradient by splitting the pixels where the channels give
    too few tiles."""
    rows = _soc_exp_rows(compiled, kernel, batch=128)
    assert len({row["case"] for row in rows}) == 2 * len(_compile_check().soc_layers())
    for row in rows:
        assert row["programs"] >= 132, f"{row['case']}: {row['programs']} programs"


def test_soc_exp_forward_is_one_persistent_launch_over_the_sms(compiled):
    """The forward's series is one launch of a program per SM (132, all resident for the grid
    barriers between its steps, compiled in: the release increment and the acquire reads)
    at every layer at batch 128, each program looping over at least one output tile a step; at
    batch 1 no more programs than tiles."""
    for row in _soc_exp_rows(compiled, "soc_exp_series"):
        where = f"{row['case']} on sm_{row['capability']}"
        assert row["programs"] == min(132, row["tiles"]), where
        assert row["release_increments"] >= 1 and row["acquire_reads"] >= 1, where
        if "-B128-" in row["case"]:
            assert row["tiles"] >= 132, where


def _power_iteration_rows(compiled):
    rows = [row for row in compiled if row["case"].startswith("power_iteration-")]
    assert len(rows) == 2 * 2 * 4 * 2  # dtypes x iteration counts x shapes x architectures
    return rows


def test_power_iteration_is_one_persistent_launch_over_the_sms(compiled):
    """The power iteration splits the matrices too large for one program over the whole grid in
    one launch: a program per SM of an H100 (a single 256 x 2304 matrix and a single row
    included), never more (every program must be resident for the grid barriers, whose release
    increment and acquire reads are in the code)."""
    for row in _power_iteration_rows(compiled):
        where = f"{row['case']} on sm_{row['capability']}"
        assert row["programs"] == min(132, row["tiles"]) == 132, where
        assert row["release_increments"] >= 1 and row["acquire_reads"] >= 1, where


def test_wide_matrices_iterate_on_their_gram_matrix_formed_on_tensor_cores(compiled):
    """The wide reshapes at 50 iterations run on G = W W^T: one persistent launch of a program
    per SM where G has enough tiles (256 rows and more), the barrier in the code, and G formed
    by tensor-core products (wgmma on sm_90 where its tiles have 64 rows: 2048 x 18432)."""
    rows = [row for row in compiled if row["case"].startswith("power_iteration_gram-")]
    assert len(rows) == 2 * 5 * 2  # dtypes x (shapes at 50 iterations + one at 2) x archs
    for row in rows:
        where = f"{row['case']} on sm_{row['capability']}"
        assert row["programs"] == min(132, row["tiles"]), where
        assert row["release_increments"] >= 1 and row["acquire_reads"] >= 1, where
        assert row["mma"] + row["wgmma"] > 0, where
        if "-64x576-" not in row["case"]:
            assert row["programs"] == 132, where
        if "-2048x18432-" in row["case"] and row["capability"] == 90:
            assert row["wgmma"] > 0, where


def test_small_matrices_iterate_in_one_program_each(compiled):
    """Matrices that fit one program's registers (conv_spectral_norm's 544 forms of 128 x 128,
    rows of 64, a 16 x 144 reshape; float64 at 64 x 128) get a program each and no grid barrier;
    the float32 and bf16 matrices of 128 columns or more load in 16-byte vectors."""
    rows = [row for row in compiled if row["case"].startswith("power_iteration_resident-")]
    assert len(rows) == (2 * 2 * 3 + 1) * 2  # (dtypes x iteration counts x shapes + f64) x archs
    for row in rows:
        where = f"{row['case']} on sm_{row['capability']}"
        assert row["programs"] == int(row["case"].split("-B")[1].split("-")[0]), where
        assert row["release_increments"] == 0 and row["acquire_reads"] == 0, where
        if "-128x128-" in row["case"] and "float64" not in row["case"]:
            assert row["wide_loads"] > row["narrow_loads"], where


def test_fantastic_four_is_one_persistent_launch_by_slabs(compiled):
    """conv_spectral_bounds runs every iteration of the four reshapes in one launch of at most a
    program per SM, with its grid barriers in the code: 132 programs on the 512- to
    2048-channel filters; on the 16-channel one as many as its reduction needs. A 1x1 filter is
    loaded in 16-byte vectors (a 3x3 one is not: the taps are padded to 4 x 4 in the tile, so
    the nine contiguous entries of (o, i) form no aligned vector; docs/performance.md)."""
    rows = [row for row in compiled if row["case"].startswith("conv_spectral_bounds-")]
    assert len(rows) == 2 * 2 * 4 * 2  # dtypes x iteration counts x filters x architectures
    for row in rows:
        where = f"{row['case']} on sm_{row['capability']}"
        assert row["programs"] <= 132 and row["release_increments"] >= 1, where
        assert row["acquire_reads"] >= 1, where
        if "-C16-" not in row["case"]:
            assert row["programs"] == 132, where
        if "-k1-" in row["case"]:
            assert row["wide_loads"] > 0, where


def test_conv_spectral_norm_applies_the_taps_on_tensor_cores_over_the_sms(compiled):
    """frequency_power_iteration (conv_spectral_norm with iters) applies every response from
    the filter's taps by tensor-core products (wgmma on sm_90 where its time model picks tiles
    of 64 frequencies, mma.sync for the 16- and 32-frequency tiles it picks on the suite's
    filters), in one persistent launch with its grid barrier: a program per SM wherever the
    half steps have 132 tiles, which they have on every suite filter on 32 x 32 and from 256
    channels on 56 x 56 (on 56 x 56 the model prefers 102 larger tiles below that)."""
    rows = [row for row in compiled if row["case"].startswith("frequency_power_iteration-")]
    assert len(rows) == (8 + 2) * 2  # (suite filters + float64 + 1x1) x architectures
    for row in rows:
        where = f"{row['case']} on sm_{row['capability']}"
        assert row["mma"] + row["wgmma"] > 0, where
        assert row["release_increments"] >= 1 and row["acquire_reads"] >= 1, where
        assert row["programs"] == min(132, row["tiles"]), where
        if "-H32-" in row["case"] or "-C256-" in row["case"] or "-C512-" in row["case"]:
            assert row["programs"] == 132, where
        if row["capability"] == 90 and row["tile_rows"] >= 64:
            assert row["wgmma"] > 0, where


def test_power_iteration_streams_matrices_16_bytes_wide(compiled):
    """The row pass streams W in 16-byte vectors: most global loads of the float32 kernel (in
    bf16 about half of them are, W's among them)."""
    for row in _power_iteration_rows(compiled):
        if "float32" in row["case"]:
            assert row["wide_loads"] > row["narrow_loads"], row["case"]


def test_bjorck_iterates_on_tensor_cores_in_a_program_per_matrix(compiled):
    """bjorck and its backward run every iteration in one launch of a program per matrix with
    no grid barrier, their products on tensor cores (wgmma for the 64 x 64 float32 tiles on
    sm_90, mma.sync otherwise, float64's included), loading in 16-byte vectors where the rows
    are aligned (columns a multiple of 16)."""
    rows = [row for row in compiled if row["case"].startswith(("bjorck-", "bjorck_backward-"))]
    stacks = _compile_check().BJORCK_STACKS
    assert len(rows) == 2 * sum(map(len, stacks.values())) * 2  # kernels x stacks x archs
    for row in rows:
        where = f"{row['case']} on sm_{row['capability']}"
        shape = row["case"].split("-B")[1]
        count, columns = int(shape.split("-")[0]), int(shape.split("x")[1])
        assert row["programs"] == count, where
        assert row["release_increments"] == 0 and row["acquire_reads"] == 0, where
        assert row["mma"] + row["wgmma"] > 0, where
        if "float32" in row["case"] and columns >= 64 and row["capability"] == 90:
            assert row["wgmma"] > 0, where
        if columns % 16 == 0:
            assert row["wide_loads"] > row["narrow_loads"], where


def test_bcop_filter_is_one_persistent_launch_of_tensor_core_steps(compiled):
    """bcop_filter and its backward: every phase (projectors, growth steps, reverse steps) in one
    launch with its grid barriers, the products on tensor cores, a program per output tile up
    to one per SM (132 at 512 channels, 9 taps x 4 tiles of 32 x 32 at 64)."""
    rows = [row for row in compiled if row["case"].startswith("bcop_filter")]
    filters = _compile_check().BCOP_FILTERS
    assert len(rows) == 2 * sum(map(len, filters.values())) * 2  # kernels x filters x archs
    for row in rows:
        where = f"{row['case']} on sm_{row['capability']}"
        assert row["mma"] + row["wgmma"] > 0, where
        assert row["release_increments"] > 0 and row["acquire_reads"] > 0, where
        if "-512x512" in row["case"]:
            assert row["programs"] == 132, where
        if "-32x64" in row["case"]:
            assert row["programs"] == 18, where


def test_cayley_conv2d_multiplies_the_spectra_on_tensor_cores(compiled):
    """cayley_frequency_product and its backward in a program per frequency, tall and wide,
    complex64 and complex128: the products with the spectra run on tensor cores (tf32x3 mma.sync
    for complex64, float64 mma for complex128), no grid barrier."""
    rows = [row for row in compiled if row["case"].startswith("cayley_frequency_product")
            and row["case"].endswith(("-C512x256", "-C256x512"))]
    assert len(rows) == 2 * 2 * 2 * 2  # (forward, backward) x dtypes x orientations x archs
    for row in rows:
        where = f"{row['case']} on sm_{row['capability']}"
        assert row["mma"] + row["wgmma"] > 0, where
        assert row["release_increments"] == 0 and row["acquire_reads"] == 0, where


def test_cayley_conv2d_splits_the_products_over_the_sms(compiled):
    """The route over the grid at 512@4x4 (12 frequencies of 512 x 512, B = 128): every product a
    launch of more programs than SMs, on tensor cores; the forward's and backward's complex64
    products on 64 x 64 tiles use Hopper's wgmma on sm_90; no grid barrier."""
    rows = [row for row in compiled if row["case"].startswith(
        ("cayley_frequency_product_split", "cayley_frequency_product_pairs"))]
    assert len(rows) == 3 * 2 * 2  # (solved, conjugated, pairs) x dtypes x archs
    for row in rows:
        where = f"{row['case']} on sm_{row['capability']}"
        assert row["programs"] >= 132, where
        assert row["mma"] + row["wgmma"] > 0, where
        assert row["release_increments"] == 0 and row["acquire_reads"] == 0, where
        if "_split_" in row["case"] and "complex64" in row["case"] and row["capability"] == 90:
            assert row["wgmma"] > 0, where


def test_cayley_conv2d_inverts_over_the_sms_on_tensor_cores(compiled):
    """The forward's inverse at 512@4x4 (12 frequencies): one persistent launch of a program per
    SM over the 384 row blocks, grid barriers between its Gauss-Jordan phases, the eliminations
    on tensor cores (tf32x3 for complex64)."""
    rows = [row for row in compiled if row["case"].startswith("cayley_frequency_product_inverse")]
    assert len(rows) == 2 * 2  # dtypes x archs
    for row in rows:
        where = f"{row['case']} on sm_{row['capability']}"
        assert row["programs"] == 132, where
        assert row["release_increments"] > 0 and row["acquire_reads"] > 0, where
        assert row["mma"] + row["wgmma"] > 0, where
