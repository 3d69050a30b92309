-- KEYS: modules (zset by upload time), the module (hash).
-- ARGV: id, bytes, size, created_ms, has_reduce (0 or 1).
-- Content-addressed: the same id is the same bytes, so a second upload
-- changes nothing and says so.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('HSET', KEYS[2], 'data', ARGV[2], 'size', ARGV[3], 'created_ms', ARGV[4],
  'has_reduce', ARGV[5])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
return 1
