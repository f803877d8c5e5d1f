//! The ledger annotation (`pss-operator.io/applied`) is input like any other: a corrupt,
//! truncated, oversized, foreign or hand-edited value on a governed namespace is reported (a
//! Warning Event and a log line naming the namespace and what is wrong), treated as no ledger,
//! and replaced by the operator's next write; the operator keeps reconciling everything else.
//! (Restarts, failovers and drift made while no operator ran are in the faults tests, which run
//! operators of their own.)

use anyhow::{Context as _, Result, ensure};
use kube::api::{Patch, PatchParams};
use serde_json::json;

use pss_operator::operator::record::{ANNOTATION, MAX_LEN, Record};

use super::support::{ENFORCE, ENFORCE_VERSION, EVENTUALLY, OpTest, run_test};
use crate::harness::eventually;

/// The ledger annotation of a namespace, if any.
/// Sets the ledger annotation by hand (as an admin would, or an attacker with namespace patch
/// rights and no guard installed).
async fn set_ledger(t: &OpTest, ns: &str, value: &str) -> Result<()> {
    t.namespaces()
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {ANNOTATION: value}}})),
        )
        .await
        .with_context(|| format!("annotating {ns}"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_or_hand_edited_ledger_is_reported_ignored_and_replaced() -> Result<()> {
    run_test("ledger-hostile", async |t: &OpTest| {
        let valid_head = r#"{"v":1,"profile":"p","labels":{"enforce":"baseline"}"#;
        let cases: Vec<(&str, String, &str)> = vec![
            ("corrupt", "{not json".to_owned(), "not JSON"),
            (
                "truncated",
                valid_head[..valid_head.len() - 9].to_owned(),
                "not JSON",
            ),
            (
                "oversized",
                format!(
                    r#"{{"v":1,"profile":"p","labels":{{}},"pad":"{}"}}"#,
                    "x".repeat(10 * MAX_LEN)
                ),
                "more than the 4096",
            ),
            (
                "foreign",
                r#"{"v":9,"owner":"someone else"}"#.to_owned(),
                "format version 9",
            ),
            (
                "hostile",
                r#"{"v":1,"profile":"p","labels":{"enforce":"baseline"},"prior":{"enforce":"privileged"},"owner":"me"}"#
                    .to_owned(),
                "unknown field `owner`",
            ),
        ];
        let mut names = Vec::new();
        for (suffix, ..) in &cases {
            names.push(t.namespace(suffix, &[]).await?);
        }
        let edited = t.namespace("edited", &[]).await?;
        let bystander = t.namespace("bystander", &[]).await?;
        let profile = t
            .profile("p", t.spec(&[], json!({"enforce": {"level": "baseline"}}))?)
            .await?;
        let want = [(ENFORCE, "baseline"), (ENFORCE_VERSION, "latest")];
        for ns in names.iter().chain([&edited, &bystander]) {
            t.wait_labels(ns, &want, &[]).await?;
            eventually(&format!("{ns}'s ledger"), EVENTUALLY, || async {
                Ok(t.ledger(ns).await?.filter(|l| Record::decode(l).is_ok()))
            })
            .await?;
        }

        // Bad values, each on its own namespace.
        for ((_, value, _), ns) in cases.iter().zip(&names) {
            set_ledger(t, ns, value).await?;
        }
        // A valid ledger that lies (another profile, other values applied).
        let lie = Record {
            profile: "someone-else".into(),
            labels: std::sync::Arc::new([(ENFORCE.to_owned(), "privileged".to_owned())].into()),
            declared: None,
            ..Default::default()
        };
        set_ledger(t, &edited, &lie.encode()).await?;

        for ((suffix, _, reason), ns) in cases.iter().zip(&names) {
            // Reported: a Warning Event saying what is wrong, and a log line naming the namespace.
            let event = eventually(&format!("LedgerInvalid on {suffix}"), EVENTUALLY, || async {
                Ok(t.events(ns, "LedgerInvalid").await?.into_iter().next())
            })
            .await?;
            assert_eq!(event.type_.as_deref(), Some("Warning"));
            let note = event.note.unwrap_or_default();
            ensure!(
                note.contains(reason) && note.contains("treated as having none"),
                "{suffix}: {note}"
            );
            let logged = t.op.log_lines_with(ns, 50);
            ensure!(
                logged.contains("ignoring an unreadable ledger annotation"),
                "{suffix}: no log line naming {ns}:\n{logged}"
            );
            // Replaced by the operator's own: what it applied, for its profile.
            let record = eventually(&format!("{suffix} replaced"), EVENTUALLY, || async {
                Ok(t.ledger(ns).await?.and_then(|l| Record::decode(&l).ok()))
            })
            .await?;
            assert_eq!(record.profile, profile, "{suffix}");
            assert_eq!(
                record.labels.get(ENFORCE).map(String::as_str),
                Some("baseline")
            );
            // Reported once per value: the replacement is not reported again.
            assert_eq!(t.events(ns, "LedgerInvalid").await?.len(), 1, "{suffix}");
        }
        // The lie is valid JSON: not an error, but not what the operator applied either.
        let record = eventually("the edited ledger rewritten", EVENTUALLY, || async {
            Ok(t.ledger(&edited)
                .await?
                .and_then(|l| Record::decode(&l).ok())
                .filter(|r| r.profile == profile))
        })
        .await?;
        assert_eq!(
            record.labels.get(ENFORCE).map(String::as_str),
            Some("baseline")
        );
        assert!(t.events(&edited, "LedgerInvalid").await?.is_empty());

        // The operator kept running and kept reconciling: drift elsewhere is still repaired.
        t.op.check_alive()?;
        t.edit_labels(&bystander, &[(ENFORCE, Some("privileged"))])
            .await?;
        t.wait_labels(&bystander, &want, &[]).await?;
        eventually("drift repaired on the bystander", EVENTUALLY, || async {
            Ok((!t.events(&bystander, "LabelDriftRepaired").await?.is_empty()).then_some(()))
        })
        .await?;
        Ok(())
    })
    .await
}
