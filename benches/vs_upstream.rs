//! Our evaluator against the upstream Go library (`k8s.io/pod-security-admission`, what
//! kube-apiserver runs), on the same corpus, on the same machine, one core each:
//! the 4,537 conformance fixtures plus generated pods mixing every checked field.
//! Verdicts and messages must be identical for every pod; throughput is reported.
//!
//! Run: `make bench-upstream` (needs Go; builds e2e/bench/upstream from the Go module proxy).

use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pss_operator::pss::{self, LevelVersion, model::Pod};
use serde_json::Value;

#[path = "../e2e/tests/podgen.rs"]
mod podgen;

const LEVELS: [&str; 2] = ["restricted:latest", "baseline:latest"];
const MIN_TIME: Duration = Duration::from_secs(3);
const GENERATED: usize = 2000;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> Vec<Value> {
    let mut files = Vec::new();
    let mut stack = vec![root().join("tests/fixtures/pss")];
    while let Some(dir) = stack.pop() {
        for path in std::fs::read_dir(&dir)
            .expect("fixture dir")
            .map(|e| e.expect("entry").path())
        {
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
        .iter()
        .map(|p| {
            serde_yaml_ng::from_str(&std::fs::read_to_string(p).expect("read")).expect("fixture")
        })
        .collect()
}

fn run_upstream(dir: &Path, corpus: &Path) -> (Vec<Value>, Vec<Value>) {
    let binary = dir.join("upstream");
    eprintln!("building the upstream harness (e2e/bench/upstream) ...");
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(".")
        .current_dir(root().join("e2e/bench/upstream"))
        .env("GOFLAGS", "-mod=mod")
        .status()
        .expect("go is installed");
    assert!(status.success(), "go build of e2e/bench/upstream failed");
    eprintln!("running upstream on one core ...");
    let out = Command::new(&binary)
        .arg("-corpus")
        .arg(corpus)
        .arg("-levels")
        .arg(LEVELS.join(","))
        .arg("-min-time")
        .arg(format!("{}s", MIN_TIME.as_secs()))
        .output()
        .expect("upstream harness runs");
    assert!(
        out.status.success(),
        "upstream harness failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("upstream json line"))
        .collect();
    lines.into_iter().partition(|l| l.get("pod").is_some())
}

/// Single-thread throughput of ours: evaluation plus the message of denied pods, like upstream's loop.
fn time_ours(pods: &[Pod], lv: LevelVersion) -> f64 {
    let start = Instant::now();
    let mut passes = 0usize;
    while start.elapsed() < MIN_TIME {
        for pod in pods {
            let eval = pss::evaluate(&pod.metadata, &pod.spec, black_box(lv));
            if !eval.allowed() {
                black_box(eval.forbidden_detail());
            }
        }
        passes += 1;
    }
    (passes * pods.len()) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let dir: PathBuf = root().join("target/bench-vs-upstream");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let mut corpus: Vec<Value> = fixtures();
    let fixture_count = corpus.len();
    corpus.extend(podgen::generated_pods(GENERATED, 0x5eed));
    let corpus_path = dir.join("corpus.jsonl");
    let mut file =
        std::io::BufWriter::new(std::fs::File::create(&corpus_path).expect("corpus file"));
    for pod in &corpus {
        serde_json::to_writer(&mut file, pod).expect("write corpus");
        file.write_all(b"\n").expect("write corpus");
    }
    file.flush().expect("flush corpus");
    drop(file);

    let pods: Vec<Pod> = corpus
        .iter()
        .map(|v| {
            let mut pod: Pod = serde_json::from_value(v.clone()).expect("corpus pod");
            pod.apply_api_server_defaults();
            pod
        })
        .collect();

    let (verdicts, summaries) = run_upstream(&dir, &corpus_path);
    let mut mismatches = Vec::new();
    for v in &verdicts {
        let i = v["pod"].as_u64().expect("pod index") as usize;
        let lv: LevelVersion = v["level"]
            .as_str()
            .expect("level")
            .parse()
            .expect("level:version");
        let ours = pss::evaluate(&pods[i].metadata, &pods[i].spec, lv);
        let theirs = v["message"].as_str().unwrap_or_default();
        if ours.allowed() != v["allowed"].as_bool().unwrap_or(false)
            || ours.denial_message() != theirs
        {
            mismatches.push(format!(
                "pod {i} at {lv}:\n  upstream: {theirs}\n  ours:     {}",
                ours.denial_message()
            ));
        }
    }

    println!(
        "corpus: {} pods ({fixture_count} conformance fixtures + {GENERATED} generated)",
        pods.len()
    );
    println!(
        "verdicts and messages compared: {}, identical: {}",
        verdicts.len(),
        verdicts.len() - mismatches.len()
    );
    println!("| level | upstream Go (pods/s, 1 core) | ours (pods/s, 1 core) | ratio |");
    println!("|---|---|---|---|");
    for summary in &summaries {
        let level = summary["level"].as_str().expect("level");
        let upstream = summary["pods_per_second"].as_f64().expect("rate");
        let ours = time_ours(&pods, level.parse().expect("level:version"));
        println!(
            "| {level} | {upstream:.0} | {ours:.0} | {:.1}x |",
            ours / upstream
        );
    }
    if !mismatches.is_empty() {
        eprintln!(
            "{} mismatches, first ones:\n{}",
            mismatches.len(),
            mismatches
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::process::exit(1);
    }
}
