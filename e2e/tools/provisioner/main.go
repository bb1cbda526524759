// Command provisioner is the dynamic volume provisioner of the geodb e2e
// cluster (e2e/cluster/cluster.sh). For every PersistentVolumeClaim of a
// StorageClass whose provisioner is -name (default geodb.io/local) it creates
// a directory under -base-dir and a `local` PersistentVolume pinned to the
// node; when such a PV is released with reclaimPolicy Delete it removes the
// directory. It also acts as the external resizer of its volumes: a directory
// has no size, so expanding a claim only records the new capacity on the PV
// and the claim.
//
// StorageClass parameters (all optional):
//
//	mode: octal permissions of a new directory (default "0777", so any pod
//	      user can write; kubelet also applies the pod's fsGroup)
//	uid, gid: owner of a new directory (default: unchanged, root)
//	sized: "true" mounts a tmpfs of the claim's size on the directory, so
//	      the volume really fills up (the disk-usage alert is tested on
//	      one); expanding the claim grows the tmpfs. Its data lives in
//	      memory: for small test volumes only.
//
// Built by e2e/tools/build-tools.sh (component `provisioner`).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v11/controller"
)

const provisionedByAnn = "pv.kubernetes.io/provisioned-by"

type dirProvisioner struct {
	baseDir  string
	nodeName string
}

var _ controller.Provisioner = &dirProvisioner{}

func (p *dirProvisioner) Provision(ctx context.Context, opts controller.ProvisionOptions) (*v1.PersistentVolume, controller.ProvisioningState, error) {
	pvc := opts.PVC
	if pvc.Spec.VolumeMode != nil && *pvc.Spec.VolumeMode == v1.PersistentVolumeBlock {
		return nil, controller.ProvisioningFinished, errors.New("block volumes are not supported, only Filesystem")
	}
	if pvc.Spec.Selector != nil {
		return nil, controller.ProvisioningFinished, errors.New("claims with a selector are not supported")
	}
	node := p.nodeName
	if opts.SelectedNode != nil {
		node = opts.SelectedNode.Name
	}
	mode := os.FileMode(0o777)
	uid, gid := -1, -1
	sized := false
	for k, v := range opts.StorageClass.Parameters {
		switch strings.ToLower(k) {
		case "mode":
			m, err := strconv.ParseUint(v, 8, 32)
			if err != nil {
				return nil, controller.ProvisioningFinished, fmt.Errorf("StorageClass parameter mode=%q: %v", v, err)
			}
			mode = os.FileMode(m)
		case "uid", "gid":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return nil, controller.ProvisioningFinished, fmt.Errorf("StorageClass parameter %s=%q: not a non-negative integer", k, v)
			}
			if strings.ToLower(k) == "uid" {
				uid = n
			} else {
				gid = n
			}
		case "sized":
			sized = v == "true"
		default:
			return nil, controller.ProvisioningFinished, fmt.Errorf("unknown StorageClass parameter %q", k)
		}
	}

	path := filepath.Join(p.baseDir, fmt.Sprintf("%s_%s_%s", pvc.Namespace, pvc.Name, opts.PVName))
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, controller.ProvisioningInBackground, fmt.Errorf("creating %s: %v", path, err)
	}
	if sized {
		request := pvc.Spec.Resources.Requests[v1.ResourceStorage]
		if err := mountSized(path, request.Value(), false); err != nil {
			return nil, controller.ProvisioningInBackground, err
		}
	}
	// Chmod after mkdir: the umask does not apply.
	if err := os.Chmod(path, mode); err != nil {
		return nil, controller.ProvisioningInBackground, fmt.Errorf("chmod %s: %v", path, err)
	}
	if uid >= 0 || gid >= 0 {
		if err := os.Chown(path, uid, gid); err != nil {
			return nil, controller.ProvisioningInBackground, fmt.Errorf("chown %s: %v", path, err)
		}
	}

	reclaim := v1.PersistentVolumeReclaimDelete
	if opts.StorageClass.ReclaimPolicy != nil {
		reclaim = *opts.StorageClass.ReclaimPolicy
	}
	fs := v1.PersistentVolumeFilesystem
	pv := &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:   opts.PVName,
			Labels: map[string]string{"geodb.io/provisioner": "local", "geodb.io/sized": strconv.FormatBool(sized)},
		},
		Spec: v1.PersistentVolumeSpec{
			PersistentVolumeReclaimPolicy: reclaim,
			AccessModes:                   pvc.Spec.AccessModes,
			MountOptions:                  opts.StorageClass.MountOptions,
			VolumeMode:                    &fs,
			Capacity: v1.ResourceList{
				v1.ResourceStorage: pvc.Spec.Resources.Requests[v1.ResourceStorage],
			},
			PersistentVolumeSource: v1.PersistentVolumeSource{
				Local: &v1.LocalVolumeSource{Path: path},
			},
			NodeAffinity: &v1.VolumeNodeAffinity{
				Required: &v1.NodeSelector{
					NodeSelectorTerms: []v1.NodeSelectorTerm{{
						MatchExpressions: []v1.NodeSelectorRequirement{{
							Key:      "kubernetes.io/hostname",
							Operator: v1.NodeSelectorOpIn,
							Values:   []string{node},
						}},
					}},
				},
			},
		},
	}
	klog.InfoS("provisioned", "pvc", klog.KObj(pvc), "pv", pv.Name, "path", path)
	return pv, controller.ProvisioningFinished, nil
}

func (p *dirProvisioner) Delete(ctx context.Context, pv *v1.PersistentVolume) error {
	if pv.Spec.Local == nil {
		return &controller.IgnoredError{Reason: "not a local volume"}
	}
	path := filepath.Clean(pv.Spec.Local.Path)
	if filepath.Dir(path) != filepath.Clean(p.baseDir) {
		return &controller.IgnoredError{Reason: fmt.Sprintf("path %s is not under %s", path, p.baseDir)}
	}
	if pv.Labels["geodb.io/sized"] == "true" {
		if err := syscall.Unmount(path, 0); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("unmounting %s: %v", path, err)
		}
	}
	if err := os.RemoveAll(path); err != nil {
		return fmt.Errorf("removing %s: %v", path, err)
	}
	klog.InfoS("deleted", "pv", pv.Name, "path", path)
	return nil
}

// resizeLoop expands the PVs (and records it on the claims) of bound claims
// of this provisioner whose requested size grew.
func resizeLoop(ctx context.Context, client kubernetes.Interface, name string) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := resizeOnce(ctx, client, name); err != nil && ctx.Err() == nil {
			klog.ErrorS(err, "resize pass failed")
		}
	}
}

func resizeOnce(ctx context.Context, client kubernetes.Interface, name string) error {
	pvcs, err := client.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for i := range pvcs.Items {
		pvc := &pvcs.Items[i]
		if pvc.Status.Phase != v1.ClaimBound || pvc.Spec.VolumeName == "" {
			continue
		}
		want, ok := pvc.Spec.Resources.Requests[v1.ResourceStorage]
		if !ok {
			continue
		}
		have := pvc.Status.Capacity[v1.ResourceStorage]
		if want.Cmp(have) <= 0 {
			continue
		}
		pv, err := client.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return err
		}
		if pv.Annotations[provisionedByAnn] != name || pv.Spec.Local == nil {
			continue
		}
		if pv.Labels["geodb.io/sized"] == "true" {
			if err := mountSized(pv.Spec.Local.Path, want.Value(), true); err != nil {
				return err
			}
		}
		if cur := pv.Spec.Capacity[v1.ResourceStorage]; want.Cmp(cur) > 0 {
			pv.Spec.Capacity[v1.ResourceStorage] = want
			if _, err := client.CoreV1().PersistentVolumes().Update(ctx, pv, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("expanding PV %s: %v", pv.Name, err)
			}
		}
		pvc = pvc.DeepCopy()
		if pvc.Status.Capacity == nil {
			pvc.Status.Capacity = v1.ResourceList{}
		}
		pvc.Status.Capacity[v1.ResourceStorage] = want
		if pvc.Status.AllocatedResources == nil {
			pvc.Status.AllocatedResources = v1.ResourceList{}
		}
		pvc.Status.AllocatedResources[v1.ResourceStorage] = want
		pvc.Status.AllocatedResourceStatuses = nil
		pvc.Status.Conditions = nil
		if _, err := client.CoreV1().PersistentVolumeClaims(pvc.Namespace).UpdateStatus(ctx, pvc, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("recording the expansion of PVC %s/%s: %v", pvc.Namespace, pvc.Name, err)
		}
		klog.InfoS("expanded", "pvc", klog.KObj(pvc), "pv", pv.Name, "size", want.String())
	}
	return nil
}

// mountSized mounts (or, with remount, resizes) a tmpfs of size bytes on path.
func mountSized(path string, size int64, remount bool) error {
	if size <= 0 {
		return fmt.Errorf("a sized volume needs a storage request")
	}
	flags := uintptr(0)
	if remount {
		flags = syscall.MS_REMOUNT
	}
	if err := syscall.Mount("geodb-sized", path, "tmpfs", flags, fmt.Sprintf("size=%d,mode=0777", size)); err != nil {
		return fmt.Errorf("mounting a tmpfs of %d bytes on %s: %v", size, path, err)
	}
	return nil
}

func main() {
	klog.InitFlags(nil)
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the API server (required)")
	baseDir := flag.String("base-dir", "", "directory that holds one sub-directory per volume (required)")
	name := flag.String("name", "geodb.io/local", "provisioner name, as in StorageClass.provisioner")
	nodeName := flag.String("node-name", "", "node of the volumes when the scheduler selected none (required)")
	flag.Parse()
	if *kubeconfig == "" || *baseDir == "" || *nodeName == "" {
		fmt.Fprintln(os.Stderr, "provisioner: -kubeconfig, -base-dir and -node-name are required")
		os.Exit(2)
	}
	if err := os.MkdirAll(*baseDir, 0o755); err != nil {
		klog.Fatalf("creating %s: %v", *baseDir, err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		klog.Fatalf("loading %s: %v", *kubeconfig, err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		klog.Fatalf("creating the client: %v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	pc := controller.NewProvisionController(ctx, client, *name,
		&dirProvisioner{baseDir: *baseDir, nodeName: *nodeName},
		controller.LeaderElection(false),
		controller.ExponentialBackOffOnError(false),
		controller.FailedProvisionThreshold(10),
		controller.FailedDeleteThreshold(10),
	)
	go resizeLoop(ctx, client, *name)
	klog.InfoS("starting", "name", *name, "baseDir", *baseDir, "node", *nodeName)
	pc.Run(ctx)
}
