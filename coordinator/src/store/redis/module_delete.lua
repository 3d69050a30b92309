-- KEYS: modules (zset), the module (hash), its users (set of job ids).
-- ARGV: id, then the users the coordinator found finished or gone.
-- Forgets those users, then deletes the module only if none is left: a
-- job that began meanwhile is in the set, and keeps the module.
-- Reply: {0} no such module, {1} deleted, {2, job...} still in use.
if redis.call('EXISTS', KEYS[2]) == 0 then
  return {0}
end
for i = 2, #ARGV do
  redis.call('SREM', KEYS[3], ARGV[i])
end
local users = redis.call('SMEMBERS', KEYS[3])
if #users > 0 then
  local reply = {2}
  for _, u in ipairs(users) do
    reply[#reply + 1] = u
  end
  return reply
end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[1])
return {1}
