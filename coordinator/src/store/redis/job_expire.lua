-- Returns the job's expired leases to the queue (no backoff: the agent, not
-- the task, failed), or fails the job when a task is out of attempts.
-- ARGV: now. Returns {expired, finished, queue key, score, version}; the
-- queue place whenever the job has work, which also repairs an index entry
-- lost to a crash.
local now = tonumber(ARGV[1])
local state = redis.call('HGET', M, 'state')
if not state then
  return {0, 1}
end
local expired = redis.call('ZRANGEBYSCORE', LIVE, '-inf', '(' .. now)
for _, slot in ipairs(expired) do
  -- An earlier expiry in this loop may have failed the job already.
  if redis.call('ZSCORE', LIVE, slot) then
    local agent = redis.call('HGET', T, 'g' .. slot) or '?'
    retry_or_fail(slot, 'lease expired: agent ' .. agent .. ' stopped responding', false, now)
  end
end
local finished = 0
if not is_open(redis.call('HGET', M, 'state')) then
  finished = 1
end
local place = queue_place()
return {#expired, finished, place[1], place[2], place[3]}
