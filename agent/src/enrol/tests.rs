//! Enrolment against a real TLS server, and the saved state.

use std::time::Duration;

use musketeer_tasks::protocol::EnrolRequest;
use musketeer_tasks::token::ca_digest;

use super::*;
use crate::test_server::{serve, Canned};
use crate::trust::tests::test_pki;

const SECRET: &str = "abcdefghijklmnopqrstuvwxyz012345";

fn token_for(ca_der: &[u8]) -> String {
    JoinToken {
        ca: CaPin::Digest(ca_digest(ca_der)),
        secret: SECRET.into(),
    }
    .to_string()
}

fn capacity() -> Capacity {
    Capacity {
        cpus: 2,
        ..Capacity::default()
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("musketeer-enrol-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn enrol_answer(ca_pem: &str) -> String {
    serde_json::json!({
        "agent_id": "a1",
        "credential": "MSKAGT-a1-s3cr3t",
        "ca_pem": ca_pem,
    })
    .to_string()
}

#[tokio::test]
async fn join_enrols_once_and_saves_a_private_credential() {
    let pki = test_pki();
    let (url, seen) = serve(&pki, vec![Canned::json(200, &enrol_answer(&pki.ca_pem))]);
    let dir = temp_dir("join");
    let token = token_for(&pki.ca_der);

    let e = join(&url, &token, &dir, &capacity()).await.unwrap();
    assert_eq!(
        (e.agent_id.as_str(), e.credential.as_str()),
        ("a1", "MSKAGT-a1-s3cr3t")
    );
    assert_eq!(e.coordinator, url);
    assert_eq!(e.ca_pem.as_deref(), Some(pki.ca_pem.as_str()));

    let req = seen.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(req.request_line, "POST /v1/agent/enrol HTTP/1.1");
    assert_eq!(
        req.header("authorization"),
        None,
        "enrol carries no credential"
    );
    let body: EnrolRequest = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body.token, token);
    assert_eq!(body.capacity.cpus, 2);

    assert_eq!(Enrolment::load(&dir).unwrap(), Some(e.clone()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join(STATE_FILE)), 0o600);
        assert_eq!(mode(&dir), 0o700);
    }

    // The server answers only once: joining again must not call it.
    let again = join(&format!("{url}/"), &token, &dir, &capacity())
        .await
        .unwrap();
    assert_eq!(again, e);
    // The saved CA alone now verifies the server.
    assert!(matches!(
        e.trust().unwrap(),
        Trust::Pinned { ca: Some(_), .. }
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_impostor_is_refused_with_a_clear_message() {
    let real = test_pki();
    let impostor = test_pki();
    let (url, _seen) = serve(
        &impostor,
        vec![Canned::json(200, &enrol_answer(&impostor.ca_pem))],
    );
    let dir = temp_dir("impostor");
    let err = join(&url, &token_for(&real.ca_der), &dir, &capacity())
        .await
        .unwrap_err();
    assert!(
        matches!(err, EnrolError::Client(ClientError::CaMismatch(_))),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("does not match the join token"), "{text}");
    assert!(Enrolment::load(&dir).unwrap().is_none());
}

#[tokio::test]
async fn a_refused_token_says_to_get_a_new_one() {
    let pki = test_pki();
    let body = r#"{"error":{"code":"unauthorized","message":"token revoked"}}"#;
    let (url, _seen) = serve(&pki, vec![Canned::json(401, body)]);
    let err = join(
        &url,
        &token_for(&pki.ca_der),
        &temp_dir("refused"),
        &capacity(),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, EnrolError::TokenRefused(_)));
    assert!(
        text.contains("refused the join token: token revoked"),
        "{text}"
    );
}

#[tokio::test]
async fn a_ca_that_is_not_the_pinned_one_is_not_saved() {
    let pki = test_pki();
    let other = test_pki();
    let (url, _seen) = serve(&pki, vec![Canned::json(200, &enrol_answer(&other.ca_pem))]);
    let dir = temp_dir("wrong-ca");
    let err = join(&url, &token_for(&pki.ca_der), &dir, &capacity())
        .await
        .unwrap_err();
    assert!(
        matches!(err, EnrolError::Trust(TrustError::Mismatch(_))),
        "{err:?}"
    );
    assert!(Enrolment::load(&dir).unwrap().is_none());
}

#[tokio::test]
async fn bad_input_fails_before_any_call() {
    let dir = temp_dir("bad-input");
    let pki = test_pki();
    let e = join("http://c:1", &token_for(&pki.ca_der), &dir, &capacity())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("https://c:1"), "{e}");
    let e = join("https://c:1", "SWMTKN-1-abc", &dir, &capacity())
        .await
        .unwrap_err();
    assert!(matches!(e, EnrolError::Token(_)));
}

#[test]
fn damaged_state_is_reported_with_what_to_do() {
    let dir = temp_dir("damaged");
    assert_eq!(Enrolment::load(&dir).unwrap(), None);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(STATE_FILE), "{not json").unwrap();
    let e = Enrolment::load(&dir).unwrap_err();
    assert!(e.to_string().contains("join again"), "{e}");

    // A saved CA that no longer matches the pin is refused, not trusted.
    let pki = test_pki();
    let other = test_pki();
    let tampered = Enrolment {
        coordinator: "https://c:1".into(),
        agent_id: "a1".into(),
        credential: "MSKAGT-a1-s".into(),
        ca_pin: hex::encode(ca_digest(&pki.ca_der)),
        ca_pem: Some(other.ca_pem),
        release_key: None,
    };
    tampered.save(&dir).unwrap();
    let e = Enrolment::load(&dir).unwrap_err();
    assert!(
        matches!(&e, EnrolError::BadState { path, .. } if path.ends_with(STATE_FILE)),
        "{e:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
