-- Appends tasks to an unsealed job, each with as many replicas as the
-- job's redundancy. ARGV: then per task: work, mem, input.
-- Returns {new task count, queue key, score, version}, or an error if the
-- job is not unsealed.
local f = redis.call('HMGET', M, 'sealed', 'total', 'state', 'redundancy')
if f[1] ~= '0' then
  return redis.error_reply('ERR_NOT_UNSEALED job is not an unsealed job')
end
local total = tonumber(f[2])
local replicas = tonumber(f[4] or '1')
-- A streamed job can fail (a chunk out of attempts) while its upload goes
-- on: the rest of its tasks must not run, nor hold memory.
local open = is_open(f[3])
local n = 0
for i = 1, #ARGV, 3 do
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
      redis.call('ZADD', PEND, slot, slot)
    end
  end
  n = n + 1
end
redis.call('HSET', M, 'total', total + n)
local place = queue_place()
return {total + n, place[1], place[2], place[3]}
