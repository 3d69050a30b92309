-- Cancels a job that has not finished. ARGV: now. Returns 1 if it changed.
-- A failed job stays failed, but what it kept for a retry goes now: a
-- cancel is how an operator frees space at once.
local now = ARGV[1]
local state = redis.call('HGET', M, 'state')
if state == 'failed' then
  redis.call('DEL', INP, OUTP, REDO)
end
if not is_open(state) then
  return 0
end
redis.call('HSET', M, 'state', 'cancelled', 'finished_ms', now)
cancel_rest()
return 1
