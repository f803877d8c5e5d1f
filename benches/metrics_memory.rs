//! Memory of the metrics at 2,000 namespaces, from the process's resident set (`unsafe` is
//! forbidden, so no counting allocator): what `publish` keeps, and the peak of one scrape.
//! Run: `cargo bench --bench metrics_memory`. Freed memory the allocator keeps still counts in
//! RSS, so the numbers are upper bounds of what the metrics hold.

use pss_operator::operator::metrics::Metrics;

#[path = "common/metric_values.rs"]
mod common;
#[path = "common/proc_status.rs"]
mod proc_status;

use proc_status::status_kb;

const NAMESPACES: usize = 2000;

/// Resets VmHWM to the current RSS.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("clear_refs");
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let values = common::values(NAMESPACES);
    let base = status_kb("VmRSS");
    let m = Metrics::new().expect("metrics");
    reset_peak();
    m.publish(&values, |_, _| true);
    let published = status_kb("VmRSS");
    let publish_peak = status_kb("VmHWM");
    m.publish(&values, |_, _| true);
    let republished = status_kb("VmRSS");
    reset_peak();
    let text = m.render();
    let scrape_peak = status_kb("VmHWM");
    println!("{NAMESPACES} namespaces, rendered {} bytes", text.len());
    println!(
        "RSS held after publish: +{:.1} MiB (peak during publish +{:.1} MiB), after a second publish +{:.1} MiB",
        mib(published - base),
        mib(publish_peak - base),
        mib(republished - base),
    );
    println!(
        "peak during one render: +{:.1} MiB over the RSS before it",
        mib(scrape_peak - republished)
    );
}
