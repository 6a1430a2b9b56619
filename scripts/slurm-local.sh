#!/usr/bin/env bash
# A real single-node Slurm 22.05 on localhost (Debian 12, root, no systemd), with accounting through
# slurmdbd + MariaDB so that sacct works (without it submitit sees every job as UNKNOWN and wait() hangs).
# Idempotent: installs what is missing, rewrites the config, restarts only daemons whose config changed.
#
# usage: scripts/slurm-local.sh start|start-cluster|stop|status|start-for-tests
#   start            one node, "localhost" (partition debug, the default)
#   start-cluster    that node plus two compute nodes hnode1 and hnode2 (partition multi), each slurmd in
#                    its own network namespace (address 10.77.0.11/.12 on the bridge hetron-br0, whose
#                    host side 10.77.0.1 is the controller's address), UTS namespace (hostname = node
#                    name) and /dev/shm; /etc/netns/<ns>/hosts resolves the nodes inside them. The rest of
#                    the filesystem is shared, as a cluster's shared filesystem is.
#   start-for-tests  what `make test` calls: start-cluster when root, falling back to start where
#                    namespaces are refused (the reason is kept in $DIR/cluster-unavailable, and the
#                    multi-node tests skip with it, or fail when CI is set); not root: say why and exit 0.
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
NODE_CPUS=2
CLUSTER_NODES="hnode1 hnode2"
SUBNET=${SLURM_LOCAL_SUBNET:-10.77.0}  # a /24 of this machine's own; nothing else is on it
BRIDGE=hetron-br0
CONTROLLER_ADDR=$SUBNET.1
DAEMONS="$DIR/run/slurmd-localhost.pid:slurmd $DIR/run/slurmd-hnode1.pid:slurmd $DIR/run/slurmd-hnode2.pid:slurmd
$DIR/run/slurmctld.pid:slurmctld $DIR/run/slurmdbd.pid:slurmdbd /run/mysqld/mysqld.pid:mariadbd /run/munge/munged.pid:munged"

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
  local wanted="slurmctld slurmd slurm-client munge slurmdbd mariadb-server iproute2" missing="" p
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

node_addr() { echo "$SUBNET.$(( 10 + ${1#hnode} ))"; }  # hnode1 -> 10.77.0.11
netns_of() { echo "hetron-$1"; }

write_slurm_conf() {  # MODE (single|cluster) -> 0 when slurm.conf or gres.conf changed
  local mode=$1 mem_mb changed=1 gres="" controller=localhost node
  mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
  [ "$GPUS" -gt 0 ] && gres=" Gres=gpu:$GPUS"
  # The nodes in namespaces reach the controller at the bridge's address (127.0.0.1 is their own).
  [ "$mode" = cluster ] && controller="localhost($CONTROLLER_ADDR)"
  {
    cat <<EOF
ClusterName=localcluster
SlurmctldHost=$controller
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
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmdSpoolDir=$DIR/spool/slurmd-%n
StateSaveLocation=$DIR/state
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
KillWait=5
MinJobAge=300
# A node whose slurmd is gone is DOWN after 30 s (Slurm's default: 300 s), its jobs ended.
SlurmdTimeout=30
EOF
    [ "$CPUS" -gt "$(nproc)" ] && echo "SlurmdParameters=config_overrides"
    [ "$GPUS" -gt 0 ] && printf 'GresTypes=gpu\nAccountingStorageTRES=gres/gpu\n'
    if [ "$mode" = cluster ]; then
      for node in $CLUSTER_NODES; do
        echo "NodeName=$node NodeAddr=$(node_addr "$node") CPUs=$NODE_CPUS RealMemory=$((mem_mb / 2)) State=UNKNOWN"
      done
      echo "PartitionName=multi Nodes=${CLUSTER_NODES// /,} MaxTime=INFINITE State=UP"
    fi
    # After the others: while "localhost" is the only node record, slurmctld's lookup of any name finds it.
    echo "NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem_mb$gres State=UNKNOWN"
    echo "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP"
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

node_ready() { sinfo -h -n "$1" -o %T | grep -Eq '^(idle|mixed|allocated|completing)'; }  # NODE

wait_node_ready() {  # NODE
  if ! wait_until 30 "node $1 idle" node_ready "$1"; then
    log "node $1: $(sinfo -h -n "$1" -o '%T %E')"
    scontrol update nodename="$1" state=resume || true
    wait_until 30 "node $1 idle after resume" node_ready "$1"
  fi
}

namespaces_refused() {  # -> 0 (with the reason on stdout) when this machine cannot host the node namespaces
  local probe=hetron-probe$$ out
  command -v ip >/dev/null || { echo "no ip command (iproute2)"; return 0; }
  if ! out=$(ip netns add "$probe" 2>&1); then echo "ip netns add refused: $out"; return 0; fi
  if ! out=$(nsenter --net="/run/netns/$probe" unshare --uts --mount --propagation private \
      sh -c 'hostname probe && mount -t tmpfs tmpfs /dev/shm' 2>&1); then
    ip netns del "$probe" 2>/dev/null; echo "a UTS namespace or a private /dev/shm is refused: $out"; return 0; fi
  ip netns del "$probe"
  return 1
}

start_network() {  # the bridge, and per node a namespace with a veth pair on it; idempotent
  local node ns addr veth
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  # captured, not piped into grep -q: under pipefail, grep quitting early fails `ip` with SIGPIPE
  [[ $(ip addr show dev "$BRIDGE") == *"inet $CONTROLLER_ADDR/"* ]] || ip addr add "$CONTROLLER_ADDR/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for node in $CLUSTER_NODES; do
    ns=$(netns_of "$node"); addr=$(node_addr "$node"); veth="hetron-v${node#hnode}"
    [ -e "/run/netns/$ns" ] || ip netns add "$ns"
    if ! ip link show "$veth" >/dev/null 2>&1; then
      ip link add "$veth" type veth peer name eth0 netns "$ns"
      ip netns exec "$ns" ip addr add "$addr/24" dev eth0
    fi
    ip link set "$veth" master "$BRIDGE" up
    ip netns exec "$ns" ip link set lo up
    ip netns exec "$ns" ip link set eth0 up
    mkdir -p "/etc/netns/$ns"  # `ip netns exec` binds these over /etc/hosts inside the namespace
    { echo "127.0.0.1 localhost"; echo "$CONTROLLER_ADDR slurm-controller"
      for other in $CLUSTER_NODES; do echo "$(node_addr "$other") $other"; done; } > "/etc/netns/$ns/hosts"
  done
}

stop_network() {
  local node
  for node in $CLUSTER_NODES; do
    ip netns del "$(netns_of "$node")" 2>/dev/null || true
    rm -rf "/etc/netns/$(netns_of "$node")"
  done
  ip link del "$BRIDGE" 2>/dev/null || true
}

in_node_namespaces() {  # NODE COMMAND: run COMMAND in the node's network namespace, with its hostname,
  # its /etc/hosts and a /dev/shm of its own (mosaicml-streaming keeps per-node state there)
  local ns; ns=$(netns_of "$1")
  nsenter --net="/run/netns/$ns" unshare --uts --mount --propagation private sh -c \
    "hostname $1 && mount --bind /etc/netns/$ns/hosts /etc/hosts && mount -t tmpfs -o mode=1777 tmpfs /dev/shm && $2"
}

start_node_slurmd() {  # NODE: slurmd in the node's namespaces, with the node's hostname and own /dev/shm
  local node=$1
  daemon_up "$DIR/run/slurmd-$node.pid" slurmd && return 0
  log "starting slurmd $node ($(node_addr "$node"), netns $(netns_of "$node"))"
  mkdir -p "$DIR/spool/slurmd-$node"
  # nsenter, not `ip netns exec`: that one remounts /sys, hiding the cgroup filesystem slurmd needs.
  in_node_namespaces "$node" "exec slurmd -N $node"
}

start_slurm() {  # MODE
  local node
  daemon_up "$DIR/run/slurmctld.pid" slurmctld || { log "starting slurmctld"; slurmctld; }
  wait_until 30 slurmctld sinfo -h
  # -N localhost: the node is "localhost" whatever this machine's hostname is.
  daemon_up "$DIR/run/slurmd-localhost.pid" slurmd || { log "starting slurmd"; slurmd -N localhost; }
  wait_node_ready localhost
  if [ "$1" = cluster ]; then
    for node in $CLUSTER_NODES; do start_node_slurmd "$node"; done
    for node in $CLUSTER_NODES; do wait_node_ready "$node"; done
  fi
  wait_until 30 "cluster registration in accounting" \
    bash -c 'sacctmgr -n -P list cluster format=cluster | grep -qx localcluster'
}

stop_slurm_daemons() {
  local node
  for node in localhost $CLUSTER_NODES; do stop_daemon "$DIR/run/slurmd-$node.pid" slurmd; done
  stop_daemon "$DIR/run/slurmd.pid" slurmd  # the one-node layout of earlier versions of this script
  stop_daemon "$DIR/run/slurmctld.pid" slurmctld
}

start() {  # MODE (single|cluster)
  [ "$(id -u)" = 0 ] || { echo "slurm-local: start needs root (uid is $(id -u))" >&2; return 1; }
  local mode=$1 t0 reason; t0=$(date +%s%N)
  install_packages
  mkdir -p "$DIR"/{state,log,run} "$DIR/spool/slurmd-localhost" /etc/slurm
  if [ "$mode" = cluster ]; then
    if reason=$(namespaces_refused); then
      echo "$reason" > "$DIR/cluster-unavailable"
      log "no node namespaces here ($reason): one node only"
      return 3
    fi
    rm -f "$DIR/cluster-unavailable"
    start_network
  else
    [ -s "$DIR/cluster-unavailable" ] ||  # keep the reason a refused start-cluster left
      echo "started with \`$0 start\` (one node); \`$0 start-cluster\` starts the two nodes" > "$DIR/cluster-unavailable"
  fi
  if write_slurm_conf "$mode"; then
    log "config changed: restarting slurmctld and the slurmds"
    stop_slurm_daemons
  fi
  start_munge
  start_accounting
  start_slurm "$mode"
  log "ready ($mode) in $(( ($(date +%s%N) - t0) / 1000000 )) ms (logs: $DIR/log; stop: $0 stop)"
}

case "$ACTION" in
  start) start single ;;
  start-cluster) start cluster ;;
  start-for-tests)
    if [ "$(id -u)" != 0 ]; then
      echo "slurm-local: not starting Slurm: needs root (uid is $(id -u)); Slurm tests skip, or fail when CI is set" >&2
      exit 0
    fi
    # child processes: `set -e` does not apply inside a function used as a condition
    "$0" start-cluster && exit 0
    [ -s "$DIR/cluster-unavailable" ] && "$0" start && exit 0
    echo "slurm-local: Slurm did not start (logs: $DIR/log); Slurm tests skip, or fail when CI is set" >&2
    exit 0 ;;
  stop)
    for entry in $DAEMONS; do stop_daemon "${entry%%:*}" "${entry##*:}"; done
    stop_network
    log "stopped" ;;
  status)
    for entry in $DAEMONS; do
      pidfile=${entry%%:*} label=${entry##*:}
      case $pidfile in */slurmd-*.pid) label="slurmd ${pidfile##*/slurmd-}"; label=${label%.pid} ;; esac
      if daemon_up "$pidfile" "${entry##*:}"; then echo "$label: running (pid $(cat "$pidfile"))"
      else echo "$label: down"; fi
    done
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
      echo "network: bridge $BRIDGE $CONTROLLER_ADDR; $(for n in $CLUSTER_NODES; do printf '%s ' "$n=$(node_addr "$n") (netns $(netns_of "$n"))"; done)"
    else echo "network: no bridge (one node: \`$0 start\`)"; fi
    sinfo 2>/dev/null || true ;;
  *) echo "usage: $0 start|start-cluster|stop|status|start-for-tests" >&2; exit 2 ;;
esac
