-- Gives leased tasks back without using up an attempt. ARGV: agent, then
-- index, lease pairs; or agent alone: every task the agent holds (the
-- agent was removed). Returns {how many went back, queue key, queue score, version}.
local agent = ARGV[1]
local released = 0
if #ARGV == 1 then
  if not redis.call('HGET', HELD, agent) then
    return {0}
  end
  for _, idx in ipairs(redis.call('ZRANGE', LIVE, 0, -1)) do
    if redis.call('HGET', T, 'g' .. idx) == agent then
      give_back(idx)
      released = released + 1
    end
  end
  local place = queue_place()
  return {released, place[1], place[2], place[3]}
end
for i = 2, #ARGV, 2 do
  local idx = ARGV[i]
  if holds(idx, ARGV[i + 1], agent) then
    give_back(idx)
    released = released + 1
  end
end
local place = {}
if released > 0 then
  place = queue_place()
end
return {released, place[1], place[2], place[3]}
