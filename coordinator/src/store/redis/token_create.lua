-- KEYS: tokens (zset), token index by hash (hash), the token (hash).
-- ARGV: id, hash (hex), now, role (join or viewer). A hash or id already
-- taken is an error.
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then
  return redis.error_reply('ERR_DUPLICATE a token with this id or secret exists')
end
redis.call('HSET', KEYS[3], 'created_ms', ARGV[3], 'revoked', 0, 'uses', 0, 'role', ARGV[4])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
