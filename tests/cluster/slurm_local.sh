#!/usr/bin/env bash
# Prove profiles/slurm against a real, throw-away, one-node SLURM cluster on this machine.
#
#   make test-slurm                     # or: bash tests/cluster/slurm_local.sh
#   bash tests/cluster/slurm_local.sh --cluster-only   # start the cluster, run one trivial job
#                                                      # per partition, stop (a few seconds)
#
# 1. installs slurm-wlm and munge from the distribution's packages when they are missing;
# 2. starts a private munged, slurmctld and slurmd (one node, partitions "main" and "gpu") whose
#    config, keys, state, spool and logs all live in one temp folder, on free ports, with a
#    unique cluster name, so an existing SLURM/munge on the machine is neither used nor touched;
# 3. runs the smoke DAG's first experiment (every rule: training, FATReLU, stages 2 and 3,
#    latency, aggregate, report; DST_SLURM_ALL=1: every experiment) with
#    `snakemake all --profile profiles/slurm` and prints its wall time;
# 4. runs the whole smoke DAG locally and checks that the SLURM run's rows of runs.csv/layers.csv
#    equal the local ones (timing and git columns aside) and that every model.pt holds a
#    bit-identical state_dict;
# 5. stops the daemons it started, by PID, from an EXIT trap (so also on failure or Ctrl-C).
#
# Exit status: 0 = passed, or skipped with a line "SKIP: <reason>" (not root, packages cannot be
# installed, DST_SKIP_SLURM=1); non-zero = failed (a line "FAIL: <reason>").
#
# Environment:
#   DST_DATA_ROOT        offline MNIST/Fashion-MNIST (default: ../shared/data or data/, relative to the checkout)
#   DST_SLURM_TIMEOUT    seconds allowed for each snakemake run (default 1800)
#   DST_SLURM_COMPARE_WITH  results folder of a smoke run made locally from this checkout (what
#                        .ci/run passes from make test): compared with instead of a new local run
#   DST_SLURM_KEEP=1     keep the temp folder on success too (it is always kept on failure)
#   DST_SLURM_ALL=1      run every experiment of config/smoke.yaml through SLURM, not the first
#   DST_SLURM_SNAKEMAKE_ARGS  extra arguments for the SLURM run only (e.g. "--cores 8" to try a
#                        profile change without editing profiles/slurm/config.yaml)
#   DST_SKIP_SLURM=1     skip without doing anything
#   TMPDIR               where the temp folder is created (default /tmp)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

say() { echo "[slurm-test] $*"; }
skip() { echo "SKIP: $*"; exit 0; }
fail() { echo "FAIL: $*" >&2; exit 1; }

TIMEOUT="${DST_SLURM_TIMEOUT:-1800}"
CLUSTER_ONLY=0
case "${1:-}" in
  "") ;;
  --cluster-only) CLUSTER_ONLY=1 ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--cluster-only]" >&2; exit 2 ;;
esac
PY="$ROOT/.venv/bin/python"
SNAKEMAKE="$ROOT/.venv/bin/snakemake"

# ------------------------------------------------------------------ can this machine run it?
[ "${DST_SKIP_SLURM:-0}" = 1 ] && skip "DST_SKIP_SLURM=1"
[ "$(uname -s)" = Linux ] || skip "needs Linux (this is $(uname -s))"
[ "$(id -u)" = 0 ] || skip "needs root to install packages and start munged/slurmctld/slurmd (uid $(id -u))"

[ -x "$SNAKEMAKE" ] || fail "$SNAKEMAKE not found: run 'make venv' first (make test-slurm does)"
"$PY" -c "import snakemake_executor_plugin_slurm" 2>/dev/null \
  || fail "snakemake-executor-plugin-slurm is not installed in .venv (pip install -e .)"

# Datasets: the jobs run offline, so the data must be on this machine.
if [ -z "${DST_DATA_ROOT:-}" ]; then
  for candidate in ../shared/data data; do  # relative to the checkout
    if [ -d "$candidate/mnist" ] && [ -d "$candidate/fashion-mnist" ]; then
      DST_DATA_ROOT="$(cd "$candidate" && pwd)"
      break
    fi
  done
fi
[ -n "${DST_DATA_ROOT:-}" ] || fail "DST_DATA_ROOT is not set and no MNIST/Fashion-MNIST copy was" \
  "found in ../shared/data or data/ (relative to the checkout); set DST_DATA_ROOT to a folder holding" \
  "mnist/ and fashion-mnist/"
for dataset in mnist fashion-mnist; do
  [ -d "$DST_DATA_ROOT/$dataset" ] || fail "DST_DATA_ROOT=$DST_DATA_ROOT has no $dataset/ folder"
done
export DST_DATA_ROOT
say "DST_DATA_ROOT=$DST_DATA_ROOT"

# ------------------------------------------------------------------ packages
needed=(munged munge unmunge slurmctld slurmd sbatch srun squeue scontrol sinfo scancel timeout runuser)
missing() {
  local tool
  for tool in "${needed[@]}"; do command -v "$tool" >/dev/null 2>&1 || echo "$tool"; done
}
if [ -n "$(missing)" ]; then
  say "missing: $(missing | tr '\n' ' ')-> installing slurm-wlm and munge from the distribution"
  command -v apt-get >/dev/null 2>&1 || skip "SLURM/munge are not installed and there is no apt-get"
  apt_log="$(mktemp "${TMPDIR:-/tmp}/dst-slurm-apt.XXXXXX")"
  if ! DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$apt_log" 2>&1; then
    tail -n 5 "$apt_log"
    skip "package lists cannot be fetched (apt-get update failed, log: $apt_log)"
  fi
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >>"$apt_log" 2>&1; then
    tail -n 5 "$apt_log"
    skip "slurm-wlm/munge cannot be installed (apt-get install failed, log: $apt_log)"
  fi
  rm -f "$apt_log"
  [ -z "$(missing)" ] || fail "still missing after installing: $(missing | tr '\n' ' ')"
fi
say "$(slurmctld -V), $(munged --version 2>&1 | head -n 1)"

# Daemons left over by an earlier, hard-killed run of this script: report, never kill.
for pidfile in "${TMPDIR:-/tmp}"/dst-slurm.*/run/*.pid; do
  [ -f "$pidfile" ] || continue
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    say "note: $(cat "/proc/$pid/comm" 2>/dev/null || echo process) $pid from an earlier run is" \
      "still alive ($pidfile); it uses other ports and is left alone (stop it: kill $pid)"
  fi
done

# ------------------------------------------------------------------ temp folder and cleanup
WORK="$(mktemp -d "${TMPDIR:-/tmp}/dst-slurm.XXXXXX")"
chmod 711 "$WORK"  # munged (user munge) must reach its socket folder
mkdir -p "$WORK"/{run,log,state,spool,munge/key,slurm-logs}
export SLURM_CONF="$WORK/slurm.conf"
# Nothing from an enclosing SLURM job or the user's SLURM defaults may leak into this cluster.
while read -r var; do
  case "$var" in SLURM_CONF) ;; SLURM_*|SBATCH_*|SQUEUE_*|SRUN_*|SALLOC_*|SINFO_*) unset "$var" ;; esac
done < <(compgen -e)

STARTED=()     # "name:pid" of every daemon this script started
STATUS=failed

daemon_pid() {  # pid from a pid file, once the daemon has written it
  local file="$1" i
  for i in $(seq 1 100); do
    if [ -s "$file" ]; then cat "$file"; return 0; fi
    sleep 0.1
  done
  return 1
}

stop_pid() {  # TERM, wait up to 20 s, then KILL; only if the PID still runs the expected program
  local name="$1" pid="$2" i
  kill -0 "$pid" 2>/dev/null || return 0
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$name" ]; then
    say "not stopping PID $pid: it is no longer $name"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 200); do
    kill -0 "$pid" 2>/dev/null || { say "stopped $name (PID $pid)"; return 0; }
    sleep 0.1
  done
  say "$name (PID $pid) ignored SIGTERM for 20 s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? entry i
  trap - EXIT INT TERM
  set +e
  if [ "$STATUS" != passed ] && [ "$rc" = 0 ]; then rc=1; fi
  if [ "${#STARTED[@]}" -gt 0 ]; then
    if [ -f "$SLURM_CONF" ] && scontrol ping >/dev/null 2>&1; then
      if [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
        say "cancelling the jobs still queued/running in the test cluster"
        scancel --quiet $(squeue -h -o %i) 2>/dev/null
        for i in $(seq 1 30); do
          [ -z "$(squeue -h -t PD,R,CG,S -o %i 2>/dev/null)" ] && break
          sleep 1
        done
      fi
    fi
    # slurmd first (its jobs are gone), then slurmctld (saves state), munged last.
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
      entry="${STARTED[$i]}"
      stop_pid "${entry%%:*}" "${entry#*:}"
    done
  fi
  if [ "$rc" != 0 ]; then
    for log in "$WORK"/log/slurmctld.log "$WORK"/log/slurmd.log "$WORK"/munge/munged.log; do
      [ -s "$log" ] || continue
      echo "---- last lines of $log"
      tail -n 15 "$log"
    done
    echo "FAIL: SLURM profile test failed (exit $rc); everything is kept in $WORK" >&2
  elif [ "${DST_SLURM_KEEP:-0}" = 1 ]; then
    say "kept $WORK (DST_SLURM_KEEP=1)"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM

# ------------------------------------------------------------------ munge (private socket + key)
KEY="$WORK/munge/key/munge.key"
if command -v mungekey >/dev/null 2>&1; then
  mungekey --create --keyfile="$KEY" >/dev/null
else
  dd if=/dev/urandom of="$KEY" bs=1024 count=1 status=none
fi
chown -R munge:munge "$WORK/munge"
chmod 755 "$WORK/munge"
chmod 700 "$WORK/munge/key"
chmod 400 "$KEY"
SOCKET="$WORK/munge/munge.socket"
runuser -u munge -- munged --socket="$SOCKET" --key-file="$KEY" \
  --pid-file="$WORK/munge/munged.pid" --log-file="$WORK/munge/munged.log" \
  --seed-file="$WORK/munge/key/munged.seed" \
  || fail "munged did not start (see $WORK/munge/munged.log)"
pid="$(daemon_pid "$WORK/munge/munged.pid")" || fail "munged wrote no PID file"
STARTED+=("munged:$pid")
ln -s "$WORK/munge/munged.pid" "$WORK/run/munged.pid"
munge -S "$SOCKET" -n | unmunge -S "$SOCKET" >/dev/null || fail "munge round trip failed"
say "munged PID $pid, socket $SOCKET"

# ------------------------------------------------------------------ slurm.conf
free_ports() {  # two TCP ports nothing listens on
  "$PY" - <<'EOF'
import socket
sockets = [socket.socket() for _ in range(2)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))
EOF
}
read -r CTLD_PORT SLURMD_PORT < <(free_ports)
CLUSTER="dsttest$(date +%s | tail -c 6)$$"
HOST="$(hostname -s)"
NODE="dstnode$$"
CPUS="$(nproc)"
MEM="$(free -m | awk '/^Mem:/ {print $2}')"
# The smoke jobs ask for up to 4000 MB; memory is not a consumable here (CR_CPU) and the node
# configuration overrides the detected hardware, so a small machine can still schedule them.
if [ "$MEM" -lt 4096 ]; then
  say "note: only $MEM MB of RAM; declaring 4096 MB so the profile's 4000 MB requests fit"
  MEM=4096
fi
touch "$WORK/plugstack.conf"
cat >"$SLURM_CONF" <<EOF
# Written by tests/cluster/slurm_local.sh: one node on localhost, for testing profiles/slurm.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$SOCKET
CredType=cred/munge
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool/%n
SlurmctldPidFile=$WORK/run/slurmctld.pid
SlurmdPidFile=$WORK/run/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$WORK/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
ReturnToService=2
MinJobAge=300
SlurmdParameters=config_overrides
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=main Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
say "cluster $CLUSTER: node $NODE ($CPUS CPUs, $MEM MB), slurmctld port $CTLD_PORT," \
  "slurmd port $SLURMD_PORT, SLURM_CONF=$SLURM_CONF"

# ------------------------------------------------------------------ slurmctld, slurmd
slurmctld || fail "slurmctld did not start (see $WORK/log/slurmctld.log)"
pid="$(daemon_pid "$WORK/run/slurmctld.pid")" || fail "slurmctld wrote no PID file"
STARTED+=("slurmctld:$pid")
for i in $(seq 1 30); do scontrol ping >/dev/null 2>&1 && break; sleep 1; done
scontrol ping >/dev/null 2>&1 || fail "slurmctld (PID $pid) does not answer scontrol ping"
say "slurmctld PID $pid"

slurmd -N "$NODE" || fail "slurmd did not start (see $WORK/log/slurmd.log)"
pid="$(daemon_pid "$WORK/run/slurmd.pid")" || fail "slurmd wrote no PID file"
STARTED+=("slurmd:$pid")
state=""
for i in $(seq 1 60); do
  state="$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1)"
  [ "$state" = idle ] && break
  sleep 1
done
if [ "$state" != idle ]; then
  scontrol show node "$NODE" || true
  fail "node $NODE is '$state', not idle, after 60 s"
fi
say "slurmd PID $pid; node $NODE is idle"
sinfo -o "%P %a %D %T %c %m %N" | sed 's/^/[slurm-test]   /'

# A trivial job on each partition of the profile, with a job step (the plugin's jobs run their
# rule through srun): fails fast, before the DAG, if jobs cannot run.
for partition in main gpu; do
  out="$WORK/log/hostname-$partition.out"
  timeout 120 sbatch --wait --quiet --partition "$partition" --time 1 --output "$out" \
    --wrap "srun -n1 hostname" || fail "sbatch --wrap 'srun -n1 hostname' on partition $partition failed"
  say "partition $partition: a job step ran on $(cat "$out")"
done
if [ "$CLUSTER_ONLY" = 1 ]; then
  STATUS=passed
  say "PASS: cluster came up and ran jobs (--cluster-only: the smoke DAG was not run)"
  exit 0
fi

# ------------------------------------------------------------------ the smoke DAG through SLURM
SLURM_RESULTS="$WORK/results-slurm"
LOCAL_RESULTS="$WORK/results-local"
progress='[0-9]+ of [0-9]+ steps|^Error|error in rule|SLURM-job .* failed|Submitted .*external jobid'

run_snakemake() {  # name, log, args...: run under timeout, print progress, return its status
  local name="$1" log="$2" rc
  shift 2
  say "$name: snakemake $*"
  set +e
  timeout -k 15 -s INT "$TIMEOUT" "$SNAKEMAKE" "$@" 2>&1 | tee "$log" \
    | grep --line-buffered -E "$progress" \
    | while IFS= read -r line; do printf '[%s %(%T)T] %s\n' "$name" -1 "$line"; done
  rc="${PIPESTATUS[0]}"
  set -e
  if [ "$rc" != 0 ]; then
    echo "---- last lines of $log"
    tail -n 60 "$log"
    if grep -q "Workflow requires a total number of cores" "$log"; then
      echo "HINT: a rule uses workflow.cores (measure_latency: threads: workflow.cores), which is" \
        "undefined without --cores; cluster runs need 'cores: N' in profiles/slurm/config.yaml" \
        "(try: DST_SLURM_SNAKEMAKE_ARGS='--cores 8' make test-slurm; see tests/cluster/README.md)"
    fi
    [ "$rc" = 124 ] && fail "$name: snakemake did not finish within $TIMEOUT s (DST_SLURM_TIMEOUT)"
    fail "$name: snakemake exited with status $rc (full log: $log)"
  fi
}

# Test-only overrides: the first status check after 2 s (the profile's 20 s is for real
# clusters; the smoke jobs take seconds), the plugin's job logs in the temp folder, and
# --cores = this node's CPUs (the profile's `cores: 8` is the EDIT line for a real node; the
# latency job asks for all of them, more than this one-node test cluster has).
read -r -a extra_args <<<"${DST_SLURM_SNAKEMAKE_ARGS:-}"
# The first experiment of the smoke config holds every rule; the others add jobs of the same
# rules (a later config file replaces the experiments list, so their runs are the same runs).
config_files=(config/smoke.yaml)
if [ "${DST_SLURM_ALL:-0}" != 1 ]; then
  "$PY" - "$WORK/first_experiment.yaml" <<'EOF'
import sys

import yaml

experiments = yaml.safe_load(open("config/smoke.yaml"))["experiments"][:1]
yaml.safe_dump({"experiments": experiments}, open(sys.argv[1], "w"), sort_keys=False)
print(f"[slurm-test] through SLURM: experiment {experiments[0]['name']} of config/smoke.yaml "
      f"(DST_SLURM_ALL=1: all)")
EOF
  config_files+=("$WORK/first_experiment.yaml")
fi
slurm_args=(all --profile profiles/slurm --configfile "${config_files[@]}"
  --config "results_dir=$SLURM_RESULTS" --slurm-init-seconds-before-status-checks 2
  --slurm-logdir "$WORK/slurm-logs" --cores "$(nproc)" "${extra_args[@]}")
[ "${#extra_args[@]}" -eq 0 ] || say "extra arguments (DST_SLURM_SNAKEMAKE_ARGS): ${extra_args[*]}"

# Which of the profile's settings does Snakemake really use? A workflow profile
# (profiles/default, picked up automatically) overrides --profile key by key.
WARNINGS="$("$PY" - "${slurm_args[@]}" 2>/dev/null <<'EOF' || true
import sys

import yaml
from snakemake.cli import parse_args

cli = sys.argv[1:]
_, args = parse_args(cli)
profile = yaml.safe_load(open("profiles/slurm/config.yaml"))
for key, wanted in profile.items():
    attr = key.replace("-", "_")
    if isinstance(wanted, (dict, list)) or f"--{key}" in cli or not hasattr(args, attr):
        continue
    if getattr(args, attr) != wanted:
        print(f"WARNING: profiles/slurm sets {key}: {wanted}, but snakemake uses "
              f"{getattr(args, attr)!r} (overridden by the workflow profile profiles/default; "
              f"see tests/cluster/README.md)")
EOF
)"
[ -z "$WARNINGS" ] || echo "$WARNINGS"

# Inside each job the jobstep plugin runs the rule through `srun` with every SLURM_* variable
# but the job's identity removed, SLURM_CONF included (snakemake-executor-plugin-slurm issue
# #164). A real cluster's srun finds /etc/slurm/slurm.conf; this cluster's config must stay in
# the temp folder, so the jobs get the real srun behind a two-line shim that sets SLURM_CONF.
mkdir -p "$WORK/bin"
printf '#!/bin/sh\nSLURM_CONF=%q exec %q "$@"\n' "$SLURM_CONF" "$(command -v srun)" >"$WORK/bin/srun"
chmod 755 "$WORK/bin/srun"
saved_path="$PATH"
export PATH="$WORK/bin:$PATH"   # sbatch --export=ALL hands it to the jobs

jobs_done() { grep -c '_job_complete: JobId=[0-9]* done' "$WORK/log/slurmctld.log" || true; }
before="$(jobs_done)"
start=$(date +%s.%N)
run_snakemake slurm "$WORK/log/snakemake-slurm.log" "${slurm_args[@]}"
SLURM_WALL=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
completed=$(( $(jobs_done) - before ))
[ "$completed" -gt 0 ] || fail "slurmctld completed no job: the DAG did not run through SLURM"
say "SLURM smoke run: $completed SLURM jobs, wall time $SLURM_WALL s"
export PATH="$saved_path"

# ------------------------------------------------------------------ the same DAG locally
# .ci/run hands over the smoke run `make test` just made on this machine from this checkout
# (DST_SLURM_COMPARE_WITH): the comparison is the same, without a second local run.
if [ -n "${DST_SLURM_COMPARE_WITH:-}" ] && [ -f "$DST_SLURM_COMPARE_WITH/tables/runs.csv" ]; then
  LOCAL_RESULTS="$DST_SLURM_COMPARE_WITH"
  LOCAL_WALL="(not rerun)"
  say "local smoke run: the one make test made, $LOCAL_RESULTS (DST_SLURM_COMPARE_WITH)"
else
  start=$(date +%s.%N)
  run_snakemake local "$WORK/log/snakemake-local.log" all --cores 2 \
    --configfile config/smoke.yaml --config "results_dir=$LOCAL_RESULTS"
  LOCAL_WALL=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  say "local smoke run (--cores 2): wall time $LOCAL_WALL s"
fi

# ------------------------------------------------------------------ compare
"$PY" - "$SLURM_RESULTS" "$LOCAL_RESULTS" <<'EOF'
"""SLURM and local results must agree: tables (timing/git aside) and bit-identical weights."""
import sys
from pathlib import Path

import pandas as pd
import torch

from dstcore.analysis.aggregate import TIMING_COLUMNS
from dstcore.models.checkpoint import read_model

slurm, local = map(Path, sys.argv[1:3])
ignore = [*TIMING_COLUMNS, "git_commit", "git_dirty", "host"]
for table in ("runs.csv", "layers.csv"):
    a = pd.read_csv(slurm / "tables" / table)
    b = pd.read_csv(local / "tables" / table)
    b = b[b.experiment.isin(set(a.experiment))].reset_index(drop=True)  # the experiments run
    drop = [c for c in ignore if c in a.columns]
    pd.testing.assert_frame_equal(a.drop(columns=drop), b.drop(columns=drop))
    print(f"[slurm-test] {table}: {len(a)} rows equal (ignoring {', '.join(drop) or 'nothing'}; "
          f"experiments {', '.join(sorted(set(a.experiment)))})")
runs = pd.read_csv(slurm / "tables/runs.csv")
for run_dir in runs.run_dir:
    x = read_model(slurm / run_dir / "model.pt")["state_dict"]
    y = read_model(local / run_dir / "model.pt")["state_dict"]
    assert x.keys() == y.keys(), f"{run_dir}: different state_dict keys"
    different = [k for k in x if not torch.equal(x[k], y[k])]
    assert not different, f"{run_dir}: tensors differ: {different}"
print(f"[slurm-test] model.pt: {len(runs)} state_dicts bit-identical")
for results in (slurm, local):
    assert (results / "report/report.html").is_file(), f"no report in {results}"
EOF

STATUS=passed
say "PASS: profiles/slurm ran the smoke DAG on a real SLURM ($completed jobs) and matched the" \
  "local run"
say "SLURM smoke run wall time: $SLURM_WALL s (local run: $LOCAL_WALL s)"
[ -z "$WARNINGS" ] || echo "$WARNINGS"
