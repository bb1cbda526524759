#!/usr/bin/env bash
# Smoke test of the cluster started by e2e/cluster/cluster.sh up.
#
# Usage: e2e/cluster/smoke.sh
#
# In a fresh namespace, with the test image geodb/busybox:test (Debian's
# busybox-static as /bin/busybox, built once and cached by `cluster.sh
# test-image`), all pods non-root (uid 1000) with seccomp RuntimeDefault:
#   1. a PVC of the default StorageClass is provisioned dynamically by the
#      cluster's provisioner;
#   2. pod `server` resolves kubernetes.default.svc.cluster.local, reaches the
#      apiserver over its ClusterIP (port 443), writes a page to the PVC and
#      serves it with busybox httpd behind Service `web`;
#   3. pod `client` fetches that page by the Service's DNS name;
#   4. deleting the namespace releases the PV and the provisioner removes it
#      and its directory.
# Exits non-zero with pods, events and logs printed on failure. Polls with
# deadlines; no fixed sleeps.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLUSTER="$SCRIPT_DIR/cluster.sh"
NS=geodb-smoke
IMAGE=geodb/busybox:test
T0=$(date +%s.%N)

log() { printf '%s smoke: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

KUBECONFIG="$(bash "$CLUSTER" kubeconfig)" || {
	log "no cluster: run $CLUSTER up first"
	exit 1
}
export KUBECONFIG
export NO_PROXY="${NO_PROXY:+$NO_PROXY,}10.200.0.1,127.0.0.1,localhost"
kc() { kubectl --request-timeout=20s "$@"; }

# The original stderr: dump may run inside a polled (silenced) check.
exec 3>&2
dump() {
	set +e
	exec 1>&3 2>&3
	echo "================ smoke test FAILED: $* ================" >&2
	echo "---- pods ----" >&2
	kc -n "$NS" get pods,pvc,svc,endpointslices -o wide >&2
	kc get pv -o wide >&2
	echo "---- events ----" >&2
	kc -n "$NS" get events --sort-by=.lastTimestamp >&2
	local p
	for p in $(kc -n "$NS" get pods -o name 2>/dev/null); do
		echo "---- describe $p ----" >&2
		kc -n "$NS" describe "$p" | tail -25 >&2
		echo "---- logs $p ----" >&2
		kc -n "$NS" logs "$p" --all-containers >&2
	done
	local state="${GEODB_CLUSTER_DIR:-/var/lib/geodb-cluster}"
	echo "---- provisioner log (tail) ----" >&2
	tail -n 15 "$state/logs/provisioner.log" >&2
	echo "---- kubelet log (errors, tail) ----" >&2
	grep -E '^E' "$state/logs/kubelet.log" | tail -n 15 >&2
	exit 1
}

# wait_for DESCRIPTION TIMEOUT CMD...: polls CMD every 0.5 s until it succeeds.
wait_for() {
	local what="$1" timeout="$2" start
	shift 2
	start=$(date +%s)
	until "$@" >/dev/null 2>&1; do
		[ $(($(date +%s) - start)) -lt "$timeout" ] || dump "timed out after ${timeout}s waiting for $what"
		sleep 0.5
	done
	log "$what ($(($(date +%s) - start))s)"
}
phase_of() { kc -n "$NS" get pod "$1" -o 'jsonpath={.status.phase}' 2>/dev/null; }
# pod_done POD: succeeds when POD Succeeded; a Failed pod fails the test.
pod_done() {
	case "$(phase_of "$1")" in
	Succeeded) return 0 ;;
	Failed) dump "pod $1 failed" ;;
	*) return 1 ;;
	esac
}
pod_ready() {
	[ "$(phase_of "$1")" != Failed ] || dump "pod $1 failed"
	[ "$(kc -n "$NS" get pod "$1" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
ns_gone() { ! kc get namespace "$NS" >/dev/null 2>&1; }
pv_gone() { ! kc get pv "$1" >/dev/null 2>&1; }

bash "$CLUSTER" status >/dev/null || {
	bash "$CLUSTER" status >&2 || true
	log "the cluster is not healthy: run $CLUSTER up"
	exit 1
}
bash "$CLUSTER" test-image

if kc get namespace "$NS" >/dev/null 2>&1; then
	log "removing namespace $NS left by an earlier run"
	kc delete namespace "$NS" --wait=false >/dev/null
	wait_for "old namespace $NS gone" 120 ns_gone
fi
kc create namespace "$NS" >/dev/null
wait_for "default ServiceAccount in $NS" 30 kc -n "$NS" get serviceaccount default

kc -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
spec:
  # No storageClassName: the default class (standard) must be used.
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 16Mi
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: smoke-server
  ports:
  - name: http
    port: 80
    targetPort: 8080
---
apiVersion: v1
kind: Pod
metadata:
  name: server
  labels:
    app: smoke-server
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    runAsGroup: 1000
    fsGroup: 1000
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: server
    image: $IMAGE
    imagePullPolicy: Never
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL]}
    command:
    - /bin/busybox
    - sh
    - -c
    - |
      set -eu
      bb=/bin/busybox
      echo "uid=\$(\$bb id -u) gid=\$(\$bb id -g) groups=\$(\$bb id -G)"
      \$bb nslookup kubernetes.default.svc.cluster.local
      # The apiserver through its ClusterIP, port 443 (anonymous /healthz).
      # (busybox timeout, not wget -T: busybox 1.35 wget -T segfaults on https)
      \$bb timeout 15 \$bb wget -q -O - --no-check-certificate https://kubernetes.default.svc.cluster.local:443/healthz
      echo " <- apiserver /healthz via ClusterIP"
      echo "hello from \$(\$bb hostname), written to the PVC" > /data/index.html
      \$bb cat /data/index.html
      \$bb ls -ln /data
      echo serving
      exec \$bb httpd -f -vv -p 8080 -h /data
    ports:
    - containerPort: 8080
    readinessProbe:
      httpGet: {path: /index.html, port: 8080}
      periodSeconds: 1
    volumeMounts:
    - name: data
      mountPath: /data
  volumes:
  - name: data
    persistentVolumeClaim:
      claimName: data
EOF
log "created PVC data, Service web and pod server in namespace $NS"

wait_for "PVC data bound (dynamic provisioning)" 90 \
	bash -c "[ \"\$(kubectl -n $NS get pvc data -o jsonpath='{.status.phase}')\" = Bound ]"
PV="$(kc -n "$NS" get pvc data -o 'jsonpath={.spec.volumeName}')"
BY="$(kc get pv "$PV" -o 'jsonpath={.metadata.annotations.pv\.kubernetes\.io/provisioned-by}')"
PV_PATH="$(kc get pv "$PV" -o 'jsonpath={.spec.local.path}')"
SC="$(kc get pv "$PV" -o 'jsonpath={.spec.storageClassName}')"
[ "$BY" = geodb.io/local ] || dump "PV $PV was provisioned by '$BY', not geodb.io/local"
[ "$SC" = standard ] || dump "PV $PV has StorageClass '$SC', expected the default class standard"
log "PV $PV (class $SC, by $BY) at $PV_PATH"

wait_for "pod server Ready (DNS, apiserver ClusterIP, PVC write, httpd)" 120 pod_ready server
if [ -d "$PV_PATH" ]; then
	grep -q 'written to the PVC' "$PV_PATH/index.html" || dump "the page is not in the volume directory $PV_PATH"
fi

kc -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: client
    image: $IMAGE
    imagePullPolicy: Never
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL]}
    command:
    - /bin/busybox
    - sh
    - -c
    - |
      set -eu
      bb=/bin/busybox
      \$bb nslookup web.$NS.svc.cluster.local
      page=\$(\$bb timeout 15 \$bb wget -q -O - http://web.$NS.svc.cluster.local/index.html)
      echo "got: \$page"
      case "\$page" in *"written to the PVC"*) echo client-ok ;; *) exit 1 ;; esac
EOF
wait_for "pod client fetched the page via http://web.$NS.svc.cluster.local" 90 pod_done client
kc -n "$NS" logs client | grep -q client-ok || dump "pod client did not print client-ok"
kc -n "$NS" logs server | grep -q 'apiserver /healthz via ClusterIP' || dump "pod server did not reach the apiserver"

log "deleting the pods, the PVC and namespace $NS (the PV must be reclaimed)"
kc -n "$NS" delete pod --all --grace-period=1 --wait=false >/dev/null
kc -n "$NS" delete pvc data --wait=false >/dev/null
wait_for "PV $PV deleted by the provisioner" 90 pv_gone "$PV"
kc delete namespace "$NS" --wait=false >/dev/null
wait_for "namespace $NS deleted" 120 ns_gone
if [ -n "$PV_PATH" ] && [ -e "$PV_PATH" ]; then
	dump "the volume directory $PV_PATH still exists after its PV was deleted"
fi
log "PASSED in $(elapsed "$T0")s"
