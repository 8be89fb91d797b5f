#!/usr/bin/env bash
# GPU validation (docs/design.md §6), for a bare GPU machine: torch with CUDA, Triton, nvcc, ninja,
# pytest and pytest-benchmark installed, no network (nothing is downloaded). From anywhere:
#
#     OUT=/some/dir bash benchmarks/gpu_check.sh        # OUT defaults to benchmarks/results
#
# Steps, each logged to $OUT/gpu_check-<step>.log (the console gets each log's tail):
#   env           nvidia-smi, nvcc, ninja, torch and its CUDA
#   build         the extension with its CUDA kernels for sm_90 (pip editable install, no index;
#                 if pip cannot install here, an in-place setup.py build instead)
#   build-info    lipkernels.build_info() (also $OUT/gpu_check-build_info.json); fails unless the
#                 cuda and triton backends are usable on CUDA tensors
#   tests-gpu     pytest -m gpu tests/
#   bench-pytest  a slice of `pytest benchmarks/ --benchmark-only` on the GPU (that path works)
#   bench         python -m lipkernels.bench --device cuda on the default grid (GPU_CHECK_FULL=1:
#                 --full), the SOC suites first (the time limit may cut the last ones): results
#                 JSON + Markdown in $OUT
#   tests-rest    pytest -m "not gpu" tests/    (with tests-gpu: the whole suite)
# Every step runs even when an earlier one failed, so one call gives the whole picture; the exit
# status is 1 when any step failed, and $OUT/gpu_check-summary.txt lists them all.
#
# Time: planned for about 9 minutes on an H100 (GPU_CHECK_BUDGET_S, default 540 s). Each step has
# a cap; the benchmark gets what is left and stops starting measurements 75 s before its cap, so
# its results are still written (a cut-short run says so in its Markdown). When one call leaves
# the benchmark too little time, split the steps over calls on the same (warm) machine, whose
# build the later calls reuse: GPU_CHECK_STEPS lists the steps to run (default: all), e.g.
#     GPU_CHECK_STEPS="env build build-info tests-gpu" OUT=... bash benchmarks/gpu_check.sh
#     GPU_CHECK_STEPS="bench" OUT=... bash benchmarks/gpu_check.sh
#     GPU_CHECK_STEPS="bench-pytest tests-rest" OUT=... bash benchmarks/gpu_check.sh
#
# Few files back: a machine that returns only a handful of files from its output folder gets
# them packed. With GPU_CHECK_PACK=DIR, every step ends by writing DIR/gpu_check.tar.gz (all of
# $OUT, logs, JSON and Markdown) and DIR/gpu_check-summary.txt, so a call cut short by its time
# limit still returns what the finished steps wrote; a later call adds to the same $OUT:
#     GPU_CHECK_PACK="$OUT" OUT=/tmp/gpu_check bash benchmarks/gpu_check.sh
#
# Dry run: GPU_CHECK_DRY_RUN=1 runs every step on a machine without a GPU, so that CI proves the
# script itself (tests/test_gpu_check.py): env reports without requiring nvidia-smi or nvcc,
# build checks that the installed package imports instead of rebuilding it, build-info requires
# the cpp and triton (interpreter) backends on CPU tensors, tests-gpu runs its pytest command
# (every GPU test skips), bench-pytest and bench run on the CPU with a short time limit, and
# tests-rest collects the tests without running them (CI runs them anyway).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO/benchmarks/results}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
cd "$REPO" || exit 1

PY="${PYTHON:-$(command -v python || command -v python3)}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-540}"
DRY_RUN="${GPU_CHECK_DRY_RUN:-0}"
DEVICE=cuda
if [[ $DRY_RUN == 1 ]]; then
  DEVICE=cpu
  export TRITON_INTERPRET=1  # Triton on CPU tensors: the interpreter, set before the import
fi
FULL=()
[[ ${GPU_CHECK_FULL:-0} == 1 ]] && FULL=(--full)
STEPS=" ${GPU_CHECK_STEPS:-env build build-info tests-gpu bench-pytest bench tests-rest} "
# An in-place build is importable from the checkout; with the editable install this is a no-op.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PY OUT DRY_RUN DEVICE LIPKERNELS_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export TQDM_MININTERVAL=10  # the progress bar goes to a log file: few redraws

SUMMARY="$OUT/gpu_check-summary.txt"
: >"$SUMMARY"
FAILED=0
PACK="${GPU_CHECK_PACK:-}"

# pack: with GPU_CHECK_PACK=DIR, all of $OUT as DIR/gpu_check.tar.gz, and the summary beside it
# (written to a temporary name first, so a kill mid-write leaves the previous archive whole).
pack() {
  [[ -n $PACK ]] || return 0
  mkdir -p "$PACK"
  tar -czf "$PACK/.gpu_check.tar.gz.part" -C "$OUT" . && mv "$PACK/.gpu_check.tar.gz.part" "$PACK/gpu_check.tar.gz"
  cp "$SUMMARY" "$PACK/gpu_check-summary.txt"
}

# run_step NAME CAP COMMAND...: run COMMAND for at most CAP seconds (less when the budget is
# nearly spent), log its output, print the log's tail and record the outcome.
run_step() {
  local name=$1 cap=$2
  shift 2
  local log="$OUT/gpu_check-$name.log" left=$((BUDGET_S - SECONDS)) start=$SECONDS status rc
  [[ $STEPS == *" $name "* ]] || return 0  # not asked for in this call (GPU_CHECK_STEPS)
  ((cap > left)) && cap=$left
  if ((cap < 5)); then
    status="SKIPPED (time budget spent)"
    echo "$status" >"$log"
  else
    echo "== $name (at most ${cap}s): $*"
    echo "\$ $*" >"$log"
    timeout --kill-after=15 "$cap" "$@" >>"$log" 2>&1
    rc=$?
    case $rc in
      0) status="ok" ;;
      124 | 137) status="TIMEOUT after ${cap}s" ;;
      *) status="FAILED (exit $rc)" ;;
    esac
    tail -n 25 "$log" | sed 's/^/   /'
  fi
  [[ $status == ok ]] || FAILED=1
  printf '%-13s %-28s %4ds  %s\n' "$name" "$status" $((SECONDS - start)) "$log" | tee -a "$SUMMARY"
  pack
}

# The step functions run through `bash -c NAME` (export -f), so that `timeout` can cap them.
# shellcheck disable=SC2317
env_report() {  # reports everything, fails when anything is missing (a dry run: only python)
  local rc=0
  if [[ $DRY_RUN != 1 ]]; then
    nvidia-smi || rc=1
    nvcc --version || rc=1
    echo "ninja $(ninja --version)" || rc=1
  fi
  "$PY" -c '
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| torch CUDA", torch.version.cuda)
if sys.argv[1] == "cuda":
    assert torch.cuda.is_available(), "torch sees no CUDA device"
    print(torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
else:
    print("dry run on the CPU")' "$DEVICE" || rc=1
  return "$rc"
}

# shellcheck disable=SC2317
build() {
  if [[ $DRY_RUN == 1 ]]; then
    "$PY" -c 'import lipkernels; print("dry run: the installed package imports, no rebuild")'
    return
  fi
  "$PY" -m pip install --no-build-isolation --no-deps --no-index -v -e . && return 0
  echo "== pip could not install the package; building in place with setup.py instead"
  "$PY" setup.py build_ext --inplace
}

# shellcheck disable=SC2317
build_info() {  # fails unless the kernel backends are usable on the check's device
  "$PY" -c '
import json, sys, lipkernels
info = lipkernels.build_info()
text = json.dumps(info, indent=1)
print(text)
open(sys.argv[1], "w").write(text + "\n")
device = sys.argv[2]
wanted = ("cuda", "triton") if device == "cuda" else ("cpp", "triton")
missing = [b for b in wanted if b not in info["usable"].get(device, [])]
sys.exit(f"not usable on {device} tensors: {missing}" if missing else 0)' \
    "$OUT/gpu_check-build_info.json" "$DEVICE"
}
export -f env_report build build_info

echo "gpu_check: repo $REPO, results and logs in $OUT, python $PY, budget ${BUDGET_S}s"
run_step env 60 bash -c env_report
run_step build 270 bash -c build
run_step build-info 60 bash -c build_info
run_step tests-gpu 210 "$PY" -m pytest -m gpu tests/ -q -ra -p no:cacheprovider \
  --junitxml="$OUT/gpu_check-tests-gpu.xml"
run_step bench-pytest 60 "$PY" -m pytest benchmarks/ --benchmark-only -q -p no:cacheprovider \
  --bench-device "$DEVICE" -k "C64-C64-k3-T50 and not compile" \
  --benchmark-json="$OUT/gpu_check-bench-pytest.json"
# The benchmark leaves 125 s for tests-rest when that runs in this call, last: the CPU-only CI
# runs those tests too, so here they only add the GPU machine's torch and Triton versions.
reserve=5
[[ $STEPS == *" tests-rest "* ]] && reserve=130
bench_cap=$((BUDGET_S - SECONDS - reserve))
# A dry run starts measurements for 20 s: enough to write every suite's files, the cut-short
# ones saying so.
bench_limit=$((bench_cap > 80 ? bench_cap - 75 : 1))
[[ $DRY_RUN == 1 ]] && bench_limit=20
run_step bench "$bench_cap" "$PY" -m lipkernels.bench --device "$DEVICE" "${FULL[@]}" --out "$OUT" \
  --suite soc_exp lipconvnet cayley_conv2d conv_spectral_bounds power_iteration \
  conv_singular_values bcop --time-limit "$bench_limit"
grep -hs "time-limit reached" "$OUT/gpu_check-bench.log" | sed 's/^/bench         /' >>"$SUMMARY"
REST=()
[[ $DRY_RUN == 1 ]] && REST=(--collect-only)
run_step tests-rest 120 "$PY" -m pytest -m "not gpu" tests/ -q -ra -p no:cacheprovider \
  "${REST[@]}" --junitxml="$OUT/gpu_check-tests-rest.xml"

pack
echo "== summary ($SECONDS s; also in $SUMMARY)"
cat "$SUMMARY"
exit $FAILED
