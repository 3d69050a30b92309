-- Gives leased tasks back without using up an attempt. ARGV: agent, then
-- index, lease pairs; or agent alone: every task the agent holds, and its
-- votes on undecided tasks (the agent was removed: its results are not to
-- be believed, so those replicas run again elsewhere). Returns {how many
-- went back, queue key, queue score, version}.
local agent = ARGV[1]
local released = 0
local replicated = redundancy() > 1
if #ARGV == 1 then
  if not replicated and not redis.call('HGET', HELD, agent) then
    return {0}
  end
  for _, slot in ipairs(redis.call('ZRANGE', LIVE, 0, -1)) do
    if redis.call('HGET', T, 'g' .. slot) == agent then
      give_back(slot)
      released = released + 1
    end
  end
  if replicated then
    -- Removals are rare; the votes hash holds only undecided tasks.
    for _, field in ipairs(redis.call('HKEYS', VOTES)) do
      if string.sub(field, 1, 1) == 'a' and redis.call('HGET', VOTES, field) == agent then
        local slot = string.sub(field, 2)
        redis.call('HDEL', VOTES, 'a' .. slot, 'd' .. slot, 'c' .. slot, 'o' .. slot)
        -- Nor is the replica its result any more (as SQLite clears its agent).
        redis.call('HDEL', T, 'r' .. slot, 'x' .. slot)
        redis.call('ZADD', PEND, slot, slot)
        released = released + 1
      end
    end
  end
  local place = queue_place()
  return {released, place[1], place[2], place[3]}
end
for i = 2, #ARGV, 2 do
  local slot = slot_for(ARGV[i], ARGV[i + 1], replicated)
  if holds(slot, ARGV[i + 1], agent) then
    give_back(slot)
    released = released + 1
  end
end
local place = {}
if released > 0 then
  place = queue_place()
end
return {released, place[1], place[2], place[3]}
