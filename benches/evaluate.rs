//! Evaluations per second over the upstream conformance corpus (4,537 pods), at restricted:latest
//! and baseline:latest. Run: `make bench` (or `cargo bench --bench evaluate`).

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pss_operator::pss::{self, Level, LevelVersion, Version, model::Pod};

fn corpus() -> Vec<Pod> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pss");
    let mut pods = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)
            .expect("fixture dir")
            .map(|e| e.expect("entry").path())
        {
            if entry.is_dir() {
                stack.push(entry);
            } else if entry.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&entry).expect("fixture");
                let mut pod: Pod = serde_yaml_ng::from_str(&text).expect("fixture pod");
                pod.apply_api_server_defaults();
                pods.push(pod);
            }
        }
    }
    pods
}

fn evaluate_corpus(c: &mut Criterion) {
    let pods = corpus();
    let mut group = c.benchmark_group("evaluate");
    group.throughput(Throughput::Elements(pods.len() as u64));
    for level in [Level::Restricted, Level::Baseline] {
        let lv = LevelVersion::new(level, Version::Latest);
        group.bench_function(format!("{lv} x{} pods", pods.len()), |b| {
            b.iter(|| {
                let mut denied = 0usize;
                for pod in &pods {
                    denied += usize::from(
                        !pss::evaluate(&pod.metadata, &pod.spec, black_box(lv)).allowed(),
                    );
                }
                denied
            })
        });
        // The operator's hot path also renders the message for denied pods.
        group.bench_function(format!("{lv} x{} pods + messages", pods.len()), |b| {
            b.iter(|| {
                pods.iter()
                    .map(|pod| {
                        pss::evaluate(&pod.metadata, &pod.spec, black_box(lv))
                            .denial_message()
                            .len()
                    })
                    .sum::<usize>()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, evaluate_corpus);
criterion_main!(benches);
