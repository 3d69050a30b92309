-- Records results of one job's tasks from one agent; each is accepted once,
-- from the lease holder.
-- ARGV: agent, now, then per report: index, lease, kind ('d' done or 'f'
-- failed), output or reason, cpu ms (already clamped).
-- Returns {accepted, stale, requeued, ready, credit_tasks, credit_cpu,
-- earliest retry time or 0, finished, queue key, queue score}.
local agent, now = ARGV[1], tonumber(ARGV[2])
local kernel = redis.call('HGET', M, 'kernel')
local accepted, stale, requeued, credit_tasks, credit_cpu, due = 0, 0, 0, 0, 0, 0
local any_done = false
local function requeue(idx, reason)
  local at = retry_or_fail(idx, reason, true, now)
  if at then
    requeued = requeued + 1
    if due == 0 or at < due then
      due = at
    end
  end
end
for i = 3, #ARGV, 5 do
  local idx, lease, kind, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if not kernel or not holds(idx, lease, agent) then
    stale = stale + 1
  elseif kind == 'd' then
    -- Another kernel's output would only fail the reduce later.
    if string.byte(payload, 1) ~= KERNEL_TAG[kernel] then
      requeue(idx, 'agent ' .. agent .. ' returned an invalid ' .. kernel .. ' output')
    else
      redis.call('HSET', OUTP, idx, payload)
      unlease(idx)
      redis.call('HINCRBY', M, 'done', 1)
      credit_tasks = credit_tasks + 1
      credit_cpu = credit_cpu + tonumber(ARGV[i + 4])
      any_done = true
    end
    accepted = accepted + 1
  else
    requeue(idx, payload)
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
if requeued > 0 then
  place = queue_place()
end
return {accepted, stale, requeued, ready, credit_tasks, credit_cpu, due, finished, place[1], place[2], place[3]}
