-- Records results of one job's tasks from one agent; each is accepted once,
-- from the lease holder. For a replicated job a result is a vote: the
-- task is judged (as validation::judge does) in this same script, so a
-- vote and the verdict it leads to are one atomic step.
-- ARGV: agent, now, mode, then per report: index, lease, kind ('d' done or
-- 'f' failed), output or reason, cpu ms (already clamped), and in mode 'v'
-- also the output's digest and whether the agent's answer stands alone
-- (1: trusted and no spot check; 0). A replicated job called in mode '-'
-- changes nothing and answers {-1}: the caller must supply the votes'
-- digests and the solo flags.
-- Returns {accepted, stale, requeued, ready, credit_tasks, credit_cpu,
-- earliest retry time or 0, finished, replicas added, voters of decided
-- tasks {agent, agreed (1/0), cpu ms, ...}, queue key, queue score,
-- version}.
local agent, now, mode = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local meta = redis.call('HMGET', M, 'kernel', 'redundancy')
local kernel = meta[1]
local replicas_wanted = tonumber(meta[2] or '1')
local replicated = replicas_wanted > 1
if kernel and replicated and mode ~= 'v' then
  return {-1}
end
local stride = 5
if mode == 'v' then
  stride = 7
end
local accepted, stale, requeued, credit_tasks, credit_cpu, due = 0, 0, 0, 0, 0, 0
local added = 0
local voters = {}
local any_done = false
-- Voters on a task whose replicas disagree, not yet resolved: each loses
-- its streak now (code 2), not only once the tie-break names the liar, so
-- that a liar cannot earn trust from quick agreements while its lies wait.
local function disputed(votes)
  for _, v in ipairs(votes) do
    voters[#voters + 1] = v.agent
    voters[#voters + 1] = 2
    voters[#voters + 1] = 0
  end
end

local function requeue(slot, reason)
  local at = retry_or_fail(slot, reason, true, now)
  if at then
    requeued = requeued + 1
    if due == 0 or at < due then
      due = at
    end
  end
end

-- Counts a replica's output as a vote on its task and judges the task.
local function count_vote(slot, output, digest, cpu, solo)
  unlease(slot)
  redis.call('HSET', T, 'r' .. slot, agent)
  redis.call('HSET', VOTES, 'a' .. slot, agent, 'd' .. slot, digest, 'c' .. slot, cpu,
    'o' .. slot, output)
  local idx = idx_of(slot)
  local n = tonumber(redis.call('HGET', T, 'n' .. idx) or replicas_wanted)
  local slots, votes, outstanding = {}, {}, 0
  for r = 0, n - 1 do
    local s = slot_of(tonumber(idx), r)
    slots[#slots + 1] = s
    local v = redis.call('HMGET', VOTES, 'a' .. s, 'd' .. s, 'c' .. s)
    if v[1] then
      votes[#votes + 1] = {slot = s, agent = v[1], digest = v[2], cpu = tonumber(v[3])}
    elseif redis.call('ZSCORE', PEND, s) or redis.call('ZSCORE', WAIT, s)
        or redis.call('ZSCORE', LIVE, s) then
      outstanding = outstanding + 1
    end
  end
  local answer = nil
  if solo and #votes == 1 then
    answer = votes[1].digest
  else
    local best, best_n = nil, 0
    for _, v in ipairs(votes) do
      local c = 0
      for _, w in ipairs(votes) do
        if w.digest == v.digest then
          c = c + 1
        end
      end
      if c > best_n then
        best, best_n = v.digest, c
      end
    end
    if best and best_n >= QUORUM[replicas_wanted] then
      answer = best
    end
  end
  if answer then
    for _, v in ipairs(votes) do
      if v.digest == answer then
        redis.call('HSET', OUTP, idx, redis.call('HGET', VOTES, 'o' .. v.slot))
        break
      end
    end
    redis.call('HINCRBY', M, 'done', 1)
    -- Replicas still out are no longer needed: their results come back stale.
    for _, s in ipairs(slots) do
      if redis.call('ZSCORE', LIVE, s) then
        unlease(s)
      end
      redis.call('ZREM', PEND, s)
      redis.call('ZREM', WAIT, s)
    end
    for _, v in ipairs(votes) do
      local agreed = 0
      if v.digest == answer then
        agreed = 1
      end
      voters[#voters + 1] = v.agent
      voters[#voters + 1] = agreed
      voters[#voters + 1] = v.cpu
      redis.call('HSET', T, 'x' .. v.slot, agreed)
      redis.call('HDEL', VOTES, 'a' .. v.slot, 'd' .. v.slot, 'c' .. v.slot, 'o' .. v.slot)
    end
    any_done = true
  elseif outstanding > 0 then
    return
  elseif n < replicas_wanted + EXTRA_REPLICAS[replicas_wanted] then
    -- Every replica is back and none has a majority: ask another agent.
    disputed(votes)
    local s = slot_of(tonumber(idx), n)
    redis.call('HSET', T, 'n' .. idx, n + 1)
    redis.call('ZADD', PEND, s, s)
    added = added + 1
  else
    local distinct, seen = 0, {}
    for _, v in ipairs(votes) do
      if not seen[v.digest] then
        seen[v.digest] = true
        distinct = distinct + 1
      end
    end
    disputed(votes)
    for _, v in ipairs(votes) do
      redis.call('HSET', T, 'x' .. v.slot, 0)
    end
    redis.call('HINCRBY', M, 'failed', 1)
    fail_job('task ' .. idx .. ': ' .. give_up_reason(#votes, distinct, QUORUM[replicas_wanted]), now)
  end
end

for i = 4, #ARGV, stride do
  local kind, payload = ARGV[i + 2], ARGV[i + 3]
  local slot = slot_for(ARGV[i], ARGV[i + 1], replicated)
  -- A vote may have failed the job (and so cancelled this lease) already.
  if not kernel or not holds(slot, ARGV[i + 1], agent) then
    stale = stale + 1
  elseif kind == 'd' then
    -- Another kernel's output would only fail the reduce later.
    if string.byte(payload, 1) ~= KERNEL_TAG[kernel] then
      requeue(slot, 'agent ' .. agent .. ' returned an invalid ' .. kernel .. ' output')
    elseif replicated then
      count_vote(slot, payload, ARGV[i + 5], tonumber(ARGV[i + 4]), ARGV[i + 6] == '1')
    else
      redis.call('HSET', OUTP, idx_of(slot), payload)
      redis.call('HSET', T, 'r' .. slot, agent)
      unlease(slot)
      redis.call('HINCRBY', M, 'done', 1)
      credit_tasks = credit_tasks + 1
      credit_cpu = credit_cpu + tonumber(ARGV[i + 4])
      any_done = true
    end
    accepted = accepted + 1
  else
    requeue(slot, payload)
    accepted = accepted + 1
  end
end
local ready = 0
local finished = 0
if kernel then
  local f = redis.call('HMGET', M, 'state', 'sealed', 'done', 'total')
  if any_done and is_open(f[1]) and f[2] == '1' and f[3] == f[4] then
    ready = 1
  end
  if not is_open(f[1]) then
    finished = 1
  end
end
local place = {}
if requeued > 0 or added > 0 then
  place = queue_place()
end
return {accepted, stale, requeued, ready, credit_tasks, credit_cpu, due, finished, added, voters,
  place[1], place[2], place[3]}
