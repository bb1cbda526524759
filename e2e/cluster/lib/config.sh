# shellcheck shell=bash
# Sourced by cluster.sh and controlplane.sh: addresses, ports, paths and
# versions; the one place they are set.

REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
BUILD_TOOLS="$REPO_ROOT/e2e/tools/build-tools.sh"

CACHE="${GEODB_CACHE:-$HOME/.cache/geodb}"
STATE="${GEODB_CLUSTER_DIR:-/var/lib/geodb-cluster}"
STATE="${STATE%/}"
# containerd's state, socket and runc root (runtime data, not persistent).
CTRD_RUN=/run/geodb-containerd
CTRD_SOCK="$CTRD_RUN/containerd.sock"
LOCK_FILE=/run/geodb-cluster.lock

K8S_VERSION=v1.34.4
ETCD_VERSION=v3.6.16
COREDNS_VERSION=v1.15.0
K8S_BIN="$CACHE/k8s-$K8S_VERSION"
ETCD_BIN="$CACHE/etcd-$ETCD_VERSION/etcd"
COREDNS_BIN="$CACHE/coredns-$COREDNS_VERSION/coredns"
PROVISIONER_BIN="$CACHE/provisioner/provisioner"
IMAGES_DIR="$CACHE/images"
# Images this script builds itself (kept out of $IMAGES_DIR, which is another
# producer's).
OWN_IMAGES_DIR="$CACHE/cluster-images"
PAUSE_IMAGE=geodb.local/pause:3.10
TEST_IMAGE=geodb/busybox:test

NODE_NAME=geodb-node
NODE_DEV=geodb0
NODE_IP=10.200.0.1
API_PORT=6443
SERVICE_CIDR=10.96.0.0/16
API_SVC_IP=10.96.0.1
DNS_SVC_IP=10.96.0.10
POD_CIDR=10.88.0.0/16
POD_GW=10.88.0.1
CNI_BRIDGE=geodb-cni0
CNI_NET=geodb
CLUSTER_DOMAIN=cluster.local
PROVISIONER_NAME=geodb.io/local
SERVER="https://$NODE_IP:$API_PORT"

ETCD_CLIENT_PORT=2379
ETCD_PEER_PORT=2380
KCM_PORT=10257
SCHED_PORT=10259
KUBELET_PORT=10250
KUBELET_HEALTHZ_PORT=10248
PROXY_METRICS_PORT=10249
PROXY_HEALTHZ_PORT=10256
DNS_HEALTH_PORT=18080
DNS_READY_PORT=18181

PKI="$STATE/pki"
LOGS="$STATE/logs"
RUN="$STATE/run"
KCFG="$STATE/kubeconfigs"
ADMIN_KUBECONFIG="$STATE/kubeconfig"
KUBELET_ROOT="$STATE/kubelet"
POD_LOGS="$STATE/pod-logs"
VOLUMES="$STATE/volumes"
CNI_CONF_DIR="$STATE/cni/net.d"
CNI_IPAM_DIR="$STATE/cni/ipam"
CTRD_ROOT="$STATE/containerd"
IMPORTED_DB="$STATE/images.imported"
SYSCTL_ORIG="$STATE/sysctl.orig"
CNI_BIN_DIR=/usr/lib/cni
CNI_CACHE_DIR=/var/lib/cni

# Knobs of the control plane's command lines (lib/controlplane.sh); the
# throwaway control plane of controlplane.sh sets them otherwise.
KCM_KUBECONFIG="$KCFG/kube-controller-manager.kubeconfig"
KCM_SA_CREDENTIALS=true
KCM_CONTROLLERS='*'
APISERVER_EXTRA_ARGS=()
KCM_EXTRA_ARGS=()
# etcd's --snapshot-count when set (default: etcd's own, 10,000).
ETCD_SNAPSHOT_COUNT="${GEODB_ETCD_SNAPSHOT_COUNT:-}"

# In start order. `down` stops them in reverse.
COMPONENTS=(etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy coredns provisioner s3)

# Sysctls that we, kubelet (protectKernelDefaults=false) or kube-proxy change;
# their values before `up` are restored by `down`.
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
	vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
	kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet)

# Our own clients talk to our own addresses directly, never through a proxy.
export NO_PROXY="${NO_PROXY:+$NO_PROXY,}$NODE_IP,127.0.0.1,localhost"
export no_proxy="$NO_PROXY"
DAEMON_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
