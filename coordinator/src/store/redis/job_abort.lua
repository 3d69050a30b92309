-- Deletes an unsealed job's keys. Returns {1, queue} if it was deleted,
-- {0, queue, seq} if the job is sealed (accepted: kept), {0} if unknown.
local f = redis.call('HMGET', M, 'sealed', 'queue', 'seq')
if not f[1] then
  return {0}
end
if f[1] ~= '0' then
  return {0, f[2], tonumber(f[3])}
end
redis.call('DEL', M, PEND, WAIT, LIVE, T, INP, OUTP, HELD, VOTES, REDO)
return {1, f[2]}
