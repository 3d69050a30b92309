//! The library entry point against a real TLS server.

use std::time::Duration;

use musketeer_tasks::protocol::LeaseRequest;
use musketeer_tasks::token::{ca_digest, CaPin, JoinToken};

use super::*;
use crate::test_server::{serve, Canned};
use crate::trust::tests::test_pki;

#[tokio::test]
async fn run_enrols_then_leases_and_a_refused_credential_says_join_again() {
    let pki = test_pki();
    let enrolled = serde_json::json!({
        "agent_id": "a1",
        "credential": "MSKAGT-a1-s3cr3t",
        "ca_pem": pki.ca_pem,
    })
    .to_string();
    let removed =
        r#"{"error":{"code":"unauthorized","message":"agent a1 was removed by the operator"}}"#;
    let (url, seen) = serve(
        &pki,
        vec![Canned::json(200, &enrolled), Canned::json(401, removed)],
    );
    let token = JoinToken {
        ca: CaPin::Digest(ca_digest(&pki.ca_der)),
        secret: "abcdefghijklmnopqrstuvwxyz012345".into(),
    };
    let dir = std::env::temp_dir().join(format!("musketeer-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = AgentConfig::new(&dir)
        .joining(url.clone(), token.to_string())
        .with_limits(Limits {
            cpus: Some(1),
            ..Limits::default()
        });

    let err = tokio::time::timeout(Duration::from_secs(20), run(config, std::future::pending()))
        .await
        .expect("run ends on a refused credential")
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, AgentError::Revoked { .. }), "{err:?}");
    assert!(
        text.contains("revoked or is unknown") && text.contains("removed by the operator"),
        "{text}"
    );

    let _enrol = seen.recv().unwrap();
    let lease = seen.recv().unwrap();
    assert_eq!(
        lease.header("authorization"),
        Some("Bearer MSKAGT-a1-s3cr3t")
    );
    let req: LeaseRequest = serde_json::from_slice(&lease.body).unwrap();
    assert_eq!(req.capacity.cpus, 1);
    assert_eq!(req.wait_ms, 20_000, "an idle agent long-polls");
    assert!(req.max_work > 0 && req.max_tasks > 0);
    assert_eq!(Enrolment::load(&dir).unwrap().unwrap().agent_id, "a1");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn run_without_an_enrolment_says_how_to_join() {
    let dir = std::env::temp_dir().join(format!("musketeer-none-{}", std::process::id()));
    let err = run(AgentConfig::new(&dir), std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::NotEnrolled));
    assert!(err.to_string().contains("musketeer join"));
}

/// The coordinator's demo spawns agents on its runtime: `run` must be `Send`.
#[test]
fn run_can_be_spawned() {
    fn assert_send<T: Send + 'static>(_: T) {}
    assert_send(run(AgentConfig::new("unused"), async {}));
}
