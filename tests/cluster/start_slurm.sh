#!/usr/bin/env bash
# A one-node SLURM cluster on this (Debian) machine, for the workflow's cluster test.
#   tests/cluster/start_slurm.sh start    install (if needed), configure and start; wait until the node is idle
#   tests/cluster/start_slurm.sh stop     stop the daemons
# Needs root. State and logs live in $DTI_SLURM_DIR (default build/slurm in this checkout); the
# partition is called "debug". There is no accounting database: a workflow submits with
# --slurm-status-command squeue --slurm-no-account.
set -euo pipefail
DIR=${DTI_SLURM_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/build/slurm}
GPUS=2  # stand-in GPUs, see below
CONF=/etc/slurm/slurm.conf

stop() {
    for daemon in slurmd slurmctld munged; do pkill -x "$daemon" 2>/dev/null || true; done
    for _ in $(seq 20); do
        pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || pgrep -x munged >/dev/null || return 0
        sleep 0.5
    done
    echo "error: SLURM daemons still running after stop" >&2; return 1
}

start() {
    [ "$(id -u)" = 0 ] || { echo "error: starting a SLURM cluster needs root" >&2; exit 1; }
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
    fi
    stop
    local host cpus memory
    host=$(hostname -s)
    getent hosts "$host" >/dev/null || echo "127.0.0.1 $host" >> /etc/hosts  # the daemons reach each other by this name
    cpus=$(nproc)
    memory=$(( $(free -m | awk '/^Mem:/ {print $2}') * 9 / 10 ))  # MB; leave room for the daemons
    rm -rf "$DIR" && mkdir -p "$DIR/state" "$DIR/spool" /etc/slurm /run/munge /var/log/munge /var/lib/munge
    # A fresh random key each start: munge authenticates the daemons and the clients to each other.
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
    chmod 400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged
    cat > "$CONF" <<CONF
ClusterName=dti-test
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
GresTypes=gpu
NodeName=$host CPUs=$cpus RealMemory=$memory Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    # Stand-in GPUs (no devices behind them), so that jobs asking --gpus are scheduled and get
    # CUDA_VISIBLE_DEVICES from SLURM as on a GPU node.
    echo "AutoDetect=off" > /etc/slurm/gres.conf
    for i in $(seq 0 $((GPUS - 1))); do
        mknod "$DIR/gpu$i" c 1 3  # character devices, as the gres plugin requires (like /dev/null)
        echo "Name=gpu File=$DIR/gpu$i" >> /etc/slurm/gres.conf
    done
    slurmctld
    slurmd
    for _ in $(seq 60); do
        if sinfo -h -N -o '%t' 2>/dev/null | grep -qx idle; then
            echo "SLURM is up: node $host, $cpus CPUs, $memory MB, partition debug"
            return 0
        fi
        sleep 1
    done
    echo "error: the SLURM node did not become idle in 60 s (logs in $DIR)" >&2
    exit 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
