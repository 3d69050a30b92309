-- Cancels a job that has not finished. ARGV: now. Returns 1 if it changed.
local now = ARGV[1]
if not is_open(redis.call('HGET', M, 'state')) then
  return 0
end
redis.call('HSET', M, 'state', 'cancelled', 'finished_ms', now)
cancel_rest()
return 1
