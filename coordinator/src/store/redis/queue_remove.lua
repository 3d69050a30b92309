-- Takes a job out of its queue's index, unless it was put back at a newer
-- version of its place (work became pending after the remover looked).
-- KEYS: the queue, the versions (hash). ARGV: job id, version.
local seen = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1')
if tonumber(ARGV[2]) < seen then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
