//! The rules of WebAssembly modules: content-addressed, listed, and kept
//! while an unfinished job (or one being submitted) uses them.

use super::*;

fn module(bytes: &[u8], has_reduce: bool, at: u64) -> NewModule {
    NewModule {
        id: format!("sha256:{}", hex::encode(sha2_digest(bytes))),
        bytes: bytes.to_vec(),
        has_reduce,
        created_ms: at,
    }
}

fn sha2_digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Begins a wasm job on `module`, sealed if `seal`.
async fn wasm_job(store: &dyn Store, id: &str, module: &str, seal: bool) {
    store
        .begin_job(NewJob {
            timing: Default::default(),
            id: id.into(),
            kernel: "wasm".into(),
            options: JobOptions::default(),
            reduce_plan: vec![0],
            created_ms: T0,
            module: Some(module.into()),
        })
        .await
        .unwrap();
    store
        .add_tasks(
            id,
            vec![NewTask {
                input: vec![1; 8],
                cost: Cost {
                    work: 10,
                    mem_bytes: 100,
                },
            }],
        )
        .await
        .unwrap();
    if seal {
        store.seal_job(id).await.unwrap();
    }
}

/// The same bytes are stored once; records and bytes read back; a module
/// no job uses is deleted, and an unknown one is not found.
pub async fn modules_are_content_addressed(store: &dyn Store) {
    let a = module(b"\0asm first", true, T0);
    let b = module(b"\0asm second", false, T0 + 1);
    assert!(store.put_module(a.clone()).await.unwrap(), "new");
    assert!(
        !store.put_module(a.clone()).await.unwrap(),
        "stored already"
    );
    assert!(store.put_module(b.clone()).await.unwrap());
    assert_eq!(
        store.module_bytes(&a.id).await.unwrap().as_deref(),
        Some(&a.bytes[..])
    );
    let rec = store.module(&b.id).await.unwrap().unwrap();
    assert_eq!(
        rec,
        ModuleRecord {
            id: b.id.clone(),
            size: b.bytes.len() as u64,
            created_ms: T0 + 1,
            has_reduce: false,
            in_use: false,
        }
    );
    let list = store.list_modules().await.unwrap();
    let ids: Vec<&str> = list.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, [a.id.as_str(), b.id.as_str()], "oldest first");
    assert!(list[0].has_reduce);
    assert_eq!(
        store.delete_module(&a.id).await.unwrap(),
        ModuleDeletion::Deleted
    );
    assert_eq!(
        store.delete_module(&a.id).await.unwrap(),
        ModuleDeletion::NotFound
    );
    assert_eq!(store.module_bytes(&a.id).await.unwrap(), None);
    assert_eq!(store.module(&a.id).await.unwrap(), None);
    assert_eq!(store.list_modules().await.unwrap().len(), 1);
    // Uploaded again after its deletion, it is new again.
    assert!(store.put_module(a).await.unwrap());
}

/// A module stays while a job that uses it is being submitted or runs,
/// and may go once every such job has finished or was aborted.
pub async fn a_module_in_use_is_kept(store: &dyn Store) {
    let m = module(b"\0asm used", false, T0);
    store.put_module(m.clone()).await.unwrap();
    let in_use =
        |jobs: &[&str]| ModuleDeletion::InUse(jobs.iter().map(|j| j.to_string()).collect());

    // An upload in flight holds it, and stops holding it once aborted.
    wasm_job(store, "uploading", &m.id, false).await;
    assert_eq!(
        store.delete_module(&m.id).await.unwrap(),
        in_use(&["uploading"])
    );
    store.abort_job("uploading").await.unwrap();
    assert!(!store.module(&m.id).await.unwrap().unwrap().in_use);

    // A sealed job holds it until cancelled; a failed one no longer does.
    wasm_job(store, "runs", &m.id, true).await;
    wasm_job(store, "fails", &m.id, true).await;
    assert!(store.module(&m.id).await.unwrap().unwrap().in_use);
    assert!(store.list_modules().await.unwrap()[0].in_use);
    let ModuleDeletion::InUse(mut users) = store.delete_module(&m.id).await.unwrap() else {
        panic!("a module two jobs run was deleted");
    };
    users.sort();
    assert_eq!(users, ["fails", "runs"]);
    store.cancel_job("runs", T0 + 1).await.unwrap();
    store
        .finish_job(
            "fails",
            Err("wasm trap in item 0: unreachable".into()),
            T0 + 2,
        )
        .await
        .unwrap();
    assert!(!store.module(&m.id).await.unwrap().unwrap().in_use);
    assert_eq!(
        store.module_bytes(&m.id).await.unwrap().as_deref(),
        Some(&m.bytes[..]),
        "refusals changed nothing"
    );
    assert_eq!(
        store.delete_module(&m.id).await.unwrap(),
        ModuleDeletion::Deleted
    );
    // Other jobs are no module's users.
    job(store, "plain", 1, JobOptions::default()).await;
    assert!(store.list_modules().await.unwrap().is_empty());
}

/// A waiting job (a workflow's step, a schedule's tick) holds its module
/// too, until it finishes.
pub async fn a_waiting_job_keeps_its_module(store: &dyn Store) {
    let m = module(b"\0asm waited for", false, T0);
    store.put_module(m.clone()).await.unwrap();
    let waiting = NewJob {
        timing: Default::default(),
        id: "waits".into(),
        kernel: "wasm".into(),
        options: JobOptions::default(),
        reduce_plan: Vec::new(),
        created_ms: T0,
        module: Some(m.id.clone()),
    };
    assert!(store.create_fired_job("s", waiting).await.unwrap());
    assert_eq!(
        store.delete_module(&m.id).await.unwrap(),
        ModuleDeletion::InUse(vec!["waits".to_string()])
    );
    store.cancel_job("waits", T0 + 3).await.unwrap();
    assert_eq!(
        store.delete_module(&m.id).await.unwrap(),
        ModuleDeletion::Deleted
    );
}
