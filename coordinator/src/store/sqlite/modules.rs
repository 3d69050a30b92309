//! WebAssembly modules: stored whole in one row, kept while a job uses them.

use super::*;

/// The states in which a job still needs its module: those
/// `JobState::is_finished` calls unfinished (a waiting workflow step or
/// fired tick included; a job being submitted is `queued` while unsealed).
macro_rules! unfinished {
    () => {
        "('queued', 'running', 'waiting')"
    };
}

/// Whether an unfinished job runs module `id`, as an SQL expression over `id`.
const IN_USE: &str = concat!(
    "EXISTS (SELECT 1 FROM job_modules m JOIN jobs j ON j.seq = m.job_seq
     WHERE m.module = modules.id AND j.state IN ",
    unfinished!(),
    ")"
);

fn record_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ModuleRecord> {
    Ok(ModuleRecord {
        id: row.get(0)?,
        size: row.get::<_, i64>(1)? as u64,
        created_ms: row.get::<_, i64>(2)? as u64,
        has_reduce: row.get(3)?,
        in_use: row.get(4)?,
    })
}

pub(super) async fn put_module(store: &SqliteStore, module: NewModule) -> StoreResult<bool> {
    store
        .write(move |tx| {
            let new = tx.execute(
                "INSERT OR IGNORE INTO modules (id, size, created_ms, has_reduce, data)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    module.id,
                    module.bytes.len() as i64,
                    module.created_ms as i64,
                    module.has_reduce,
                    module.bytes,
                ],
            )?;
            Ok(new == 1)
        })
        .await
}

pub(super) async fn module_bytes(store: &SqliteStore, id: &str) -> StoreResult<Option<Vec<u8>>> {
    let id = id.to_string();
    store
        .read(move |c| {
            Ok(
                c.query_row("SELECT data FROM modules WHERE id = ?1", [id], |r| r.get(0))
                    .optional()?,
            )
        })
        .await
}

pub(super) async fn module(store: &SqliteStore, id: &str) -> StoreResult<Option<ModuleRecord>> {
    let id = id.to_string();
    store
        .read(move |c| {
            Ok(c.query_row(
                &format!(
                    "SELECT id, size, created_ms, has_reduce, {IN_USE} FROM modules WHERE id = ?1"
                ),
                [id],
                record_from_row,
            )
            .optional()?)
        })
        .await
}

pub(super) async fn list_modules(store: &SqliteStore) -> StoreResult<Vec<ModuleRecord>> {
    store
        .read(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT id, size, created_ms, has_reduce, {IN_USE} FROM modules
                 ORDER BY created_ms, id"
            ))?;
            let rows = st.query_map([], record_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
}

pub(super) async fn delete_module(store: &SqliteStore, id: &str) -> StoreResult<ModuleDeletion> {
    let id = id.to_string();
    store
        .write(move |tx| {
            let known: bool = tx.query_row(
                "SELECT COUNT(*) > 0 FROM modules WHERE id = ?1",
                [&id],
                |r| r.get(0),
            )?;
            if !known {
                return Ok(ModuleDeletion::NotFound);
            }
            let users: Vec<String> = tx
                .prepare(concat!(
                    "SELECT j.id FROM job_modules m JOIN jobs j ON j.seq = m.job_seq
                     WHERE m.module = ?1 AND j.state IN ",
                    unfinished!(),
                    " ORDER BY j.seq LIMIT 10"
                ))?
                .query_map([&id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            if !users.is_empty() {
                return Ok(ModuleDeletion::InUse(users));
            }
            tx.execute("DELETE FROM modules WHERE id = ?1", [&id])?;
            Ok(ModuleDeletion::Deleted)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SQL list of states that hold a module is `JobState`'s own rule
    /// (the one Redis applies), written out: they must not drift apart.
    #[test]
    fn the_states_that_hold_a_module_are_the_unfinished_ones() {
        let listed: Vec<&str> = unfinished!()
            .trim_matches(|c| c == '(' || c == ')')
            .split(", ")
            .map(|s| s.trim_matches('\''))
            .collect();
        let every = [
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
            JobState::Expired,
            JobState::Waiting,
        ];
        for state in every {
            // A new state stops this compiling: add it to `every` above.
            match state {
                JobState::Queued
                | JobState::Running
                | JobState::Succeeded
                | JobState::Failed
                | JobState::Cancelled
                | JobState::Expired
                | JobState::Waiting => {}
            }
            assert_eq!(
                listed.contains(&state.as_str()),
                !state.is_finished(),
                "{state:?}"
            );
        }
        assert_eq!(
            listed.len(),
            every.iter().filter(|s| !s.is_finished()).count()
        );
    }
}
