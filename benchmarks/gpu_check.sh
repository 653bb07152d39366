#!/usr/bin/env bash
# One GPU session's checks in one call (under 8 minutes; every part bounded with `timeout`), run from the
# repository root on a machine with a CUDA GPU and without pip:
#
#     OUT=/some/folder bash benchmarks/gpu_check.sh
#
# 1. the torch-path tests on CUDA (CRFRNN_TEST_DEVICE=cuda, TRITON_INTERPRET unset: the Triton kernels compiled);
# 2. benchmarks/bench_gpu.py with the "torch" and "triton" lattice backends (one size, batch 1, T=5);
# 3. dense_crf on CUDA (torch and triton backends) against the CPU engine on a scikit-image photo;
# 4. benchmarks/bench_build.py (run second): the build of one 500x375 5-feature lattice, the Triton device build
#    against the torch reference build in the same run (median build times, equal vertex counts, the filters'
#    difference);
# 5. torch.compile(CrfRnn, fullgraph=True) against eager on the triton backend (bench_gpu.py --compile, batch 8,
#    T=5: the compiled/eager ratio, issue 23's target at most 1x), run last (it compiles with inductor).
# bench_gpu.py prints each step's peak memory over the bytes autograd saves (issue 23's target at most 1.5x at
# batch 8).
# 6. the host's CPU cores (issue 26): dense_crf at 1000x750 on every core against one thread, and a batch of 16
#    images at 500x375 in one call against 16 single-thread calls (benchmarks/bench_threads.py, with its controls:
#    the same arithmetic and the same pass over memory on every core against one, and the ceiling: the same call
#    on one thread in as many processes as cores at once against one alone), every core with the threads taking
#    work from each other against without (cpu_taking, --compare-taking), and which stages of a call stop
#    shrinking on every core (cpu_profile, benchmarks/profile_threads.py, with the sequential time outside the
#    compiled kernels).
#
# PARTS="tests bench_build ..." runs only the parts named (the limits of all parts add up to more than one
# 10-minute call: run the GPU parts and the CPU parts in two calls, e.g.
# PARTS="cpu_threads cpu_batch cpu_taking cpu_profile").
#
# Every part's output goes to $OUT/<part>.log (and .json), its exit status to $OUT/status.txt; the script goes on
# after a failed part and exits with the first failure's status.
set -u
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
unset TRITON_INTERPRET
PY=${PYTHON:-python3}
status=0

part() {  # part NAME SECONDS COMMAND...: run COMMAND under timeout, log to $OUT/NAME.log, record its status
    local name=$1 limit=$2
    shift 2
    if [ -n "${PARTS:-}" ] && [[ " $PARTS " != *" $name "* ]]; then return 0; fi
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$OUT/status.txt"
    if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
}

{
    echo "date: $(date -u)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
    "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" 2>&1
    "$PY" -c "import triton; print('triton', triton.__version__)" 2>&1 || echo "triton: not importable"
} >"$OUT/environment.txt"
: >"$OUT/status.txt"

# pytest-xdist when the machine has it, else one process
if "$PY" -c "import xdist" 2>/dev/null; then XDIST=(-n 8); else XDIST=(); fi
part tests 190 env CRFRNN_TEST_DEVICE=cuda "$PY" -m pytest ${XDIST[@]+"${XDIST[@]}"} -q -p no:cacheprovider \
    tests/test_crf.py tests/crf tests/test_lattice.py tests/test_metrics.py tests/test_losses.py tests/test_dense.py \
    tests/test_energy.py tests/test_compile.py tests/test_triton.py tests/test_triton_build.py tests/test_triton_step.py \
    tests/test_saved_memory.py --junitxml="$OUT/tests.xml"

part bench_build 45 "$PY" benchmarks/bench_build.py --size 375x500 --repeats 5 --backends torch,triton \
    --json "$OUT/bench_build.json"

part bench_gpu 100 "$PY" benchmarks/bench_gpu.py --sizes 375x500 --batches 1 8 --iterations 5 --repeats 3 \
    --backends torch,triton --json "$OUT/bench_gpu.json"

part dense_check 50 "$PY" benchmarks/gpu_dense_check.py --device cuda --size 375x500 --backends torch,triton \
    --json "$OUT/dense_check.json"

part compile 90 "$PY" benchmarks/bench_gpu.py --sizes 375x500 --batches 8 --iterations 5 --repeats 3 \
    --backends triton --compile --json "$OUT/bench_compile.json"

CORES=$(nproc)
part cpu_threads 150 "$PY" benchmarks/bench_threads.py --sizes 1000x750 --threads "$CORES" --batch 0 --repeats 3
part cpu_batch 90 "$PY" benchmarks/bench_threads.py --sizes 500x375 --threads "$CORES" --batch 16 \
    --singles-threads 1 --repeats 3
part cpu_taking 120 "$PY" benchmarks/bench_threads.py --compare-taking --sizes 1000x750 --threads "$CORES" --repeats 3
part cpu_profile 90 "$PY" benchmarks/profile_threads.py --sizes 375x500 750x1000 --threads "$CORES" --repeats 3 \
    --inputs photo

exit "$status"
