#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine (Debian's slurm-wlm and munge), for the tests of
# the chain's SLURM path (tests/test_slurm.py) and for trying `run_all.sh --slurm` by hand.
#
#   bash scripts/slurm_local.sh start     # install the packages if missing, then start
#   bash scripts/slurm_local.sh stop
#   bash scripts/slurm_local.sh status
#
# Needs root (it writes /etc/slurm and /etc/munge and starts the daemons). munged runs as the
# munge user, slurmctld and slurmd as root. There is no accounting storage (slurmdbd), so sacct
# does not work: the chain asks squeue and scontrol, and keeps each job's end in its own files.
# MinJobAge is raised so that scontrol still knows a finished job for an hour.
set -euo pipefail

action=${1:-start}
host=$(hostname -s)
conf=/etc/slurm/slurm.conf

log() { printf '[slurm_local] %s\n' "$*"; }
die() { echo "slurm_local.sh: error: $*" >&2; exit 1; }

running() { pgrep -x slurmctld >/dev/null && pgrep -x slurmd >/dev/null; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v munged >/dev/null; then return; fi
  [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are not installed; run as root to install them"
  log "installing slurm-wlm and munge (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q slurm-wlm munge >/dev/null || {
    apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null; }
}

write_config() {
  local cpus memory
  cpus=$(nproc)
  memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  cat > "$conf" <<EOF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
MinJobAge=3600
KillWait=30
SchedulerParameters=defer_batch,sched_interval=1
DependencyParameters=kill_invalid_depend
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  install_packages
  if running; then log "already running"; return; fi
  [ "$(id -u)" = 0 ] || die "starting the daemons needs root"
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
  write_config
  slurmctld
  slurmd
  for _ in $(seq 1 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; then
      log "running: $(sinfo -h -o '%P %D %T %c CPUs')"
      return
    fi
    sleep 1
  done
  die "the node did not come up; see /var/log/slurm/slurmctld.log and slurmd.log"
}

stop() {
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  for _ in $(seq 1 20); do running || break; sleep 0.5; done
  log "stopped"
}

case "$action" in
  start) start ;;
  stop) stop ;;
  status) if running; then sinfo; squeue; else log "not running"; exit 1; fi ;;
  *) die "unknown action '$action': start, stop or status" ;;
esac
