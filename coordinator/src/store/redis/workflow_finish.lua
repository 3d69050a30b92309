-- Finishes a running workflow; the first call wins. KEYS: the workflow's
-- hash, the set of open workflows. ARGV: state, now, id. Returns 1 if this
-- call finished it.
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'finished_ms', ARGV[2])
redis.call('SREM', KEYS[2], ARGV[3])
return 1
