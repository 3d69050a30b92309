//! Join tokens and agents: enrolment, authentication, listing, drain
//! and removal.

use super::*;

pub(super) async fn create_token(
    store: &RedisStore,
    id: &str,
    secret_hash: [u8; 32],
    role: TokenRole,
    now_ms: u64,
) -> StoreResult<()> {
    let k = store.keys();
    let mut c =
        store
            .scripts()
            .token_create
            .call(&[k.shared("tokens"), k.shared("tokh"), k.token(id)]);
    c.arg(id)
        .arg(hex::encode(secret_hash))
        .arg(now_ms)
        .arg(role.as_str());
    store
        .one_failover_safe(c, &[&k.shared("tokens")])
        .await
        .map(drop)
}

/// The fields of a token's hash that [`token_record`] reads, in order.
const TOKEN_FIELDS: [&str; 4] = ["created_ms", "revoked", "uses", "role"];

/// A token from its [`TOKEN_FIELDS`], if it exists.
fn token_record(id: String, row: Value) -> StoreResult<Option<TokenRecord>> {
    let f = reply_items(row);
    if f.first().and_then(reply_string).is_none() {
        return Ok(None);
    }
    let role = f.get(3).and_then(reply_string);
    Ok(Some(TokenRecord {
        role: TokenRole::parse(role.as_deref())
            .ok_or_else(|| corrupt(format!("token {id} has an unknown role {role:?}")))?,
        id,
        created_ms: f.first().map(reply_i64).unwrap_or(0) as u64,
        revoked: f.get(1).map(reply_i64).unwrap_or(0) != 0,
        uses: f.get(2).map(reply_i64).unwrap_or(0) as u64,
    }))
}

pub(super) async fn token_by_hash(
    store: &RedisStore,
    secret_hash: [u8; 32],
) -> StoreResult<Option<TokenRecord>> {
    let k = store.keys();
    let mut c = ::redis::cmd("HGET");
    c.arg(k.shared("tokh")).arg(hex::encode(secret_hash));
    let Some(id) = reply_string(&store.one(c).await?) else {
        return Ok(None);
    };
    let mut c = ::redis::cmd("HMGET");
    c.arg(k.token(&id)).arg(&TOKEN_FIELDS[..]);
    token_record(id, store.one(c).await?)
}

pub(super) async fn list_tokens(store: &RedisStore) -> StoreResult<Vec<TokenRecord>> {
    let k = store.keys();
    let ids: Vec<String> = reply_items(
        store
            .one({
                let mut c = ::redis::cmd("ZRANGE");
                c.arg(k.shared("tokens")).arg(0).arg(-1);
                c
            })
            .await?,
    )
    .iter()
    .filter_map(reply_string)
    .collect();
    let mut p = ::redis::pipe();
    for id in &ids {
        p.cmd("HMGET").arg(k.token(id)).arg(&TOKEN_FIELDS[..]);
    }
    let rows: Vec<Value> = store.run(&p).await?;
    let mut tokens = Vec::new();
    for (id, row) in ids.into_iter().zip(rows) {
        tokens.extend(token_record(id, row)?);
    }
    Ok(tokens)
}

pub(super) async fn revoke_token(store: &RedisStore, id: &str) -> StoreResult<bool> {
    let key = store.keys().token(id);
    let c = store
        .scripts()
        .token_revoke
        .call(std::slice::from_ref(&key));
    Ok(reply_i64(&store.one_failover_safe(c, &[&key]).await?) == 1)
}

pub(super) async fn enrol_agent(
    store: &RedisStore,
    token_hash: [u8; 32],
    agent: NewAgent,
) -> StoreResult<Result<(), EnrolRefusal>> {
    let k = store.keys();
    let capacity = serde_json::to_string(&agent.capacity).map_err(|e| corrupt(e.to_string()))?;
    let mut c = store.scripts().agent_enrol.call(&[
        k.shared("tokh"),
        k.shared("agents"),
        k.agent(&agent.id),
    ]);
    c.arg(hex::encode(token_hash))
        .arg(k.shared("t:"))
        .arg(&agent.id)
        .arg(&agent.secret_hash[..])
        .arg(capacity)
        .arg(agent.now_ms);
    let enrolled = store.one_failover_safe(c, &[&k.shared("agents")]).await?;
    Ok(match reply_i64(&enrolled) {
        0 => Ok(()),
        1 => Err(EnrolRefusal::UnknownToken),
        3 => Err(EnrolRefusal::NotAJoinToken),
        _ => Err(EnrolRefusal::RevokedToken),
    })
}

pub(super) async fn agent_auth(store: &RedisStore, id: &str) -> StoreResult<Option<AgentAuth>> {
    let mut c = ::redis::cmd("HMGET");
    c.arg(store.keys().agent(id)).arg("secret").arg("state");
    let mut f = reply_items(store.one(c).await?).into_iter();
    let (Some(secret), Some(state)) = (f.next(), f.next()) else {
        return Ok(None);
    };
    let Some(secret) = reply_bytes(secret) else {
        return Ok(None);
    };
    let secret_hash: [u8; 32] = secret
        .try_into()
        .map_err(|_| corrupt("secret hash is not 32 bytes"))?;
    Ok(Some(AgentAuth {
        secret_hash,
        state: reply_string(&state)
            .and_then(|s| AgentState::parse(&s))
            .unwrap_or(AgentState::Removed),
    }))
}

pub(super) async fn list_agents(store: &RedisStore) -> StoreResult<Vec<AgentRecord>> {
    let k = store.keys();
    let ids: Vec<String> = reply_items(
        store
            .one({
                let mut c = ::redis::cmd("ZRANGE");
                c.arg(k.shared("agents")).arg(0).arg(-1);
                c
            })
            .await?,
    )
    .iter()
    .filter_map(reply_string)
    .collect();
    let active = store.active_jobs().await?;
    let mut p = ::redis::pipe();
    for id in &ids {
        p.cmd("HMGET").arg(k.agent(id)).arg(&[
            "capacity",
            "state",
            "token",
            "enrolled_ms",
            "last_seen_ms",
            "tasks_done",
            "cpu_ms",
            "results_valid",
            "results_invalid",
            "valid_streak",
        ]);
    }
    for (job, _) in &active {
        p.cmd("HGETALL").arg(&k.job(job)[7]);
    }
    let mut rows: Vec<Value> = store.run(&p).await?;
    let held_rows = rows.split_off(ids.len());
    let mut held: HashMap<String, u64> = HashMap::new();
    for row in held_rows {
        for (agent, n) in reply_pairs(row) {
            *held.entry(agent).or_default() += n.parse::<u64>().unwrap_or(0);
        }
    }
    Ok(ids
        .into_iter()
        .zip(rows)
        .filter_map(|(id, row)| {
            let f = reply_items(row);
            let capacity = reply_string(f.first()?)?;
            Some(AgentRecord {
                capacity: serde_json::from_str(&capacity).unwrap_or_default(),
                state: AgentState::parse(&reply_string(&f[1])?).unwrap_or(AgentState::Removed),
                token_id: reply_string(&f[2]).unwrap_or_default(),
                enrolled_ms: reply_i64(&f[3]) as u64,
                last_seen_ms: reply_i64(&f[4]) as u64,
                tasks_done: reply_i64(&f[5]) as u64,
                cpu_ms: reply_i64(&f[6]) as u64,
                results_valid: reply_i64(&f[7]) as u64,
                results_invalid: reply_i64(&f[8]) as u64,
                trust: validation::TrustRecord {
                    valid: reply_i64(&f[7]) as u64,
                    invalid: reply_i64(&f[8]) as u64,
                    streak: reply_i64(&f[9]) as u64,
                }
                .trust(),
                leased: held.get(&id).copied().unwrap_or(0),
                id,
            })
        })
        .collect())
}

pub(super) async fn drain_agent(store: &RedisStore, id: &str) -> StoreResult<bool> {
    let mut c = store
        .scripts()
        .agent_set_state
        .call(&[store.keys().agent(id)]);
    c.arg("draining").arg("active");
    let key = store.keys().agent(id);
    Ok(reply_i64(&store.one_failover_safe(c, &[&key]).await?) == 1)
}

pub(super) async fn remove_agent(store: &RedisStore, id: &str, _now_ms: u64) -> StoreResult<bool> {
    let mut c = store
        .scripts()
        .agent_set_state
        .call(&[store.keys().agent(id)]);
    c.arg("removed").arg("active").arg("draining");
    // A removal is a revocation: a failover must not undo it.
    let key = store.keys().agent(id);
    let changed = reply_i64(&store.one_failover_safe(c, &[&key]).await?) == 1;
    // The operator took the agent away; that is no fault of the tasks
    // it held, so they go back without losing an attempt.
    let active = store.active_jobs().await?;
    if !active.is_empty() {
        let mut p = ::redis::pipe();
        for (job, _) in &active {
            let mut c = store.scripts().release.call(&store.keys().job(job));
            c.arg(id);
            p.add_command(c);
        }
        let rows: Vec<Value> = store.run(&p).await?;
        let mut p = ::redis::pipe();
        for ((job, _), row) in active.iter().zip(rows) {
            store.put_back(&mut p, job, &reply_items(row), 1);
        }
        store.bump_epoch(&mut p);
        store.run::<()>(&p).await?;
    }
    Ok(changed)
}
