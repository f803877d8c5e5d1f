//! The `check` command, run as users run it: the real binary, real files, exit codes.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const SEED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/seed");

fn check(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pss-operator"))
        .arg("check")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pss-operator runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("pss-operator finishes")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn seed_deployment_gives_the_api_servers_exact_warning() {
    let expected = std::fs::read_to_string(Path::new(SEED).join("expected-warning.txt"))
        .expect("seed warning");
    // The API server warns "would violate ..." on the Deployment; the check prints the message as
    // the denial of its Pods reads, "violates ...", with the identical detail.
    let detail = expected
        .trim_end()
        .strip_prefix("Warning: would violate ")
        .expect("warning prefix");
    let expected = format!("violates {detail}");
    let deployment = format!("{SEED}/deployment-privileged.yaml");

    let out = check(&["--level", "restricted", &deployment], b"");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("Deployment/nginx in app: {expected}\n")
    );

    let out = check(&["--level", "baseline", &deployment], b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        "Deployment/nginx in app: violates PodSecurity \"baseline:latest\": privileged (container \"nginx\" must not set securityContext.privileged=true)\n"
    );
}

#[test]
fn allowed_objects_exit_zero_and_skipped_kinds_are_counted() {
    let manifest = b"apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\n\
        apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: ns}\nspec: {containers: [{name: c, image: i}]}\n";
    let out = check(&["--level", "baseline", "-"], manifest);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "Pod/p in ns: allowed\n");
    assert!(
        stderr(&out).contains("1 allowed, 0 violating, 1 skipped"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn json_output_has_every_field() {
    let deployment = format!("{SEED}/deployment-privileged.yaml");
    let out = check(
        &[
            "--level",
            "baseline",
            "--version",
            "v1.30",
            "--output",
            "json",
            &deployment,
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let row = &report["results"][0];
    assert_eq!(row["source"], deployment);
    assert_eq!(row["index"], 0);
    assert_eq!(row["kind"], "Deployment");
    assert_eq!(row["namespace"], "app");
    assert_eq!(row["name"], "nginx");
    assert_eq!(row["level"], "baseline");
    assert_eq!(row["version"], "v1.30");
    assert_eq!(row["allowed"], false);
    assert_eq!(row["violations"][0]["check"], "privileged");
    assert_eq!(row["violations"][0]["reason"], "privileged");
    assert_eq!(
        row["violations"][0]["detail"],
        "container \"nginx\" must not set securityContext.privileged=true"
    );
    assert_eq!(
        row["message"],
        "violates PodSecurity \"baseline:v1.30\": privileged (container \"nginx\" must not set securityContext.privileged=true)"
    );
}

#[test]
fn bad_input_is_reported_precisely_and_the_rest_still_evaluated() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("a-broken.yaml"),
        "kind: Pod\nspec:\n  hostPID: maybe\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("b-binary.yml"), [0xffu8, 0x00, 0x13]).expect("write");
    std::fs::write(
        dir.path().join("c-good.json"),
        r#"{"kind":"Pod","metadata":{"name":"ok"},"spec":{"containers":[{"name":"c"}]}}"#,
    )
    .expect("write");
    std::fs::write(dir.path().join("ignored.txt"), "not a manifest").expect("write");
    let out = check(
        &[
            "--level",
            "baseline",
            dir.path().to_str().expect("utf-8 path"),
            "/nonexistent/x.yaml",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(2), "input errors exit 2");
    assert_eq!(
        stdout(&out),
        "Pod/ok: allowed\n",
        "the good file is still evaluated"
    );
    let err = stderr(&out);
    assert!(err.contains("a-broken.yaml: document 0 (line 3): field spec.hostPID: invalid type: string \"maybe\", expected a boolean"), "{err}");
    assert!(err.contains("b-binary.yml: not UTF-8 text"), "{err}");
    assert!(err.contains("/nonexistent/x.yaml: cannot read"), "{err}");
    assert!(!err.contains("ignored.txt"));
}

#[test]
fn usage_errors_exit_two() {
    for args in [
        &["--level", "Baseline", "x"][..],
        &["--version", "v1.01", "x"],
        &[],
    ] {
        let out = check(args, b"");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    let out = check(&["--level", "nope", "x"], b"");
    assert!(
        stderr(&out).contains("must be one of privileged, baseline, restricted"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn arbitrary_bytes_never_crash_the_reader() {
    for input in [
        &b"\xff\xfe"[..],
        b"- - - -",
        b"{{{{",
        b"kind: Pod\nspec: [1,2]",
        b"---\n---\n",
        b"kind: List\nitems: 5\n",
        b"!!binary aGVsbG8=",
    ] {
        let out = check(&["-"], input);
        let code = out.status.code();
        assert!(
            matches!(code, Some(0..=2)),
            "{input:?} gave {code:?}: {}",
            stderr(&out)
        );
    }
}

/// A Pod with a host probe: refused by `baseline:latest` from v1.34, admitted before.
const HOST_PROBE_POD: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: probe, namespace: app}
spec:
  containers:
  - name: app
    image: nginx
    livenessProbe: {httpGet: {host: 10.0.0.1, port: 80}}
"#;

#[test]
fn latest_means_the_kube_version_given() {
    let out = check(&["--level", "baseline", "-"], HOST_PROBE_POD.as_bytes());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(r#"violates PodSecurity "baseline:latest": probe or lifecycle host"#),
        "{}",
        stdout(&out)
    );
    let out = check(
        &["--level", "baseline", "--kube-version", "v1.31", "-"],
        HOST_PROBE_POD.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(stdout(&out), "Pod/probe in app: allowed\n");
    assert!(
        stderr(&out).contains("against baseline:latest on Kubernetes v1.31"),
        "{}",
        stderr(&out)
    );
    let out = check(&["--level", "baseline", "--kube-version", "1.x", "-"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid Kubernetes version \"1.x\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn exemptions_of_the_admission_configuration_are_reported_as_exempt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("admission.yaml");
    std::fs::write(
        &config,
        "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n- name: PodSecurity\n  configuration:\n    apiVersion: pod-security.admission.config.k8s.io/v1\n    kind: PodSecurityConfiguration\n    exemptions:\n      namespaces: [legacy]\n      runtimeClasses: [kata]\n",
    )
    .expect("write");
    let config = config.to_str().expect("utf-8");
    let deployment = format!("{SEED}/deployment-privileged.yaml");
    let out = check(
        &[
            "--level",
            "baseline",
            "--admission-config",
            config,
            &deployment,
        ],
        b"",
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "app is not exempt: {}",
        stdout(&out)
    );
    let legacy = std::fs::read_to_string(&deployment)
        .expect("seed")
        .replace("namespace: app", "namespace: legacy");
    let out = check(
        &["--level", "baseline", "--admission-config", config, "-"],
        legacy.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(
        stdout(&out),
        "Deployment/nginx in legacy: exempt (namespace \"legacy\" is exempt in the admission configuration)\n"
    );
    let kata = std::fs::read_to_string(&deployment)
        .expect("seed")
        .replace("containers:", "runtimeClassName: kata\n      containers:");
    let out = check(
        &[
            "--level",
            "baseline",
            "--admission-config",
            config,
            "-o",
            "json",
            "-",
        ],
        kata.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(r#""exempt": "runtimeClass""#),
        "{}",
        stdout(&out)
    );
    // A bad configuration is an input error naming the file and the field.
    std::fs::write(dir.path().join("bad.yaml"), "apiVersion: pod-security.admission.config.k8s.io/v1\nkind: PodSecurityConfiguration\ndefaults:\n  enforce: strict\n").expect("write");
    let bad = dir.path().join("bad.yaml");
    let out = check(
        &[
            "--admission-config",
            bad.to_str().expect("utf-8"),
            &deployment,
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("bad.yaml: defaults.enforce: invalid level \"strict\""),
        "{}",
        stderr(&out)
    );
}
