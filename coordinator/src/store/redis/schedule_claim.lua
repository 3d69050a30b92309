-- Claims a schedule's tick, once: moves next_run_ms on from exactly the
-- tick read, and records the tick's job id first among the last jobs.
-- KEYS: the schedule's hash. ARGV: tick, next tick, job id, now, how many
-- last jobs to keep. Returns 1 if this call claimed the tick.
local f = redis.call('HMGET', KEYS[1], 'paused', 'next_run_ms', 'last_jobs')
if f[1] ~= '0' or f[2] ~= ARGV[1] then
  return 0
end
local last = cjson.decode(f[3] or '[]')
table.insert(last, 1, ARGV[3])
while #last > tonumber(ARGV[5]) do
  table.remove(last)
end
redis.call('HSET', KEYS[1], 'next_run_ms', ARGV[2], 'claimed_ms', ARGV[4],
  'last_jobs', cjson.encode(last))
return 1
