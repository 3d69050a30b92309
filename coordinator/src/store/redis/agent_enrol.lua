-- Trades a valid token for a new agent. KEYS: token index by hash, agents
-- (zset), the agent (hash). ARGV: token hash (hex), token key prefix (the
-- token's key is this plus its id, in the same slot), agent id, secret hash,
-- capacity (JSON), now. Returns 0 enrolled, 1 unknown token, 2 revoked,
-- 3 not a join token (a viewer token; a token without a role is a join token).
local token_id = redis.call('HGET', KEYS[1], ARGV[1])
if not token_id then
  return 1
end
local token = ARGV[2] .. token_id
local role = redis.call('HGET', token, 'role')
if role and role ~= 'join' then
  return 3
end
if redis.call('HGET', token, 'revoked') ~= '0' then
  return 2
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  return redis.error_reply('ERR_DUPLICATE an agent with this id exists')
end
redis.call('HINCRBY', token, 'uses', 1)
redis.call('HSET', KEYS[3], 'secret', ARGV[4], 'capacity', ARGV[5], 'state', 'active',
  'token', token_id, 'enrolled_ms', ARGV[6], 'last_seen_ms', ARGV[6], 'tasks_done', 0, 'cpu_ms', 0)
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[3])
return 0
