#!/usr/bin/env bash
# The GPU benchmark suite: one script, one markdown file, within 8 minutes.
#
#   benchmarks/gpu_suite.sh [OUT.md]          # default: gpu_suite.md
#
# On a GPU VM, from the repository root, after
#   pip install -e '.[cuda12,bench]'   (or cuda13: the driver's CUDA major)
# it runs, each under its own time limit, and appends to OUT.md:
#   1. the CKA benchmark (benchmarks/cka_bench.py: lpjax.cka against float64
#      NumPy and the PyPI CKA packages; the peers run where torch puts them);
#   2. scoring ResNet-56's 24 candidates on 5,000 images: the one compiled
#      call against the per-candidate loops (benchmarks/scoring_bench.py);
#   3. ResNet-56 train-step throughput at batch 128 and the latency of the
#      pruned [2, 2, 2] model against the unpruned one, batch 1 and 256
#      (benchmarks/device_bench.py).
# A step that runs out of time or fails is recorded as such in OUT.md and
# the suite goes on. LPJAX_ALLOW_CPU=1 runs it without a GPU (a smoke test
# of the script; the numbers are then the CPU's).
set -uo pipefail
out=$(realpath -m "${1:-gpu_suite.md}")  # Relative to where it is called.
mkdir -p "$(dirname "$out")" || exit 2
cd "$(dirname "$0")/.."
start=$(date +%s)

backend=$(python -c 'import jax; print(jax.default_backend())') || {
  echo "error: JAX does not import; install lpjax first (see the header)." >&2
  exit 2
}
if [[ $backend != gpu && ${LPJAX_ALLOW_CPU:-0} != 1 ]]; then
  echo "error: JAX's default backend is '$backend', not gpu. Install the" \
    "CUDA plugin: pip install -e '.[cuda12]' (or cuda13), or set" \
    "LPJAX_ALLOW_CPU=1 to run the suite on the CPU." >&2
  exit 2
fi

{
  echo "# lpjax GPU suite"
  echo
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ), commit" \
    "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)," \
    "command \`benchmarks/gpu_suite.sh\`."
  echo
  python -c 'import jax, jaxlib, platform
print(f"- JAX {jax.__version__} (jaxlib {jaxlib.__version__}), backend",
      f"{jax.default_backend()}, devices {jax.devices()}")
print(f"- Python {platform.python_version()}, {platform.machine()}")'
  if command -v nvidia-smi >/dev/null; then
    echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total \
      --format=csv,noheader | head -1)"
  fi
  echo "- CPU: $(nproc) cores"
  echo
} >"$out"

# step TITLE LIMIT_S COMMAND...: runs COMMAND under LIMIT_S seconds, its
# markdown (written to $tmp) or its failure appended to $out.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
step() {
  local title=$1 limit=$2
  shift 2
  echo "== $title (limit ${limit} s)" >&2
  local t0=$SECONDS rc=0
  timeout --kill-after=10 "$limit" "$@" >"$tmp/stdout" 2>"$tmp/stderr" || rc=$?
  {
    echo "## $title"
    echo
    echo "\`$*\` — $((SECONDS - t0)) s"
    echo
    if ((rc != 0)); then
      if ((rc == 124)); then
        echo "**Not finished: stopped at the ${limit} s limit.**"
      elif ((rc == 137)); then
        echo "**Killed (exit status 137: the ${limit} s limit, or memory).**"
      else
        echo "**Failed (exit status $rc).**"
      fi
      echo
      echo 'Its last output:'
      echo
      echo '```'
      tail -n 15 "$tmp/stdout"
      tail -n 15 "$tmp/stderr"
      echo '```'
    elif [[ -s $tmp/step.md ]]; then
      cat "$tmp/step.md"
    else
      cat "$tmp/stdout"
    fi
    echo
  } >>"$out"
  rm -f "$tmp/step.md"
}

export PYTHONUNBUFFERED=1
if python -c 'import cka, ckatorch, torch' 2>/dev/null; then
  step "CKA: lpjax against NumPy float64 and the PyPI packages" 200 \
    python benchmarks/cka_bench.py --skip_numpy_at_largest \
    --loop_budget_s 20 --out "$tmp/step.md"
else
  {
    echo "## CKA"
    echo
    echo "Not run: the peers are not installed (pip install -e '.[bench]')."
    echo
  } >>"$out"
fi
step "Scoring ResNet-56: one compiled call against per-candidate loops" 170 \
  python benchmarks/scoring_bench.py --n=5000 --batch=500 --repeats=2
step "ResNet-56: latency pruned [2, 2, 2] vs unpruned, train-step throughput" \
  90 python benchmarks/device_bench.py --runs 30 --batches 1,256 \
  --train_batch 128 --train_steps 20 --out "$tmp/step.md"

echo "Total: $(($(date +%s) - start)) s." >>"$out"
echo "wrote $out" >&2
