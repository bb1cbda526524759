# shellcheck shell=bash
# Sourced by cluster.sh (and by controlplane.sh, for bin_of and args_of):
# running components as detached host processes with pid files, whatever the
# component. What each one is (binary, arguments, files,
# health check, fixed ports, environment) is defined by the files of its
# concern (controlplane.sh, node.sh, network.sh, addons.sh) as functions named
# ASPECT_COMPONENT, dashes as underscores: args_kube_apiserver, healthy_etcd, ...

# component ASPECT NAME [ARGS...]: runs ASPECT_NAME when NAME defines it.
component() {
	local f="$1_${2//-/_}"
	shift 2
	! declare -F "$f" >/dev/null || "$f" "$@"
}

# bin_of NAME: its program; a Kubernetes component's unless it says otherwise.
bin_of() {
	if declare -F "bin_${1//-/_}" >/dev/null; then
		"bin_${1//-/_}"
	else
		echo "$K8S_BIN/$1"
	fi
}
# args_of NAME: one argument per line.
args_of() { component args "$1"; }
# Files whose content is part of a component's identity: a change restarts it.
configs_of() { component configs "$1"; }
healthy() { component healthy "$1"; }
# ports_of NAME: "proto addr port" lines of the fixed ports it listens on.
ports_of() { component ports "$1"; }
# env_of NAME: VAR=value lines added to its environment.
env_of() { component env "$1"; }

spec_hash() {
	local name="$1" bin f
	bin="$(bin_of "$name")"
	{
		echo "$bin"
		stat -c '%s %Y' "$bin" 2>/dev/null || true
		args_of "$name"
		for f in $(configs_of "$name"); do
			cat "$f" 2>/dev/null || true
		done
	} | sha256sum | cut -d' ' -f1
}

# alive PID: the process exists and is not a zombie (this machine's init may
# reap orphans only every few seconds).
alive() {
	local st
	st="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)"
	[ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# not_alive PID...: none of them is alive.
not_alive() {
	local p
	for p in "$@"; do
		! alive "$p" || return 1
	done
}

# is_ours NAME PID: PID runs NAME's program (any build of it: the binary's
# file name is compared, not its path) for this cluster (its command line
# names $STATE/).
is_ours() {
	local name="$1" pid="$2" exe
	alive "$pid" || return 1
	exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
	exe="${exe% (deleted)}"
	[ -n "$exe" ] && [ "${exe##*/}" = "$(basename "$(bin_of "$name")")" ] || return 1
	tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$STATE/"
}

# pid_of NAME: the pid from the pid file if that process is still ours.
pid_of() {
	local name="$1" pid
	pid="$(cat "$RUN/$name.pid" 2>/dev/null || true)"
	[[ "$pid" =~ ^[0-9]+$ ]] || return 0
	if is_ours "$name" "$pid"; then
		echo "$pid"
	fi
}

# The log lines of NAME's current run.
since_last_start() {
	awk -v h="==== " -v n="starting $1" 'index($0, h) == 1 && index($0, n) { buf = ""; next } { buf = buf $0 "\n" } END { printf "%s", buf }' "$LOGS/$1.log" 2>/dev/null
}

# check_ports NAME: fails when a fixed port of NAME is taken by another
# process; a leftover of ours (its command line names $STATE) is killed.
check_ports() {
	local name="$1" proto addr port line pid cmd
	while read -r proto addr port; do
		[ -n "$proto" ] || continue
		while read -r line; do
			[ -n "$line" ] || continue
			pid="$(sed -n 's/.*pid=\([0-9]*\).*/\1/p' <<<"$line" | head -1)"
			cmd=""
			[ -z "$pid" ] || cmd="$(tr '\0\n' '  ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-120 || true)"
			if [ -n "$pid" ] && [[ "$cmd" == *"$STATE"* ]]; then
				warn "port $proto/$port is held by a leftover process of this cluster (pid $pid: ${cmd:0:100}); killing it"
				kill -KILL "$pid" 2>/dev/null || true
				wait_until 10 not_alive "$pid" || true
				continue
			fi
			die "$name needs $proto port $addr:$port, but it is in use by ${cmd:-another process} (${line}); stop that process or free the port, then rerun"
		done < <(listeners "$proto" "$addr" "$port")
	done < <(ports_of "$name")
}
# listeners PROTO ADDR PORT: ss lines of sockets that would clash with ADDR:PORT.
listeners() {
	local flag=-Hltnp
	[ "$1" = udp ] && flag=-Hlunp
	ss "$flag" 2>/dev/null | awk -v a="$2" -v p="$3" '{
		n = split($4, parts, ":"); port = parts[n]
		host = substr($4, 1, length($4) - length(port) - 1)
		gsub(/[\[\]]/, "", host); sub(/%.*/, "", host)
		if (port == p && (host == a || host == "0.0.0.0" || host == "*" || host == "::" || host == "::ffff:" a)) print
	}'
}

# start_proc NAME: starts NAME detached (own session), logs to $LOGS/NAME.log.
start_proc() {
	local name="$1" bin args=() envs=(PATH="$DAEMON_PATH" HOME="${HOME:-/root}" LANG=C.UTF-8)
	bin="$(bin_of "$name")"
	mapfile -t args < <(args_of "$name")
	mapfile -t -O "${#envs[@]}" envs < <(env_of "$name")
	{
		echo "==== $(date -Is) cluster.sh starting $name"
		printf '%q ' "$bin" "${args[@]}"
		echo
	} >>"$LOGS/$name.log"
	# setsid: survives the caller's terminal and process group; fd 8 (our
	# lock) is not inherited.
	env -i "${envs[@]}" setsid "$bin" "${args[@]}" </dev/null >>"$LOGS/$name.log" 2>&1 8>&- &
	echo $! >"$RUN/$name.pid"
	spec_hash "$name" >"$RUN/$name.hash"
}

stop_proc() {
	local name="$1" pid grace="${2:-10}"
	pid="$(pid_of "$name")"
	if [ -n "$pid" ]; then
		kill -TERM "$pid" 2>/dev/null || true
		if ! wait_until "$grace" not_alive "$pid"; then
			warn "$name (pid $pid) did not stop in ${grace}s; killing it"
			kill -KILL "$pid" 2>/dev/null || true
			wait_until 5 not_alive "$pid" || true
		fi
	fi
	rm -f "$RUN/$name.pid" "$RUN/$name.hash"
}

# stop_many NAME...: SIGTERM to all at once, then waits (SIGKILL after 10 s).
stop_many() {
	local name pid pids=() names=()
	for name in "$@"; do
		pid="$(pid_of "$name")"
		if [ -n "$pid" ]; then
			pids+=("$pid")
			names+=("$name")
			kill -TERM "$pid" 2>/dev/null || true
		fi
		rm -f "$RUN/$name.pid" "$RUN/$name.hash"
	done
	[ "${#pids[@]}" -gt 0 ] || return 0
	log "stopping ${names[*]}"
	if ! wait_until 10 not_alive "${pids[@]}"; then
		warn "still running after 10s, killing: $(for p in "${pids[@]}"; do alive "$p" && printf '%s ' "$p"; done)"
		for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
		wait_until 5 not_alive "${pids[@]}" || true
	fi
}

log_tail() {
	local name="$1" n="${2:-40}"
	if [ -f "$LOGS/$name.log" ]; then
		echo "---- last $n lines of $LOGS/$name.log ----" >&2
		tail -n "$n" "$LOGS/$name.log" >&2
		echo "----" >&2
	fi
}

# ensure_proc NAME: leaves a healthy instance with the current spec alone,
# (re)starts it otherwise. Does not wait; see await_proc.
ensure_proc() {
	local name="$1" pid
	pid="$(pid_of "$name")"
	if [ -n "$pid" ]; then
		if [ "$(cat "$RUN/$name.hash" 2>/dev/null)" != "$(spec_hash "$name")" ]; then
			log "$name: configuration changed; restarting (pid $pid)"
			stop_proc "$name"
		elif healthy "$name" || wait_until 15 healthy "$name"; then
			log "$name: already running (pid $pid)"
			return 0
		else
			warn "$name (pid $pid) is running but not healthy; restarting it"
			stop_proc "$name"
		fi
	else
		rm -f "$RUN/$name.pid"
	fi
	kill_strays "$name"
	check_ports "$name"
	log "$name: starting"
	start_proc "$name"
}

# kill_strays NAME: kills instances of NAME's binary that belong to this
# cluster (their command line names $STATE) but are not in the pid file,
# e.g. left by an `up` killed between start and pid file.
kill_strays() {
	local name="$1" pid cmd keep
	keep="$(pid_of "$name")"
	for pid in $(pgrep -f -- "$STATE/" 2>/dev/null || true); do
		[ "$pid" != "$keep" ] || continue
		is_ours "$name" "$pid" || continue
		cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
		warn "killing a stray $name of this cluster (pid $pid: ${cmd:0:100})"
		kill -KILL "$pid" 2>/dev/null || true
		wait_until 10 not_alive "$pid" || true
	done
}

# await_proc NAME TIMEOUT: waits until NAME is healthy; fails with its log.
await_proc() {
	local name="$1" timeout="$2" start pid
	start=$(date +%s)
	while :; do
		pid="$(pid_of "$name")"
		if [ -z "$pid" ]; then
			log_tail "$name"
			die "$name exited during startup (log: $LOGS/$name.log)"
		fi
		healthy "$name" && break
		if [ $(($(date +%s) - start)) -ge "$timeout" ]; then
			log_tail "$name"
			die "$name (pid $pid) not healthy after ${timeout}s (log: $LOGS/$name.log)"
		fi
		sleep 0.2
	done
}
