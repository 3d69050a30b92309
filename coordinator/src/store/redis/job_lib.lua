-- Shared by every per-job script. A job's keys share one hash slot, and a
-- per-job script touches only those keys (all passed in KEYS), so each
-- script stays valid on Redis Cluster.
--
-- A task of a job with redundancy N has N replicas (more when they
-- disagree), each with its own slot: index + replica * SLOT. A first
-- replica's slot is its task's index, so a job without redundancy keeps
-- one slot per task, named by its index.
--
-- m: the job's fields (hash); pend: slots leasable now (zset, score =
-- slot, so every task's first replica goes out before any second one);
-- wait: slots waiting out a retry backoff (zset, score = not-before ms);
-- live: leased slots (zset, score = deadline ms); t: per-slot and per-task
-- fields (hash: a<slot> attempts, l<slot> lease id, g<slot> agent,
-- e<slot> last error, r<slot> the agent that returned its result, x<slot>
-- its vote's verdict once its task is decided (1 agreed, 0 not); c<idx>
-- "work:mem", n<idx> replicas so far if the job is replicated); inp / outp: inputs and outputs by index (hash);
-- held: slots each agent holds in this job (hash); votes: returned
-- replicas of undecided tasks (hash: a<slot> agent, d<slot> digest,
-- c<slot> cpu ms, o<slot> output); redo: a failed job's slots that were
-- not done when it failed (zset), kept with its inputs and outputs for
-- FAILED_JOB_RETENTION_MS so that a retry (job_retry.lua) can run them.
local M, PEND, WAIT, LIVE, T, INP, OUTP, HELD, VOTES, REDO =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]

-- Task indexes are u32, so a slot's index and replica never mix. In a
-- replicated job a lease id carries its replica in its low bits (lease =
-- n * MAX_REPLICAS + replica), so results and heartbeats, which name
-- (index, lease), find their slot without a lookup; in a job without
-- redundancy the slot is the index and lease ids are plain.
local SLOT = 4294967296
local MAX_REPLICAS = __MAX_REPLICAS__

-- Slots and lease ids as Redis strings: formatted here, because Redis
-- writes some large Lua numbers in exponent form.
local function slot_of(idx, replica)
  return string.format('%d', replica * SLOT + idx)
end

-- The task index of a slot, as a string.
local function idx_of(slot)
  return string.format('%d', tonumber(slot) % SLOT)
end

-- The slot an agent's (index, lease) pair names in a job that is
-- replicated or not.
local function slot_for(idx, lease, replicated)
  if not replicated then
    return idx
  end
  return slot_of(tonumber(idx), (tonumber(lease) or 0) % MAX_REPLICAS)
end

local function redundancy()
  return tonumber(redis.call('HGET', M, 'redundancy') or '1')
end

-- The lease and retry rules (MAX_LEASE_SCAN, batch_full, overfills,
-- after_attempt, out_of_attempts_reason), generated from rules.rs so both
-- stores apply the same ones.
__RULES__
-- The first byte of an encoded TaskOutput of each kernel.
local KERNEL_TAG = {__KERNEL_TAGS__}
-- Generated from validation.rs, so both stores judge replicas alike:
-- agreeing votes a task needs and replicas disagreement may add, by
-- redundancy, and why a task whose replicas never agree fails.
local QUORUM = {__QUORUM__}
local EXTRA_REPLICAS = {__EXTRA_REPLICAS__}
local function give_up_reason(votes, distinct, quorum)
  return __GIVE_UP_REASON__
end

-- Open: not finished. A waiting job (a workflow step) has no tasks yet.
local function is_open(state)
  return state == 'queued' or state == 'running' or state == 'waiting'
end

-- Forgets a leased slot's lease (it must be in LIVE).
local function unlease(slot)
  local agent = redis.call('HGET', T, 'g' .. slot)
  if agent then
    if redis.call('HINCRBY', HELD, agent, -1) <= 0 then
      redis.call('HDEL', HELD, agent)
    end
  end
  redis.call('HDEL', T, 'l' .. slot, 'g' .. slot)
  redis.call('ZREM', LIVE, slot)
end

-- A job cancelled or expired (or a failed workflow step): none of its tasks
-- runs again, and its inputs and outputs are given back at once.
local function cancel_rest()
  for _, slot in ipairs(redis.call('ZRANGE', LIVE, 0, -1)) do
    unlease(slot)
  end
  redis.call('DEL', PEND, WAIT, LIVE, HELD, INP, OUTP, VOTES, REDO)
end

-- A job that failed: as cancel_rest, but its inputs and done outputs are
-- kept for FAILED_JOB_RETENTION_MS (Redis deletes them then), with the
-- slots not done in REDO, so that a retry can run those again. A
-- workflow's step is never retried: it gives everything back at once.
local function fail_job(reason, now)
  if not is_open(redis.call('HGET', M, 'state')) then
    return
  end
  redis.call('HSET', M, 'state', 'failed', 'error', reason, 'finished_ms', now)
  if redis.call('HEXISTS', M, 'workflow') == 1 then
    cancel_rest()
    return
  end
  redis.call('DEL', REDO)
  redis.call('ZUNIONSTORE', REDO, 3, PEND, WAIT, LIVE, 'WEIGHTS', 0, 0, 0)
  local failed = redis.call('HGET', M, 'failed_slot')
  if failed then
    redis.call('ZADD', REDO, 0, failed)
  end
  -- Returned replicas of undecided tasks: their votes go, so they run again.
  for _, field in ipairs(redis.call('HKEYS', VOTES)) do
    if string.sub(field, 1, 1) == 'a' then
      redis.call('ZADD', REDO, 0, string.sub(field, 2))
    end
  end
  for _, slot in ipairs(redis.call('ZRANGE', LIVE, 0, -1)) do
    unlease(slot)
  end
  redis.call('DEL', PEND, WAIT, LIVE, HELD, VOTES)
  for _, key in ipairs({INP, OUTP, REDO}) do
    redis.call('PEXPIRE', key, FAILED_JOB_RETENTION_MS)
  end
end

-- Ends a leased slot's attempt without a result: queued again (after a
-- backoff if asked) or, out of attempts, fails the job. Returns the time it
-- may run again, or false if it will not.
local function retry_or_fail(slot, reason, use_backoff, now)
  local attempts = tonumber(redis.call('HGET', T, 'a' .. slot) or '0')
  local max_attempts = tonumber(redis.call('HGET', M, 'max_attempts'))
  unlease(slot)
  redis.call('HSET', T, 'e' .. slot, reason)
  local not_before = after_attempt(attempts, max_attempts, use_backoff, now)
  if not not_before then
    -- The one slot that fails its job, for the job's page.
    redis.call('HSET', M, 'failed_slot', slot)
    redis.call('HINCRBY', M, 'failed', 1)
    fail_job(out_of_attempts_reason(idx_of(slot), attempts, reason), now)
    return false
  end
  if not_before <= now then
    redis.call('ZADD', PEND, slot, slot)
  else
    redis.call('ZADD', WAIT, not_before, slot)
  end
  return not_before
end

-- Appends the tasks in ARGV from `first` on (work, mem, input each), each
-- with as many replicas as the job's redundancy, leasable now or, with a
-- countdown (not_before_ms), from then on: held where retries wait out
-- their backoff, which the lease script releases alike. `open` false: the
-- job ended meanwhile, and its tasks are counted but never run nor hold
-- memory. Returns the job's new task count.
local function append_tasks(first, open)
  local f = redis.call('HMGET', M, 'total', 'redundancy', 'not_before_ms')
  local total = tonumber(f[1])
  local replicas = tonumber(f[2] or '1')
  local not_before = tonumber(f[3] or '0')
  local n = 0
  for i = first, #ARGV, 3 do
    local idx = total + n
    redis.call('HSET', T, 'c' .. idx, ARGV[i] .. ':' .. ARGV[i + 1], 'a' .. idx, 0)
    if replicas > 1 then
      redis.call('HSET', T, 'n' .. idx, replicas)
    end
    if open then
      -- The replicas share the one stored input.
      redis.call('HSET', INP, idx, ARGV[i + 2])
      for r = 0, replicas - 1 do
        local slot = slot_of(idx, r)
        if not_before > 0 then
          redis.call('ZADD', WAIT, not_before, slot)
        else
          redis.call('ZADD', PEND, slot, slot)
        end
      end
    end
    n = n + 1
  end
  redis.call('HSET', M, 'total', total + n)
  return total + n
end

-- Whether this agent holds this slot under this lease.
local function holds(slot, lease, agent)
  return redis.call('ZSCORE', LIVE, slot)
    and redis.call('HGET', T, 'l' .. slot) == lease
    and redis.call('HGET', T, 'g' .. slot) == agent
end

-- Whether the job has tasks to lease now or after a backoff: a job without
-- is left out of its queue's index, so leases do not scan past it.
local function has_work()
  return redis.call('ZCARD', PEND) + redis.call('ZCARD', WAIT) > 0
end

-- The job's queue index key, score and a new version of its place, for
-- the caller to put it back in its queue when it has work again: {} if it
-- has none. The version orders the caller's updates of the index: a
-- removal seen at an older version than a put-back is ignored.
local function queue_place()
  if not has_work() or not is_open(redis.call('HGET', M, 'state')) then
    return {}
  end
  local ver = redis.call('HINCRBY', M, 'qver', 1)
  local f = redis.call('HMGET', M, 'qkey', 'qscore')
  return {f[1], f[2], ver}
end

-- Gives a leased slot back without using up an attempt.
local function give_back(slot)
  unlease(slot)
  local a = tonumber(redis.call('HGET', T, 'a' .. slot) or '0')
  if a > 0 then
    redis.call('HSET', T, 'a' .. slot, a - 1)
  end
  redis.call('ZADD', PEND, slot, slot)
end

-- Whether this agent holds or voted on another replica of this slot's
-- task: a vote counts only if no agent casts two on one task.
local function has_a_say(slot, agent)
  local idx = idx_of(slot)
  local n = tonumber(redis.call('HGET', T, 'n' .. idx) or '1')
  for r = 0, n - 1 do
    local s = slot_of(tonumber(idx), r)
    if s ~= slot and (redis.call('HGET', T, 'g' .. s) == agent
        or redis.call('HGET', VOTES, 'a' .. s) == agent) then
      return true
    end
  end
  return false
end

