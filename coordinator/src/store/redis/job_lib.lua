-- Shared by every per-job script. A job's keys share one hash slot, and a
-- per-job script touches only those keys (all passed in KEYS), so each
-- script stays valid on Redis Cluster.
--
-- m: the job's fields (hash); pend: tasks leasable now (zset, score = index);
-- wait: tasks waiting out a retry backoff (zset, score = not-before ms);
-- live: leased tasks (zset, score = deadline ms); t: per-task fields
-- (hash: a<i> attempts, c<i> "work:mem", l<i> lease id, g<i> agent,
-- e<i> last error); inp / outp: inputs and outputs by index (hash);
-- held: tasks each agent holds in this job (hash).
local M, PEND, WAIT, LIVE, T, INP, OUTP, HELD =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]

-- Generated from retry_backoff_ms, so the two never disagree.
local BACKOFF = {__BACKOFF__}
-- The first byte of an encoded TaskOutput of each kernel.
local KERNEL_TAG = {__KERNEL_TAGS__}

local function is_open(state)
  return state == 'queued' or state == 'running'
end

-- Forgets a leased task's lease (it must be in LIVE).
local function unlease(idx)
  local agent = redis.call('HGET', T, 'g' .. idx)
  if agent then
    if redis.call('HINCRBY', HELD, agent, -1) <= 0 then
      redis.call('HDEL', HELD, agent)
    end
  end
  redis.call('HDEL', T, 'l' .. idx, 'g' .. idx)
  redis.call('ZREM', LIVE, idx)
end

-- A job that ended without success: none of its tasks runs again, and its
-- inputs and outputs are given back at once.
local function cancel_rest()
  for _, idx in ipairs(redis.call('ZRANGE', LIVE, 0, -1)) do
    unlease(idx)
  end
  redis.call('DEL', PEND, WAIT, LIVE, HELD, INP, OUTP)
end

local function fail_job(reason, now)
  if not is_open(redis.call('HGET', M, 'state')) then
    return
  end
  redis.call('HSET', M, 'state', 'failed', 'error', reason, 'finished_ms', now)
  cancel_rest()
end

-- Ends a leased task's attempt without a result: queued again (after a
-- backoff if asked) or, out of attempts, fails the job. Returns the time it
-- may run again, or false if it will not.
local function retry_or_fail(idx, reason, use_backoff, now)
  local attempts = tonumber(redis.call('HGET', T, 'a' .. idx) or '0')
  local max_attempts = tonumber(redis.call('HGET', M, 'max_attempts'))
  unlease(idx)
  redis.call('HSET', T, 'e' .. idx, reason)
  if attempts >= max_attempts then
    redis.call('HINCRBY', M, 'failed', 1)
    fail_job('task ' .. idx .. ' failed after ' .. attempts .. ' attempt(s): ' .. reason, now)
    return false
  end
  local not_before = now
  if use_backoff then
    local i = attempts
    if i < 1 then i = 1 end
    if i > #BACKOFF then i = #BACKOFF end
    not_before = now + BACKOFF[i]
  end
  if not_before <= now then
    redis.call('ZADD', PEND, idx, idx)
  else
    redis.call('ZADD', WAIT, not_before, idx)
  end
  return not_before
end

-- Whether this agent holds this task under this lease.
local function holds(idx, lease, agent)
  return redis.call('ZSCORE', LIVE, idx)
    and redis.call('HGET', T, 'l' .. idx) == lease
    and redis.call('HGET', T, 'g' .. idx) == agent
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

-- Gives a leased task back without using up an attempt.
local function give_back(idx)
  unlease(idx)
  local a = tonumber(redis.call('HGET', T, 'a' .. idx) or '0')
  if a > 0 then
    redis.call('HSET', T, 'a' .. idx, a - 1)
  end
  redis.call('ZADD', PEND, idx, idx)
end

