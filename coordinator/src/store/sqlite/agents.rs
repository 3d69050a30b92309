//! Join tokens and agents: enrolment, authentication, listing, drain
//! and removal.

use super::*;

pub(super) async fn create_token(
    store: &SqliteStore,
    id: &str,
    secret_hash: [u8; 32],
    role: TokenRole,
    now_ms: u64,
) -> StoreResult<()> {
    let id = id.to_string();
    store
        .write(move |tx| {
            tx.execute(
                "INSERT INTO tokens (id, secret_hash, created_ms, role) VALUES (?1, ?2, ?3, ?4)",
                params![id, secret_hash.to_vec(), now_ms as i64, role.as_str()],
            )?;
            Ok(())
        })
        .await
}

const TOKEN_COLUMNS: &str = "id, created_ms, revoked, uses, role";

fn token_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    let role: String = r.get(4)?;
    Ok(TokenRecord {
        id: r.get(0)?,
        role: TokenRole::parse(Some(&role)).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                4,
                rusqlite::types::Type::Text,
                format!("unknown token role {role:?}").into(),
            )
        })?,
        created_ms: r.get::<_, i64>(1)? as u64,
        revoked: r.get::<_, i64>(2)? != 0,
        uses: r.get::<_, i64>(3)? as u64,
    })
}

pub(super) async fn list_tokens(store: &SqliteStore) -> StoreResult<Vec<TokenRecord>> {
    store
        .read(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_ms"
            ))?;
            let rows = st.query_map([], token_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
}

pub(super) async fn token_by_hash(
    store: &SqliteStore,
    secret_hash: [u8; 32],
) -> StoreResult<Option<TokenRecord>> {
    store
        .read(move |c| {
            Ok(c.query_row(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE secret_hash = ?1"),
                [secret_hash.to_vec()],
                token_from_row,
            )
            .optional()?)
        })
        .await
}

pub(super) async fn revoke_token(store: &SqliteStore, id: &str) -> StoreResult<bool> {
    let id = id.to_string();
    store
        .write(move |tx| Ok(tx.execute("UPDATE tokens SET revoked = 1 WHERE id = ?1", [id])? > 0))
        .await
}

pub(super) async fn enrol_agent(
    store: &SqliteStore,
    token_hash: [u8; 32],
    agent: NewAgent,
) -> StoreResult<Result<(), EnrolRefusal>> {
    store.write(move |tx| {
        let token: Option<(String, i64, String)> = tx
            .query_row(
                "SELECT id, revoked, role FROM tokens WHERE secret_hash = ?1",
                [token_hash.to_vec()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let token_id = match token {
            None => return Ok(Err(EnrolRefusal::UnknownToken)),
            Some((_, _, role)) if role != TokenRole::Join.as_str() => {
                return Ok(Err(EnrolRefusal::NotAJoinToken))
            }
            Some((_, revoked, _)) if revoked != 0 => return Ok(Err(EnrolRefusal::RevokedToken)),
            Some((id, _, _)) => id,
        };
        tx.execute("UPDATE tokens SET uses = uses + 1 WHERE id = ?1", [&token_id])?;
        let capacity = serde_json::to_string(&agent.capacity)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        tx.execute(
            "INSERT INTO agents (id, secret_hash, capacity, state, token_id, enrolled_ms, last_seen_ms)
             VALUES (?1, ?2, ?3, 'active', ?4, ?5, ?5)",
            params![agent.id, agent.secret_hash.to_vec(), capacity, token_id, agent.now_ms as i64],
        )?;
        Ok(Ok(()))
    })
    .await
}

pub(super) async fn agent_auth(store: &SqliteStore, id: &str) -> StoreResult<Option<AgentAuth>> {
    let id = id.to_string();
    store
        .read(move |c| {
            let row: Option<(Vec<u8>, String)> = c
                .query_row(
                    "SELECT secret_hash, state FROM agents WHERE id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            row.map(|(hash, state)| {
                Ok(AgentAuth {
                    secret_hash: hash_of(hash)?,
                    state: AgentState::parse(&state).unwrap_or(AgentState::Removed),
                })
            })
            .transpose()
        })
        .await
}

pub(super) async fn list_agents(store: &SqliteStore) -> StoreResult<Vec<AgentRecord>> {
    store
        .read(|c| {
            let mut st = c.prepare(
                "SELECT a.id, a.capacity, a.state, a.token_id, a.enrolled_ms, a.last_seen_ms,
                    a.tasks_done, a.cpu_ms,
                    (SELECT COUNT(*) FROM tasks t WHERE t.state = 1 AND t.agent = a.id),
                    a.results_valid, a.results_invalid, a.valid_streak
             FROM agents a ORDER BY a.enrolled_ms",
            )?;
            let rows = st.query_map([], |r| {
                let capacity: String = r.get(1)?;
                let state: String = r.get(2)?;
                Ok(AgentRecord {
                    id: r.get(0)?,
                    capacity: serde_json::from_str(&capacity).unwrap_or_default(),
                    state: AgentState::parse(&state).unwrap_or(AgentState::Removed),
                    token_id: r.get(3)?,
                    enrolled_ms: r.get::<_, i64>(4)? as u64,
                    last_seen_ms: r.get::<_, i64>(5)? as u64,
                    tasks_done: r.get::<_, i64>(6)? as u64,
                    cpu_ms: r.get::<_, i64>(7)? as u64,
                    leased: r.get::<_, i64>(8)? as u64,
                    results_valid: r.get::<_, i64>(9)? as u64,
                    results_invalid: r.get::<_, i64>(10)? as u64,
                    trust: validation::TrustRecord {
                        valid: r.get::<_, i64>(9)? as u64,
                        invalid: r.get::<_, i64>(10)? as u64,
                        streak: r.get::<_, i64>(11)? as u64,
                    }
                    .trust(),
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
}

pub(super) async fn drain_agent(store: &SqliteStore, id: &str) -> StoreResult<bool> {
    let id = id.to_string();
    store
        .write(move |tx| {
            Ok(tx.execute(
                "UPDATE agents SET state = 'draining' WHERE id = ?1 AND state = 'active'",
                [id],
            )? > 0)
        })
        .await
}

pub(super) async fn remove_agent(store: &SqliteStore, id: &str, _now_ms: u64) -> StoreResult<bool> {
    let id = id.to_string();
    store
        .write(move |tx| {
            let changed = tx.execute(
                "UPDATE agents SET state = 'removed' WHERE id = ?1 AND state != 'removed'",
                [&id],
            )?;
            // The operator took the agent away; that is no fault of the
            // tasks it held, so they go back without losing an attempt.
            tx.execute(
                "UPDATE tasks SET state = ?2, attempts = MAX(attempts - 1, 0),
                 lease_id = NULL, agent = NULL, deadline_ms = NULL
             WHERE state = ?3 AND agent = ?1",
                params![id, PENDING, LEASED],
            )?;
            // Its votes on undecided tasks go too: an operator removes an
            // agent because its results are not to be believed. Those
            // replicas run again on other agents.
            tx.execute(
                "UPDATE tasks SET state = ?2, agent = NULL
             WHERE state = ?3 AND agent = ?1 AND EXISTS (
                 SELECT 1 FROM replica_outputs r WHERE r.job_seq = tasks.job_seq
                 AND r.idx = tasks.idx AND r.replica = tasks.replica)",
                params![id, PENDING, DONE],
            )?;
            tx.execute("DELETE FROM replica_outputs WHERE agent = ?1", [&id])?;
            Ok(changed > 0)
        })
        .await
}
