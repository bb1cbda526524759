# shellcheck shell=bash
# Sourced by cluster.sh: `down`, which stops everything and removes every
# trace: processes, pods, mounts, network namespaces, interfaces, iptables
# chains, sysctls, files.

# Mount points under our directories (and our pods' network namespaces),
# deepest first.
our_mounts() {
	# (mountinfo escapes blanks as \040; our paths have none.)
	awk '{ print $5 }' /proc/self/mountinfo | while IFS= read -r m; do
		case "$m" in
		"$STATE" | "$STATE"/* | "$CTRD_RUN" | "$CTRD_RUN"/*) echo "$m" ;;
		esac
	done | awk '{ print length($0) "\t" $0 }' | sort -rn -k1,1 | cut -f2- | uniq
}

unmount_ours() {
	local m
	for _ in 1 2 3; do
		local left=0
		while IFS= read -r m; do
			[ -n "$m" ] || continue
			left=1
			umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || warn "cannot unmount $m"
		done < <(our_mounts)
		[ "$left" -eq 1 ] || return 0
	done
	[ -z "$(our_mounts)" ] || warn "mounts left: $(our_mounts | tr '\n' ' ')"
}

# Our pods' network namespaces: the ones containerd made for sandboxes whose
# eth0 has an address in $POD_CIDR on our bridge, plus the ones recorded in
# our containerd's sandbox specs.
our_netns() {
	local ns
	for ns in /run/netns/cni-*; do
		[ -e "$ns" ] || continue
		if grep -qF "$ns" <<<"${NETNS_FROM_CTRD:-}"; then
			echo "$ns"
			continue
		fi
		if nsenter --net="$ns" ip -4 -o addr show 2>/dev/null | awk '{print $4}' | grep -q "^${POD_CIDR%.*.*}\."; then
			echo "$ns"
		fi
	done
}

kill_cgroup_procs() {
	# Every container process of our pods lives under the kubepods cgroup.
	local hier dir pid
	for hier in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods /sys/fs/cgroup/unified/kubepods; do
		[ -d "$hier" ] || continue
		while IFS= read -r dir; do
			while IFS= read -r pid; do
				[ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
			done <"$dir/cgroup.procs"
		done < <(find "$hier" -type d 2>/dev/null)
	done
}

remove_cgroups() {
	local hier
	for hier in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods /sys/fs/cgroup/unified/kubepods; do
		[ -d "$hier" ] || continue
		find "$hier" -depth -type d -exec rmdir {} \; 2>/dev/null || true
		[ ! -d "$hier" ] || warn "cgroup $hier could not be removed (processes left?)"
	done
}

# Removes KUBE-*, CNI-* and GEODB-* chains and every rule that jumps to them
# (kube-proxy, kubelet, the CNI bridge/portmap plugins, us), table by table.
cleanup_iptables() {
	local save restore table dump filtered
	for save in iptables-save ip6tables-save; do
		command -v "$save" >/dev/null 2>&1 || continue
		restore="${save%-save}-restore"
		for table in filter nat mangle raw; do
			dump="$("$save" -t "$table" 2>/dev/null)" || continue
			grep -qE '(KUBE-|CNI-|GEODB-)' <<<"$dump" || continue
			filtered="$(grep -vE '^:(KUBE-|CNI-|GEODB-)|^-A (KUBE-|CNI-|GEODB-)|-j (KUBE-|CNI-|GEODB-)|-g (KUBE-|CNI-|GEODB-)' <<<"$dump")"
			if ! "$restore" -w 5 -T "$table" <<<"$filtered" 2>/dev/null; then
				"$restore" -T "$table" <<<"$filtered" || warn "$restore of table $table failed"
			fi
		done
	done
}

cmd_down() {
	need_root down
	take_lock
	phase "stop components"
	NETNS_FROM_CTRD=""
	# kubelet first, so that it does not react to the others going away.
	stop_many kubelet
	stop_many s3 provisioner coredns kube-proxy kube-scheduler kube-controller-manager kube-apiserver
	stop_many etcd
	phase "stop containers and containerd"
	if [ -n "$(pid_of containerd)" ] && containerd_healthy; then
		# Sandbox network namespaces, for the network cleanup below.
		NETNS_FROM_CTRD="$(ctr_k8s containers ls -q 2>/dev/null | while read -r id; do
			ctr_k8s containers info "$id" 2>/dev/null | grep -o '/var/run/netns/cni-[0-9a-f-]*\|/run/netns/cni-[0-9a-f-]*'
		done | sed 's#^/var/run/#/run/#' | sort -u || true)"
		local t
		for t in $(ctr_k8s tasks ls -q 2>/dev/null); do
			ctr_k8s tasks kill -a -s SIGKILL "$t" >/dev/null 2>&1 || true
		done
	fi
	[ -n "$(pid_of containerd)" ] && log "stopping containerd"
	stop_proc containerd 10
	kill_cgroup_procs
	# Shims of our containerd (their command line names our socket).
	local pid
	for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $CTRD_SOCK" 2>/dev/null || true); do
		kill -KILL "$pid" 2>/dev/null || true
	done
	# Leftover components whose pid files were lost (e.g. a killed `up`).
	local c
	for c in "${COMPONENTS[@]}"; do
		kill_strays "$c"
	done
	if command -v runc >/dev/null 2>&1 && [ -d "$CTRD_RUN/runc" ]; then
		local root id
		for root in "$CTRD_RUN"/runc/*; do
			[ -d "$root" ] || continue
			for id in $(runc --root "$root" list -q 2>/dev/null); do
				runc --root "$root" delete -f "$id" >/dev/null 2>&1 || true
			done
		done
	fi
	remove_cgroups

	phase "network namespaces, interfaces, iptables"
	local ns
	while IFS= read -r ns; do
		[ -n "$ns" ] || continue
		ip netns delete "$(basename "$ns")" 2>/dev/null || { umount "$ns" 2>/dev/null; rm -f "$ns"; }
	done < <(our_netns)
	local dev
	# veths left on our bridge (their netns is gone or was not found).
	for dev in $(ip -o link show master "$CNI_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
		ip link delete "$dev" 2>/dev/null || true
	done
	for dev in "$CNI_BRIDGE" "$NODE_DEV"; do
		if ip link show "$dev" >/dev/null 2>&1; then
			ip link delete "$dev" || warn "cannot delete the interface $dev"
		fi
	done
	cleanup_iptables
	# libcni's cached results of our sandboxes (bridge and containerd's loopback).
	rm -f "$CNI_CACHE_DIR/results/$CNI_NET-"* 2>/dev/null || true
	local sb
	for sb in "$CTRD_ROOT"/root/io.containerd.grpc.v1.cri/sandboxes/*; do
		[ -d "$sb" ] || continue
		rm -f "$CNI_CACHE_DIR/results/cni-loopback-$(basename "$sb")-lo"
	done
	rmdir "$CNI_CACHE_DIR/results" "$CNI_CACHE_DIR" 2>/dev/null || true
	restore_sysctls

	phase "mounts and files"
	unmount_ours
	# kubelet's /var/log/containers symlinks into our pod log dir.
	local l
	for l in /var/log/containers/*.log; do
		[ -L "$l" ] || continue
		case "$(readlink "$l")" in "$POD_LOGS"/*) rm -f "$l" ;; esac
	done
	rmdir /var/log/containers 2>/dev/null || true
	if [ -n "$(our_mounts)" ]; then
		die "mounts remain under $STATE or $CTRD_RUN; not deleting the files (see: findmnt | grep -e $STATE -e $CTRD_RUN)"
	fi
	rm -rf "$STATE" "$CTRD_RUN"
	phase_end
	print_timings
	log "cluster is down; all state removed"
}
