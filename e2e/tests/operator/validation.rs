//! Bad profiles never reach the operator: kube-apiserver refuses them at `kubectl create` with
//! a message that says what is wrong (OpenAPI enum and pattern, CEL rules of the CRD).

use anyhow::Result;

use super::support::{OpTest, TEST_LABEL, run_test};

fn manifest(name: &str, tag: &str, spec_body: &str) -> String {
    format!(
        "apiVersion: pss-operator.io/v1alpha1\nkind: PodSecurityProfile\nmetadata:\n  name: {name}\nspec:\n  namespaceSelector:\n    matchLabels:\n      {TEST_LABEL}: {tag}\n{spec_body}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_profiles_are_rejected_by_the_api_server_with_a_clear_message() -> Result<()> {
    run_test("bad-profiles", async |t: &OpTest| {
        let cases: [(&str, &str, &[&str]); 4] = [
            (
                "bad-level",
                "  enforce: {level: strict}\n",
                &[
                    r#"spec.enforce.level: Unsupported value: "strict": supported values: "privileged", "baseline", "restricted""#,
                ],
            ),
            (
                "bad-version",
                "  audit: {level: baseline, version: \"1.30\"}\n",
                &[
                    r#"spec.audit.version: Invalid value: "1.30": spec.audit.version in body should match '^(latest|v1\.(0|[1-9][0-9]*))$'"#,
                ],
            ),
            (
                "version-no-level",
                "  warn: {version: v1.30}\n",
                &["spec.warn: Invalid value", "version requires level"],
            ),
            (
                "no-mode",
                "  priority: 1\n",
                &["spec: Invalid value", "set at least one of enforce, audit, warn"],
            ),
        ];
        for (suffix, body, expected) in cases {
            let name = t.name(suffix);
            let out = t
                .op_kubectl(&["create", "-f", "-"], &manifest(&name, &t.tag, body))
                .await?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{suffix}: accepted: {stderr}");
            assert!(
                stderr.contains(&format!(
                    "The PodSecurityProfile \"{name}\" is invalid"
                )),
                "{suffix}: {stderr}"
            );
            for e in expected {
                assert!(stderr.contains(e), "{suffix}: expected {e:?} in:\n{stderr}");
            }
            assert!(
                t.profiles().get_opt(&name).await?.is_none(),
                "{suffix}: nothing stored"
            );
            eprintln!("{suffix}: kubectl said: {}", stderr.trim());
        }
        // The same manifest with valid values is accepted (server-side dry run).
        let name = t.name("valid");
        let out = t
            .op_kubectl(
                &["create", "--dry-run=server", "-f", "-"],
                &manifest(
                    &name,
                    &t.tag,
                    "  enforce: {level: baseline}\n  audit: {level: baseline, version: v1.30}\n",
                ),
            )
            .await?;
        assert!(
            out.status.success(),
            "a valid profile: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    })
    .await
}
