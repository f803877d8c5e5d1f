// Command upstream evaluates a pod corpus with the upstream Pod Security library
// (k8s.io/pod-security-admission, the code kube-apiserver runs) and reports its verdicts and its
// single-core throughput, for benches/vs_upstream.rs to compare with ours.
//
// Input: a JSON-lines corpus, one Pod object per line (already carrying API-server defaulting).
// Output (stdout): one JSON line per (pod, level) with the message, then a summary line per level.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"reflect"
	"runtime"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
)

type verdict struct {
	Pod     int    `json:"pod"`
	Level   string `json:"level"`
	Allowed bool   `json:"allowed"`
	Message string `json:"message"`
}

type summary struct {
	Level      string  `json:"level"`
	Pods       int     `json:"pods"`
	Passes     int     `json:"passes"`
	Seconds    float64 `json:"seconds"`
	PodsPerSec float64 `json:"pods_per_second"`
}

func main() {
	corpus := flag.String("corpus", "", "JSON-lines file of Pods")
	levels := flag.String("levels", "restricted:latest,baseline:latest", "comma-separated level:version list")
	minTime := flag.Duration("min-time", 3*time.Second, "minimum timed duration per level")
	flag.Parse()
	runtime.GOMAXPROCS(1) // per-core throughput

	pods, err := readCorpus(*corpus)
	if err != nil {
		fmt.Fprintln(os.Stderr, "upstream:", err)
		os.Exit(2)
	}
	evaluator, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "upstream:", err)
		os.Exit(2)
	}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	enc := json.NewEncoder(out)
	for _, lvText := range strings.Split(*levels, ",") {
		lv, err := parseLevelVersion(lvText)
		if err != nil {
			fmt.Fprintln(os.Stderr, "upstream:", err)
			os.Exit(2)
		}
		for i := range pods {
			r := policy.AggregateCheckResults(evaluator.EvaluatePod(lv, &pods[i].ObjectMeta, &pods[i].Spec))
			v := verdict{Pod: i, Level: lvText, Allowed: r.Allowed}
			if !r.Allowed {
				v.Message = fmt.Sprintf("violates PodSecurity %q: %s", lv.String(), r.ForbiddenDetail())
			}
			_ = enc.Encode(v)
		}
		// Timed: evaluation and aggregation, as admission does per request (the message string
		// itself is formatted only for denied pods, as ours does).
		start := time.Now()
		passes := 0
		for time.Since(start) < *minTime {
			for i := range pods {
				r := policy.AggregateCheckResults(evaluator.EvaluatePod(lv, &pods[i].ObjectMeta, &pods[i].Spec))
				if !r.Allowed {
					_ = r.ForbiddenDetail()
				}
			}
			passes++
		}
		secs := time.Since(start).Seconds()
		_ = enc.Encode(summary{Level: lvText, Pods: len(pods), Passes: passes, Seconds: secs,
			PodsPerSec: float64(passes*len(pods)) / secs})
	}
}

func parseLevelVersion(s string) (api.LevelVersion, error) {
	parts := strings.SplitN(s, ":", 2)
	if len(parts) != 2 {
		return api.LevelVersion{}, fmt.Errorf("bad level:version %q", s)
	}
	level, err := api.ParseLevel(parts[0])
	if err != nil {
		return api.LevelVersion{}, err
	}
	version, err := api.ParseVersion(parts[1])
	if err != nil {
		return api.LevelVersion{}, err
	}
	return api.LevelVersion{Level: level, Version: version}, nil
}

func readCorpus(path string) ([]corev1.Pod, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var pods []corev1.Pod
	scanner := bufio.NewScanner(f)
	scanner.Buffer(make([]byte, 1<<20), 64<<20)
	for scanner.Scan() {
		var pod corev1.Pod
		if err := json.Unmarshal(scanner.Bytes(), &pod); err != nil {
			return nil, fmt.Errorf("corpus line %d: %w", len(pods)+1, err)
		}
		applyAPIServerDefaults(&pod)
		applyAppArmorVersionSkew(&pod)
		pods = append(pods, pod)
	}
	return pods, scanner.Err()
}

// applyAPIServerDefaults does what kube-apiserver's defaulting does before admission, for the
// fields Pod Security reads (pkg/apis/core/v1/defaults.go): a volume without any source becomes
// an emptyDir, and with hostNetwork every container port is also a host port.
func applyAPIServerDefaults(pod *corev1.Pod) {
	for i := range pod.Spec.Volumes {
		if allPtrFieldsNil(&pod.Spec.Volumes[i].VolumeSource) {
			pod.Spec.Volumes[i].VolumeSource = corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}
		}
	}
	if pod.Spec.HostNetwork {
		for _, containers := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
			for i := range containers {
				for j := range containers[i].Ports {
					if containers[i].Ports[j].HostPort == 0 {
						containers[i].Ports[j].HostPort = containers[i].Ports[j].ContainerPort
					}
				}
			}
		}
	}
}

// applyAppArmorVersionSkew mirrors kube-apiserver's pod strategy (PrepareForCreate), which runs
// before admission: a container's deprecated AppArmor annotation becomes its appArmorProfile
// field when it has none, the value is valid, and it differs from the pod-level profile.
func applyAppArmorVersionSkew(pod *corev1.Pod) {
	if pod.Spec.OS != nil && pod.Spec.OS.Name == corev1.Windows {
		return
	}
	var podProfile *corev1.AppArmorProfile
	if pod.Spec.SecurityContext != nil {
		podProfile = pod.Spec.SecurityContext.AppArmorProfile
	}
	visit := func(name string, sc **corev1.SecurityContext) {
		annotation, ok := pod.Annotations[corev1.DeprecatedAppArmorBetaContainerAnnotationKeyPrefix+name]
		if !ok || (*sc != nil && (*sc).AppArmorProfile != nil) {
			return
		}
		var field *corev1.AppArmorProfile
		switch {
		case annotation == corev1.DeprecatedAppArmorBetaProfileNameUnconfined:
			field = &corev1.AppArmorProfile{Type: corev1.AppArmorProfileTypeUnconfined}
		case annotation == corev1.DeprecatedAppArmorBetaProfileRuntimeDefault:
			field = &corev1.AppArmorProfile{Type: corev1.AppArmorProfileTypeRuntimeDefault}
		case strings.HasPrefix(annotation, corev1.DeprecatedAppArmorBetaProfileNamePrefix):
			p := strings.TrimPrefix(annotation, corev1.DeprecatedAppArmorBetaProfileNamePrefix)
			if p != "" && strings.TrimSpace(p) == p && len(p) <= 4095 {
				field = &corev1.AppArmorProfile{Type: corev1.AppArmorProfileTypeLocalhost, LocalhostProfile: &p}
			}
		}
		if field == nil || reflect.DeepEqual(field, podProfile) {
			return
		}
		if *sc == nil {
			*sc = &corev1.SecurityContext{}
		}
		(*sc).AppArmorProfile = field
	}
	for i := range pod.Spec.InitContainers {
		visit(pod.Spec.InitContainers[i].Name, &pod.Spec.InitContainers[i].SecurityContext)
	}
	for i := range pod.Spec.Containers {
		visit(pod.Spec.Containers[i].Name, &pod.Spec.Containers[i].SecurityContext)
	}
	for i := range pod.Spec.EphemeralContainers {
		visit(pod.Spec.EphemeralContainers[i].Name, &pod.Spec.EphemeralContainers[i].SecurityContext)
	}
}

func allPtrFieldsNil(obj interface{}) bool {
	v := reflect.ValueOf(obj).Elem()
	for i := 0; i < v.NumField(); i++ {
		if v.Field(i).Kind() == reflect.Ptr && !v.Field(i).IsNil() {
			return false
		}
	}
	return true
}
