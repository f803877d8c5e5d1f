//! Our evaluator against the upstream Go library (`k8s.io/pod-security-admission`, what
//! kube-apiserver runs), on the same corpus, on the same machine, on the same core:
//! the 4,537 conformance fixtures plus generated pods mixing every checked field.
//! Verdicts and messages must be identical for every pod; throughput is reported.
//!
//! Both sides do what kube-apiserver's PodSecurity admission does per Pod: evaluate, and for a
//! denied Pod build the full message (`violates PodSecurity "restricted:latest": ...`). The timed
//! work is interleaved so that both see the same machine load: per level, ROUNDS paired rounds,
//! each running upstream for ROUND_MS then ours for ROUND_MS (the order alternates between rounds),
//! both pinned to the same core. The ratio reported is the median of the rounds' ratios. Every
//! round also checks that both sides refused as many Pods and built as many message bytes per pass.
//!
//! Run: `make bench-upstream` (needs Go; builds e2e/bench/upstream from the Go module proxy).
//! Environment: `PSS_BENCH_ROUNDS` (default 10), `PSS_BENCH_ROUND_MS` (default 1000),
//! `PSS_BENCH_CPU` (the core both sides are pinned to; default the last one this process may use).

use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use pss_operator::pss::{self, LevelVersion, model::Pod};
use serde_json::Value;

#[path = "../e2e/tests/podgen.rs"]
mod podgen;

const LEVELS: [&str; 2] = ["restricted:latest", "baseline:latest"];
const GENERATED: usize = 2000;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?}: not a number"))
        })
        .unwrap_or(default)
}

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

/// The core both sides run on: `PSS_BENCH_CPU`, else the highest this process may use (from
/// `taskset -p`), else none (no pinning, e.g. without util-linux).
fn bench_cpu() -> Option<usize> {
    if let Ok(cpu) = std::env::var("PSS_BENCH_CPU") {
        return Some(cpu.parse().expect("PSS_BENCH_CPU: a core number"));
    }
    let out = Command::new("taskset")
        .args(["-pc", &std::process::id().to_string()])
        .output()
        .ok()?;
    // "pid 123's current affinity list: 0-3,6"
    let text = String::from_utf8_lossy(&out.stdout);
    let list = text.rsplit(": ").next()?.trim();
    list.split(',')
        .filter_map(|part| part.rsplit('-').next()?.parse::<usize>().ok())
        .max()
}

/// Pins this thread (the one that times ours) to `cpu`.
fn pin_self(cpu: usize) {
    // The main thread's id is the process id.
    let status = Command::new("taskset")
        .args(["-pc", &cpu.to_string(), &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("taskset runs");
    assert!(status.success(), "taskset -pc {cpu} failed");
}

/// The upstream harness, serving timed rounds on request.
struct Upstream {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Upstream {
    /// Builds and starts the harness (pinned to `cpu`); returns it with its verdict lines.
    fn start(dir: &Path, corpus: &Path, cpu: Option<usize>) -> (Upstream, Vec<Value>) {
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
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        let mut child = command
            .arg("-corpus")
            .arg(corpus)
            .arg("-levels")
            .arg(LEVELS.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("upstream harness runs");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut verdicts = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            let n = stdout.read_line(&mut line).expect("read upstream");
            assert!(n > 0, "upstream harness exited before it was ready");
            let v: Value = serde_json::from_str(&line).expect("upstream json line");
            if v.get("ready").is_some() {
                break;
            }
            verdicts.push(v);
        }
        (
            Upstream {
                child,
                stdin,
                stdout,
            },
            verdicts,
        )
    }

    /// One timed round of at least `time` at `level`.
    fn round(&mut self, level: &str, time: Duration) -> Round {
        writeln!(self.stdin, "{level} {}", time.as_millis()).expect("write upstream");
        self.stdin.flush().expect("flush upstream");
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).expect("read upstream");
        assert!(n > 0, "upstream harness exited");
        let v: Value = serde_json::from_str(&line).expect("upstream summary");
        let field = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("summary.{k}"));
        Round {
            rate: v["pods_per_second"].as_f64().expect("rate"),
            passes: field("passes"),
            denied: field("denied"),
            message_bytes: field("message_bytes"),
        }
    }

    fn stop(mut self) {
        drop(self.stdin);
        let status = self.child.wait().expect("upstream exits");
        assert!(status.success(), "upstream harness failed: {status}");
    }
}

/// One timed round of one side: pods/s, and the totals that show the work done.
struct Round {
    rate: f64,
    passes: u64,
    denied: u64,
    message_bytes: u64,
}

/// Ours for at least `time`: single-thread, whole passes; per Pod what the API server does
/// (evaluation, and the full message of a denied Pod).
fn time_ours(pods: &[Pod], lv: LevelVersion, time: Duration) -> Round {
    let (mut passes, mut denied, mut message_bytes) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < time {
        for pod in pods {
            let eval = pss::evaluate(&pod.metadata, &pod.spec, black_box(lv));
            if !eval.allowed() {
                denied += 1;
                message_bytes += black_box(eval.denial_message()).len() as u64;
            }
        }
        passes += 1;
    }
    Round {
        rate: (passes as usize * pods.len()) as f64 / start.elapsed().as_secs_f64(),
        passes,
        denied,
        message_bytes,
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let rounds = env_or("PSS_BENCH_ROUNDS", 10).max(1) as usize;
    let round_time = Duration::from_millis(env_or("PSS_BENCH_ROUND_MS", 1000));
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

    let cpu = bench_cpu();
    let (mut upstream, verdicts) = Upstream::start(&dir, &corpus_path, cpu);
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

    match cpu {
        Some(cpu) => pin_self(cpu),
        None => eprintln!("taskset not found: the two sides are not pinned"),
    }
    let load_before = load_average();
    let mut results = Vec::new();
    for level in LEVELS {
        let lv: LevelVersion = level.parse().expect("level:version");
        // What one pass refuses, and its message bytes: from upstream's verdicts (identical to ours).
        let (mut denied, mut message_bytes) = (0u64, 0u64);
        for v in verdicts.iter().filter(|v| v["level"] == level) {
            if v["allowed"] != true {
                denied += 1;
                message_bytes += v["message"].as_str().map_or(0, str::len) as u64;
            }
        }
        // Warm-up (caches, allocator, Go's heap), not counted.
        upstream.round(level, round_time / 4);
        time_ours(&pods, lv, round_time / 4);
        let (mut theirs, mut ours, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let (u, o) = if round.is_multiple_of(2) {
                let u = upstream.round(level, round_time);
                (u, time_ours(&pods, lv, round_time))
            } else {
                let o = time_ours(&pods, lv, round_time);
                (upstream.round(level, round_time), o)
            };
            // Same work: both refused as many Pods and built as many message bytes per pass.
            for (side, r) in [("upstream", &u), ("ours", &o)] {
                assert_eq!(
                    (r.denied, r.message_bytes),
                    (denied * r.passes, message_bytes * r.passes),
                    "{level} round {round}: {side} did different work"
                );
            }
            theirs.push(u.rate);
            ours.push(o.rate);
            ratios.push(o.rate / u.rate);
        }
        let (min, max) = ratios
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        results.push((
            level,
            median(&mut theirs),
            median(&mut ours),
            median(&mut ratios),
            min,
            max,
        ));
    }
    let load_after = load_average();
    upstream.stop();

    println!(
        "corpus: {} pods ({fixture_count} conformance fixtures + {GENERATED} generated)",
        pods.len()
    );
    println!(
        "verdicts and messages compared: {}, identical: {}",
        verdicts.len(),
        verdicts.len() - mismatches.len()
    );
    println!(
        "{rounds} paired rounds of {} ms per side and level, both sides on {}; load average {load_before} before, {load_after} after",
        round_time.as_millis(),
        cpu.map_or("any core (unpinned)".to_owned(), |c| format!("core {c}"))
    );
    println!(
        "| level | upstream Go (pods/s, median) | ours (pods/s, median) | ratio (median of rounds) | ratio range |"
    );
    println!("|---|---|---|---|---|");
    for (level, theirs, ours, ratio, min, max) in results {
        println!("| {level} | {theirs:.0} | {ours:.0} | {ratio:.1}x | {min:.1}x-{max:.1}x |");
    }
}
