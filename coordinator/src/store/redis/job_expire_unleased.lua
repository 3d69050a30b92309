-- Ends a job past its `expires` time that still has a task never leased.
-- ARGV: now, reason. Returns {1, queue} if it expired now, {0} if it never
-- will (finished, or every task leased once), {2} if not yet (not due, or
-- an upload still going).
local now, reason = tonumber(ARGV[1]), ARGV[2]
local f = redis.call('HMGET', M, 'state', 'expires_ms', 'sealed', 'queue')
if not is_open(f[1]) or not f[2] then
  return {0}
end
-- A waiting job (a workflow step) has no tasks yet: its time comes later.
if now < tonumber(f[2]) or f[3] ~= '1' or f[1] == 'waiting' then
  return {2}
end
for _, key in ipairs({PEND, WAIT}) do
  for _, slot in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    if tonumber(redis.call('HGET', T, 'a' .. slot) or '0') == 0 then
      redis.call('HSET', M, 'state', 'expired', 'error', reason, 'finished_ms', now)
      cancel_rest()
      return {1, f[4]}
    end
  end
end
return {0}
