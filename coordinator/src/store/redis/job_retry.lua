-- Retries a failed job: every replica of each task in REDO that is not
-- done is queued again with its attempts reset, done tasks and their
-- outputs stay, and the job is open again with its error cleared.
-- ARGV: now. Returns {'ok', requeued, ready (1 if every task is done),
-- queue key, queue score, version} or a refusal: {'none'}, {'workflow'},
-- {'state', state}, {'expired'}, {'gone'}.
local now = tonumber(ARGV[1])
local f = redis.call('HMGET', M, 'state', 'sealed', 'workflow', 'finished_ms', 'total', 'done',
  'started_ms', 'expires_ms')
if not f[1] or f[2] ~= '1' then
  return {'none'}
end
if f[3] then
  return {'workflow'}
end
if f[1] ~= 'failed' then
  return {'state', f[1]}
end
if f[8] and tonumber(f[8]) <= now then
  return {'expired'}
end
local total, done = tonumber(f[5]), tonumber(f[6])
if not failed_job_kept(tonumber(f[4] or '0'), now) or redis.call('HLEN', INP) < total then
  return {'gone'}
end
local replicas = redundancy()
local requeued = 0
local seen = {}
for _, slot in ipairs(redis.call('ZRANGE', REDO, 0, -1)) do
  local idx = idx_of(slot)
  if not seen[idx] and redis.call('HEXISTS', OUTP, idx) == 0 then
    seen[idx] = true
    -- Replicas that disagreement added go; the job's redundancy starts again.
    local n = tonumber(redis.call('HGET', T, 'n' .. idx) or replicas)
    for r = 0, math.max(n, replicas) - 1 do
      local s = slot_of(tonumber(idx), r)
      redis.call('HDEL', T, 'e' .. s, 'l' .. s, 'g' .. s, 'r' .. s, 'x' .. s)
      if r < replicas then
        redis.call('HSET', T, 'a' .. s, 0)
        redis.call('ZADD', PEND, s, s)
        requeued = requeued + 1
      else
        redis.call('HDEL', T, 'a' .. s)
      end
    end
    if replicas > 1 then
      redis.call('HSET', T, 'n' .. idx, replicas)
    end
  end
end
redis.call('DEL', REDO)
redis.call('PERSIST', INP)
redis.call('PERSIST', OUTP)
local state = 'queued'
if f[7] then
  state = 'running'
end
redis.call('HSET', M, 'state', state, 'failed', 0)
redis.call('HDEL', M, 'error', 'finished_ms', 'failed_slot')
local place = queue_place()
local ready = 0
if total > 0 and done == total then
  ready = 1
end
return {'ok', requeued, ready, place[1], place[2], place[3]}
