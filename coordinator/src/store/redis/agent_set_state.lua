-- Moves an agent to state ARGV[1] if it is in one of the states that
-- follow. KEYS: the agent. Returns 1 if it changed.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return 0
end
for i = 2, #ARGV do
  if state == ARGV[i] then
    redis.call('HSET', KEYS[1], 'state', ARGV[1])
    return 1
  end
end
return 0
