-- Puts a job in its queue's index, unless a removal seen at a newer
-- version of its place came first. KEYS: the queue, the versions (hash).
-- ARGV: job id, score, version.
local seen = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1')
local ver = tonumber(ARGV[3])
if ver < seen then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ver)
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
