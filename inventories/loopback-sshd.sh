#!/usr/bin/env bash
# The loopback fleet of inventories/loopback.yaml: one OpenSSH sshd per loopback address
# (127.0.0.2, 127.0.0.3, ...), each standing in for a host. As your own user, no root needed.
#
#   bash inventories/loopback-sshd.sh          # start (or say it already runs), then check one login
#   bash inventories/loopback-sshd.sh stop     # stop the sshd processes this script started
#
# Everything lives in one folder (keys, authorized_keys, pid files, logs): nothing is written to
# ~/.ssh, so it works on a fresh machine and leaves your account as it was. Every step is checked:
# a port that is already taken, a bad option or a login that fails ends the script with a non-zero
# exit status and says why (sshd forks into the background BEFORE it binds, so its own exit status
# says nothing; the pid file, written only once it listens, does).
#
# Settings (environment): FEDCTL_SSHD_DIR (/tmp/fedctl-sshd), FEDCTL_SSHD_PORT (2222),
# FEDCTL_SSHD_HOSTS (the last byte of each address: "2 3 4 5"), SSHD (/usr/sbin/sshd; an absolute
# path, sshd re-executes itself).
set -euo pipefail

DIR=${FEDCTL_SSHD_DIR:-/tmp/fedctl-sshd}
PORT=${FEDCTL_SSHD_PORT:-2222}
HOSTS=${FEDCTL_SSHD_HOSTS:-2 3 4 5}
SSHD=${SSHD:-/usr/sbin/sshd}
WAIT_S=10

die() { echo "loopback-sshd: $*" >&2; exit 1; }

# the pid in a pid file when that process is alive and is an sshd; nothing otherwise
live_pid() {
  local f=$1 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  case $pid in ''|*[!0-9]*) return 0 ;; esac
  if kill -0 "$pid" 2>/dev/null && grep -q sshd "/proc/$pid/cmdline" 2>/dev/null; then echo "$pid"; fi
}

stop() {
  local i f pid
  for i in $HOSTS; do
    f="$DIR/sshd-$i.pid"
    pid=$(live_pid "$f")
    # only a process started from this folder: its command line names our host key
    if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$DIR/host_key"; then
      kill "$pid" && echo "stopped sshd on 127.0.0.$i:$PORT (pid $pid)"
    fi
    rm -f "$f"
  done
}

start() {
  [ -x "$SSHD" ] || die "$SSHD not found: install OpenSSH's server (e.g. apt-get install openssh-server)"
  command -v ssh-keygen >/dev/null || die "ssh-keygen not found: install OpenSSH's client"
  case $PORT in ''|*[!0-9]*) die "FEDCTL_SSHD_PORT must be a port number, got '$PORT'" ;; esac
  mkdir -p "$DIR"
  chmod 700 "$DIR"
  # sshd's privilege separation folder; only root can make it, and only root needs it made here
  if [ "$(id -u)" = 0 ]; then mkdir -p -m 755 /run/sshd; fi
  [ -f "$DIR/host_key" ] || ssh-keygen -q -t ed25519 -N '' -C fedctl-loopback-host -f "$DIR/host_key"
  [ -f "$DIR/client_key" ] || ssh-keygen -q -t ed25519 -N '' -C fedctl-loopback-client -f "$DIR/client_key"
  cp "$DIR/client_key.pub" "$DIR/authorized_keys"
  chmod 600 "$DIR/authorized_keys"

  local i f pid opts
  for i in $HOSTS; do
    f="$DIR/sshd-$i.pid"
    pid=$(live_pid "$f")
    if [ -n "$pid" ]; then echo "sshd on 127.0.0.$i:$PORT already runs (pid $pid)"; continue; fi
    rm -f "$f" "$DIR/sshd-$i.log"
    opts=(-f /dev/null -h "$DIR/host_key" -o "ListenAddress=127.0.0.$i:$PORT" -o "PidFile=$f"
          -o "AuthorizedKeysFile=$DIR/authorized_keys" -o StrictModes=no -o PasswordAuthentication=no
          -o KbdInteractiveAuthentication=no -o UsePAM=no -o PermitRootLogin=prohibit-password
          -o "Subsystem sftp internal-sftp"   # fedctl copies files over SFTP
          -E "$DIR/sshd-$i.log")
    "$SSHD" -t "${opts[@]}" || die "sshd refused its options (above)"
    "$SSHD" "${opts[@]}" || die "sshd on 127.0.0.$i:$PORT did not start; see $DIR/sshd-$i.log"
    # listening: sshd writes the pid file after it binds and exits when it cannot bind
    local waited=0
    until [ -n "$(live_pid "$f")" ]; do
      if [ "$waited" -ge $((WAIT_S * 10)) ] || grep -qiE "fatal|cannot bind|bind to port" "$DIR/sshd-$i.log" 2>/dev/null; then
        echo "loopback-sshd: sshd on 127.0.0.$i:$PORT is not listening (address or port taken?):" >&2
        cat "$DIR/sshd-$i.log" >&2 2>/dev/null || true
        die "stopped at 127.0.0.$i; stop the ones already started with: bash $0 stop"
      fi
      sleep 0.1
      waited=$((waited + 1))
    done
    echo "sshd on 127.0.0.$i:$PORT (pid $(live_pid "$f"))"
  done

  # one real login, the way fedctl logs in (the key, no password, a host key pinned in this folder)
  local first=${HOSTS%% *}
  ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -i "$DIR/client_key" \
      -o UserKnownHostsFile="$DIR/known_hosts" -o StrictHostKeyChecking=accept-new \
      -o ConnectTimeout=10 -o LogLevel=ERROR -p "$PORT" "127.0.0.$first" true \
    || die "cannot log in to 127.0.0.$first:$PORT with $DIR/client_key; see $DIR/sshd-$first.log"
  echo "ok: log in with: ssh -p $PORT -i $DIR/client_key 127.0.0.$first"
}

case ${1:-start} in
  start) start ;;
  stop) stop ;;
  *) die "usage: $0 [start|stop]" ;;
esac
