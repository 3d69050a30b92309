-- Declares the job's task list complete. Returns {total, done, seq}.
local f = redis.call('HMGET', M, 'total', 'done', 'seq')
if not f[1] then
  return redis.error_reply('ERR_NO_JOB no such job')
end
redis.call('HSET', M, 'sealed', 1)
return {tonumber(f[1]), tonumber(f[2]), tonumber(f[3])}
