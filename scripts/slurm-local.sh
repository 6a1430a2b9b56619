#!/usr/bin/env bash
# A real single-node Slurm 22.05 on localhost (Debian 12, root, no systemd), with accounting through
# slurmdbd + MariaDB so that sacct works (without it submitit sees every job as UNKNOWN and wait() hangs).
# Idempotent: installs what is missing, rewrites the config, restarts only daemons whose config changed.
#
# usage: scripts/slurm-local.sh start|stop|status|start-for-tests
#   start-for-tests  what `make test` calls: start when root; otherwise say why not and exit 0, so the
#                    Slurm tests skip (or fail, when CI is set) with their own reason.
# env: SLURM_LOCAL_DIR=/tmp/slurm-local  SLURM_LOCAL_CPUS=4 (more than nproc is allowed: tests oversubscribe)
#      SLURM_FAKE_GPUS=2 (gpu GRES backed by /dev/null, so GPU counts can be validated on a CPU machine)
#      SLURM_CRED_EXPIRE=5 (seconds a requeued job waits; Slurm's default is 120, values < 5 are rejected)
set -euo pipefail
ACTION=${1:-}
DIR=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
CPUS=${SLURM_LOCAL_CPUS:-4}
GPUS=${SLURM_FAKE_GPUS:-2}
CRED_EXPIRE=${SLURM_CRED_EXPIRE:-5}
MYSQL_SOCKET=/run/mysqld/mysqld.sock
DAEMONS="$DIR/run/slurmd.pid:slurmd $DIR/run/slurmctld.pid:slurmctld $DIR/run/slurmdbd.pid:slurmdbd
/run/mysqld/mysqld.pid:mariadbd /run/munge/munged.pid:munged"

log() { echo "[slurm-local $(date +%T)] $*" >&2; }
pid_runs() { [ -r "/proc/$1/comm" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]; }  # PID COMM
daemon_up() { [ -s "$1" ] && pid_runs "$(cat "$1")" "$2"; }                                 # PIDFILE COMM

stop_daemon() {  # PIDFILE COMM: by pid, never by name (other people's processes share this machine)
  daemon_up "$1" "$2" || return 0
  local pid; pid=$(cat "$1"); kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 300); do pid_runs "$pid" "$2" || return 0; sleep 0.1; done
  log "$2 ($pid) ignored SIGTERM for 30 s; SIGKILL"; kill -9 "$pid" 2>/dev/null || true
}

wait_until() {  # SECONDS WHAT COMMAND...
  local deadline=$(( $(date +%s) + $1 )) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { log "timed out waiting for $what"; return 1; }
    sleep 0.2
  done
}

install_packages() {
  local wanted="slurmctld slurmd slurm-client munge slurmdbd mariadb-server" missing="" p
  for p in $wanted; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  log "installing:$missing"
  # Without systemd, postinst scripts must not try to start the daemons: we start them ourselves below.
  local own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d; own_policy=1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
  [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  return 0
}

replace_if_changed() {  # NEW TARGET -> 0 when TARGET changed
  if cmp -s "$1" "$2"; then rm -f "$1"; return 1; fi
  mv "$1" "$2"
}

write_slurm_conf() {  # -> 0 when slurm.conf or gres.conf changed
  local mem_mb changed=1 gres=""
  mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
  [ "$GPUS" -gt 0 ] && gres=" Gres=gpu:$GPUS"
  {
    cat <<EOF
ClusterName=localcluster
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=$CRED_EXPIRE
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
MailProg=/bin/true
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmdSpoolDir=$DIR/spool/slurmd
StateSaveLocation=$DIR/state
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
KillWait=5
MinJobAge=300
EOF
    [ "$CPUS" -gt "$(nproc)" ] && echo "SlurmdParameters=config_overrides"
    [ "$GPUS" -gt 0 ] && printf 'GresTypes=gpu\nAccountingStorageTRES=gres/gpu\n'
    echo "NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem_mb$gres State=UNKNOWN"
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } > "$DIR/slurm.conf.new"
  replace_if_changed "$DIR/slurm.conf.new" /etc/slurm/slurm.conf && changed=0
  if [ "$GPUS" -gt 0 ]; then
    # A count-only gpu GRES leaves the node "inval"; File= must name character devices.
    mkdir -p "$DIR/fakegpu"
    for i in $(seq 0 $((GPUS - 1))); do ln -sfn /dev/null "$DIR/fakegpu/nvidia$i"; done
    printf 'AutoDetect=off\nNodeName=localhost Name=gpu File=%s/fakegpu/nvidia[0-%s]\n' "$DIR" $((GPUS - 1)) \
      > "$DIR/gres.conf.new"
    replace_if_changed "$DIR/gres.conf.new" /etc/slurm/gres.conf && changed=0
  elif [ -e /etc/slurm/gres.conf ]; then rm -f /etc/slurm/gres.conf; changed=0; fi
  return $changed
}

start_munge() {
  [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; }
  # systemd-tmpfiles would create /run/munge; there is no systemd here.
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  daemon_up /run/munge/munged.pid munged || { log "starting munged"; runuser -u munge -- /usr/sbin/munged --force; }
  wait_until 10 munge bash -c 'munge -n | unmunge'
}

start_accounting() {
  mkdir -p /run/mysqld; chown mysql:mysql /run/mysqld
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  if ! daemon_up /run/mysqld/mysqld.pid mariadbd; then
    log "starting mariadbd (unix socket only)"
    setsid /usr/sbin/mariadbd --user=mysql --skip-networking --socket=$MYSQL_SOCKET \
      --pid-file=/run/mysqld/mysqld.pid --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
      --log-error="$DIR/log/mariadb.log" </dev/null >/dev/null 2>&1 &
  fi
  wait_until 60 mariadb mysqladmin --socket=$MYSQL_SOCKET ping
  mysql --socket=$MYSQL_SOCKET -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm-local';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  printf '%s\n' AuthType=auth/munge DbdHost=localhost SlurmUser=root "LogFile=$DIR/log/slurmdbd.log" \
    "PidFile=$DIR/run/slurmdbd.pid" StorageType=accounting_storage/mysql StorageHost=localhost \
    StorageUser=slurm StoragePass=slurm-local StorageLoc=slurm_acct_db > "$DIR/slurmdbd.conf.new"
  chmod 600 "$DIR/slurmdbd.conf.new"  # slurmdbd refuses a world-readable config
  replace_if_changed "$DIR/slurmdbd.conf.new" /etc/slurm/slurmdbd.conf && stop_daemon "$DIR/run/slurmdbd.pid" slurmdbd
  daemon_up "$DIR/run/slurmdbd.pid" slurmdbd || { log "starting slurmdbd"; slurmdbd; }
  wait_until 60 slurmdbd sacctmgr -n -P list cluster
}

node_ready() { sinfo -h -n localhost -o %T | grep -Eq '^(idle|mixed|allocated|completing)'; }

start_slurm() {
  daemon_up "$DIR/run/slurmctld.pid" slurmctld || { log "starting slurmctld"; slurmctld; }
  wait_until 30 slurmctld sinfo -h
  # -N localhost: the node is "localhost" whatever this machine's hostname is.
  daemon_up "$DIR/run/slurmd.pid" slurmd || { log "starting slurmd"; slurmd -N localhost; }
  if ! wait_until 30 "node idle" node_ready; then
    log "node: $(sinfo -h -n localhost -o '%T %E')"
    scontrol update nodename=localhost state=resume || true
    wait_until 30 "node idle after resume" node_ready
  fi
  wait_until 30 "cluster registration in accounting" \
    bash -c 'sacctmgr -n -P list cluster format=cluster | grep -qx localcluster'
}

start() {
  [ "$(id -u)" = 0 ] || { echo "slurm-local: start needs root (uid is $(id -u))" >&2; return 1; }
  local t0; t0=$(date +%s%N)
  install_packages
  mkdir -p "$DIR"/{state,spool/slurmd,log,run} /etc/slurm
  if write_slurm_conf; then
    log "config changed: restarting slurmctld and slurmd"
    stop_daemon "$DIR/run/slurmd.pid" slurmd; stop_daemon "$DIR/run/slurmctld.pid" slurmctld
  fi
  start_munge
  start_accounting
  start_slurm
  log "ready in $(( ($(date +%s%N) - t0) / 1000000 )) ms (logs: $DIR/log; stop: $0 stop)"
}

case "$ACTION" in
  start) start ;;
  start-for-tests)
    if [ "$(id -u)" != 0 ]; then
      echo "slurm-local: not starting Slurm: needs root (uid is $(id -u)); Slurm tests skip, or fail when CI is set" >&2
    elif ! "$0" start; then  # a child process: `set -e` does not apply inside a function used as a condition
      echo "slurm-local: Slurm did not start (logs: $DIR/log); Slurm tests skip, or fail when CI is set" >&2
    fi
    exit 0 ;;
  stop)
    for entry in $DAEMONS; do stop_daemon "${entry%%:*}" "${entry##*:}"; done
    log "stopped" ;;
  status)
    for entry in $DAEMONS; do
      if daemon_up "${entry%%:*}" "${entry##*:}"; then echo "${entry##*:}: running (pid $(cat "${entry%%:*}"))"
      else echo "${entry##*:}: down"; fi
    done
    sinfo 2>/dev/null || true ;;
  *) echo "usage: $0 start|stop|status|start-for-tests" >&2; exit 2 ;;
esac
