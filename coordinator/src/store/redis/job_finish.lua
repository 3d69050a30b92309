-- Records a job's reduced result or why the reduce failed. The first call
-- wins: several coordinators may reduce the same job. ARGV: ok (1 or 0),
-- result or reason, now. Returns 1 if this call finished the job.
local ok, payload, now = ARGV[1], ARGV[2], ARGV[3]
if not is_open(redis.call('HGET', M, 'state')) then
  return 0
end
if ok == '1' then
  redis.call('HSET', M, 'state', 'succeeded', 'result', payload, 'finished_ms', now)
  local ttl = redis.call('HGET', M, 'result_ttl_ms')
  if ttl then
    redis.call('HSET', M, 'result_expires_ms', string.format('%d', tonumber(now) + tonumber(ttl)))
  end
  -- The result holds everything now.
  redis.call('DEL', PEND, WAIT, LIVE, HELD, INP, OUTP, VOTES, REDO)
else
  fail_job(payload, now)
end
return 1
