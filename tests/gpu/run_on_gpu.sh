#!/usr/bin/env bash
# Run ON the GPU machine, in the project's root, with .carry and .whl carried
# (tests/gpu/prepare_carry.sh made them; tests/gpu/README.md gives the device calls):
#   tests/gpu/run_on_gpu.sh checks   # the machine, the CUDA tests, the training benchmark (~4 min)
#   tests/gpu/run_on_gpu.sh dag      # the default DAG on CUDA with --cores 16, then the report
# What comes back is written to $OUT (at most 8 files).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
DAG_LIMIT=${DAG_LIMIT:-520}   # seconds for snakemake in one call (a device call runs <= 600 s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/bin && ln -sf "$(command -v python3)" /tmp/bin/python  # rules call `python`
export PATH=/tmp/bin:$PATH PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 \
       DST_DATA_ROOT=$PWD/.carry/data MPLBACKEND=Agg
case "${1:-}" in
checks)
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch, torchvision, snakemake, papermill; print('torch', torch.__version__,
'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
    nproc; } 2>&1 | tee "$OUT/machine.txt"
  python3 -m pytest -q -p no:cacheprovider tests/test_gpu_path.py tests/test_throughput.py \
    2>&1 | tee "$OUT/cuda_tests.log"
  for data in resident loader; do
    phases="plain tl1 masked"; [ $data = loader ] && phases=plain
    python3 -m dstcore.cli bench-train --models resnet20 resnet18 --input-shape 3 32 32 \
      --batch-sizes 128 --phases $phases --device cuda --precision bf16 --no-deterministic \
      --threads 0 --steps 50 --data $data --workers 12 --out "$OUT/bench_gpu_$data.csv" \
      2>&1 | tee -a "$OUT/bench.log"
  done
  python3 -m dstcore.cli bench-train --models resnet18 --input-shape 3 32 32 --batch-sizes 128 \
    --phases plain --device cuda --precision fp32 --threads 0 --steps 30 \
    --out "$OUT/bench_gpu_fp32_deterministic.csv" 2>&1 | tee -a "$OUT/bench.log"
  ;;
dag)
  start=$(date +%s)
  timeout "$DAG_LIMIT" python3 -m snakemake all --cores 16 --scheduler greedy \
    --configfile tests/gpu/config_gpu.yaml --rerun-incomplete > "$OUT/dag.log" 2>&1
  echo "snakemake exit $? after $(( $(date +%s) - start )) s (a rerun continues the DAG)" \
    | tee -a "$OUT/dag.log"
  tar czf "$OUT/results_gpu.tgz" --exclude='*.pt' --exclude='checkpoint*' results_gpu
  cp results_gpu/tables/runs.csv "$OUT/" 2>/dev/null
  cp results_gpu/report/report.html "$OUT/" 2>/dev/null
  ;;
*) echo "usage: $0 checks|dag" >&2; exit 2 ;;
esac
