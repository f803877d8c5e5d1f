//! Time of a /metrics scrape (`Metrics::render`) and of publishing one pass's values, at 2,000
//! namespaces. Run: `cargo bench --bench metrics`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use pss_operator::operator::Error;
use pss_operator::operator::metrics::Metrics;

#[path = "common/metric_values.rs"]
mod common;

const NAMESPACES: usize = 2000;

fn metrics(c: &mut Criterion) {
    let values = common::values(NAMESPACES);
    let m = Metrics::new().expect("metrics");
    m.publish(&values, |_, _| true);
    // The families kept in the registry, so that a render has all of them.
    for i in 0..20 {
        m.drift(
            &format!("bench-{i:04}"),
            "web",
            "pod-security.kubernetes.io/enforce",
        );
    }
    m.error("namespace", &Error::LeadershipLost);
    drop(m.timer("namespace"));
    drop(m.timer("podsecurityprofile"));
    let text = m.render();
    println!(
        "render at {NAMESPACES} namespaces: {} bytes, {} lines",
        text.len(),
        text.lines().count()
    );

    let mut group = c.benchmark_group("metrics");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function(format!("render {NAMESPACES} namespaces"), |b| {
        b.iter(|| black_box(m.render()))
    });
    group.bench_function(format!("publish {NAMESPACES} namespaces"), |b| {
        b.iter(|| m.publish(black_box(&values), |_, _| true))
    });
    group.finish();
}

criterion_group!(benches, metrics);
criterion_main!(benches);
