-- Pauses or resumes a schedule that exists (a deleted one stays deleted),
-- moving its next tick only when one is given, and only forward: a pause
-- keeps the tick a coordinator may be claiming at that moment, and a
-- resume never moves back over a tick claimed meanwhile.
-- KEYS: the schedule's hash. ARGV: paused (0 or 1), next tick or ''.
-- Returns 1 if the schedule exists.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'paused', ARGV[1])
if ARGV[2] ~= '' then
  local now = tonumber(redis.call('HGET', KEYS[1], 'next_run_ms') or '0')
  if tonumber(ARGV[2]) > now then
    redis.call('HSET', KEYS[1], 'next_run_ms', ARGV[2])
  end
end
return 1
