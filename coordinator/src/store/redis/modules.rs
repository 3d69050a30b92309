//! WebAssembly modules: a hash per module (its bytes and record), an index
//! by upload time, and per module the set of jobs that use it, all in the
//! shared slot so that one script deletes a module only while no job is in
//! that set. Whether a user still needs the module is read from its job,
//! in its own slot, by the coordinator, which prunes finished users on
//! every read.

use super::*;

/// The fields of a module's hash that make its record.
const RECORD_FIELDS: [&str; 3] = ["size", "created_ms", "has_reduce"];

/// Whether a job still needs its module, from its `state` and whether it
/// is an upload in flight: unfinished jobs do, and so does an upload whose
/// record is not written yet; a job with neither was aborted.
fn still_needs(state: Option<&str>, uploading: bool) -> bool {
    match state {
        Some(s) => JobState::parse(s).is_some_and(|s| !s.is_finished()),
        None => uploading,
    }
}

impl RedisStore {
    /// The users of module `id` split into those that still need it and
    /// those that are finished or gone.
    async fn module_users(&self, id: &str) -> StoreResult<(Vec<String>, Vec<String>)> {
        let k = self.keys();
        let mut c = ::redis::cmd("SMEMBERS");
        c.arg(k.module_users(id));
        let users: Vec<String> = reply_items(self.one(c).await?)
            .iter()
            .filter_map(reply_string)
            .collect();
        if users.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut p = ::redis::pipe();
        for u in &users {
            p.cmd("HGET").arg(k.meta(u)).arg("state");
            p.cmd("HEXISTS").arg(k.shared("unsealed")).arg(u);
        }
        let rows: Vec<Value> = self.run(&p).await?;
        let (mut busy, mut gone) = (Vec::new(), Vec::new());
        for (u, pair) in users.into_iter().zip(rows.chunks(2)) {
            let state = reply_string(&pair[0]);
            if still_needs(state.as_deref(), reply_i64(&pair[1]) == 1) {
                busy.push(u);
            } else {
                gone.push(u);
            }
        }
        // A finished job never needs its module again: forget it now, so
        // that the set stays the size of the unfinished jobs, whoever reads
        // it (a submission's check, a tick, the dashboard), not of every
        // job the module ever ran.
        if !gone.is_empty() {
            let mut c = ::redis::cmd("SREM");
            c.arg(k.module_users(id)).arg(&gone);
            self.one(c).await?;
        }
        Ok((busy, gone))
    }

    fn module_record(&self, id: &str, fields: &[Value], in_use: bool) -> Option<ModuleRecord> {
        let size = reply_opt_i64(fields.first()?)?;
        Some(ModuleRecord {
            id: id.to_string(),
            size: size as u64,
            created_ms: reply_i64(fields.get(1)?) as u64,
            has_reduce: reply_i64(fields.get(2)?) == 1,
            in_use,
        })
    }
}

pub(super) async fn put_module(store: &RedisStore, module: NewModule) -> StoreResult<bool> {
    let k = store.keys();
    let mut c = store
        .scripts()
        .module_put
        .call(&[k.shared("modules"), k.module(&module.id)]);
    c.arg(&module.id)
        .arg(&module.bytes)
        .arg(module.bytes.len())
        .arg(module.created_ms)
        .arg(module.has_reduce as u8);
    Ok(reply_i64(&store.one(c).await?) == 1)
}

pub(super) async fn module_bytes(store: &RedisStore, id: &str) -> StoreResult<Option<Vec<u8>>> {
    let mut c = ::redis::cmd("HGET");
    c.arg(store.keys().module(id)).arg("data");
    Ok(reply_bytes(store.one(c).await?))
}

pub(super) async fn module(store: &RedisStore, id: &str) -> StoreResult<Option<ModuleRecord>> {
    let mut c = ::redis::cmd("HMGET");
    c.arg(store.keys().module(id)).arg(&RECORD_FIELDS[..]);
    let fields = reply_items(store.one(c).await?);
    if reply_opt_i64(fields.first().unwrap_or(&Value::Nil)).is_none() {
        return Ok(None);
    }
    let (busy, _) = store.module_users(id).await?;
    Ok(store.module_record(id, &fields, !busy.is_empty()))
}

pub(super) async fn list_modules(store: &RedisStore) -> StoreResult<Vec<ModuleRecord>> {
    let k = store.keys();
    let mut c = ::redis::cmd("ZRANGE");
    c.arg(k.shared("modules")).arg(0).arg(-1);
    let ids: Vec<String> = reply_items(store.one(c).await?)
        .iter()
        .filter_map(reply_string)
        .collect();
    let mut p = ::redis::pipe();
    for id in &ids {
        p.cmd("HMGET").arg(k.module(id)).arg(&RECORD_FIELDS[..]);
    }
    let rows: Vec<Value> = store.run(&p).await?;
    let mut out = Vec::with_capacity(ids.len());
    for (id, row) in ids.iter().zip(rows) {
        let (busy, _) = store.module_users(id).await?;
        // A module deleted between the two reads is not listed.
        if let Some(r) = store.module_record(id, &reply_items(row), !busy.is_empty()) {
            out.push(r);
        }
    }
    Ok(out)
}

/// Rounds of pruning finished users before giving up: each round only
/// repeats when jobs began using the module meanwhile.
const DELETE_ROUNDS: usize = 3;

pub(super) async fn delete_module(store: &RedisStore, id: &str) -> StoreResult<ModuleDeletion> {
    let k = store.keys();
    let keys = [k.shared("modules"), k.module(id), k.module_users(id)];
    let mut busy = Vec::new();
    for _ in 0..DELETE_ROUNDS {
        let (now_busy, gone) = store.module_users(id).await?;
        busy = now_busy;
        let mut c = store.scripts().module_delete.call(&keys);
        c.arg(id).arg(&gone);
        let reply = reply_items(store.one(c).await?);
        match reply.first().map(reply_i64) {
            Some(0) => return Ok(ModuleDeletion::NotFound),
            Some(1) => return Ok(ModuleDeletion::Deleted),
            Some(2) => {
                let left: Vec<String> = reply[1..].iter().filter_map(reply_string).collect();
                // Every user left was found unfinished: the module is in use.
                if left.iter().all(|u| busy.contains(u)) {
                    busy.truncate(10);
                    return Ok(ModuleDeletion::InUse(busy));
                }
            }
            _ => return Err(corrupt("malformed module delete reply")),
        }
    }
    busy.truncate(10);
    Ok(ModuleDeletion::InUse(busy))
}
