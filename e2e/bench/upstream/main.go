// Command upstream evaluates a pod corpus with the upstream Pod Security library
// (k8s.io/pod-security-admission, the code kube-apiserver runs) and reports its verdicts and its
// single-core throughput, for benches/vs_upstream.rs to compare with ours.
//
// Input: a JSON-lines corpus, one Pod object per line (already carrying API-server defaulting).
// Output (stdout): one JSON line per (pod, level) with the message, then {"ready":true}. Then it
// serves timed rounds, so that the bench can interleave them with its own: each stdin line
// "<level:version> <milliseconds>" runs whole passes over the corpus for at least that long and
// answers one JSON summary line. Stdin closed: exit.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"reflect"
	"runtime"
	"strconv"
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

// summary of one timed round. Denied and MessageBytes are totals over every pass of the round:
// the bench checks that they are passes times its own per-pass totals (the same work was done).
type summary struct {
	Level        string  `json:"level"`
	Pods         int     `json:"pods"`
	Passes       int     `json:"passes"`
	Seconds      float64 `json:"seconds"`
	PodsPerSec   float64 `json:"pods_per_second"`
	Denied       int     `json:"denied"`
	MessageBytes int     `json:"message_bytes"`
}

func main() {
	corpus := flag.String("corpus", "", "JSON-lines file of Pods")
	levels := flag.String("levels", "restricted:latest,baseline:latest", "comma-separated level:version list")
	flag.Parse()
	runtime.GOMAXPROCS(1) // per-core throughput

	pods, err := readCorpus(*corpus)
	if err != nil {
		fail(err)
	}
	evaluator, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		fail(err)
	}
	out := bufio.NewWriter(os.Stdout)
	enc := json.NewEncoder(out)
	for _, lvText := range strings.Split(*levels, ",") {
		lv, err := parseLevelVersion(lvText)
		if err != nil {
			fail(err)
		}
		for i := range pods {
			r := policy.AggregateCheckResults(evaluator.EvaluatePod(lv, &pods[i].ObjectMeta, &pods[i].Spec))
			v := verdict{Pod: i, Level: lvText, Allowed: r.Allowed}
			if !r.Allowed {
				v.Message = denial(lv, r)
			}
			_ = enc.Encode(v)
		}
	}
	_, _ = out.WriteString("{\"ready\":true}\n")
	_ = out.Flush()

	commands := bufio.NewScanner(os.Stdin)
	for commands.Scan() {
		fields := strings.Fields(commands.Text())
		if len(fields) != 2 {
			fail(fmt.Errorf("bad command %q: want <level:version> <milliseconds>", commands.Text()))
		}
		lv, err := parseLevelVersion(fields[0])
		if err != nil {
			fail(err)
		}
		ms, err := strconv.Atoi(fields[1])
		if err != nil {
			fail(err)
		}
		minTime := time.Duration(ms) * time.Millisecond
		// Timed: what kube-apiserver's PodSecurity admission does per Pod: evaluation,
		// aggregation, and for a denied Pod the full message.
		s := summary{Level: fields[0], Pods: len(pods)}
		start := time.Now()
		for time.Since(start) < minTime {
			for i := range pods {
				r := policy.AggregateCheckResults(evaluator.EvaluatePod(lv, &pods[i].ObjectMeta, &pods[i].Spec))
				if !r.Allowed {
					s.Denied++
					s.MessageBytes += len(denial(lv, r))
				}
			}
			s.Passes++
		}
		s.Seconds = time.Since(start).Seconds()
		s.PodsPerSec = float64(s.Passes*len(pods)) / s.Seconds
		_ = enc.Encode(s)
		_ = out.Flush()
	}
}

// denial is kube-apiserver's message for a Pod that enforce refuses.
func denial(lv api.LevelVersion, r policy.AggregateCheckResult) string {
	return fmt.Sprintf("violates PodSecurity %q: %s", lv.String(), r.ForbiddenDetail())
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "upstream:", err)
	os.Exit(2)
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
