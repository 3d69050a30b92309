-- Renews an agent's leases in one job. ARGV: agent, deadline, then index,
-- lease pairs. Returns the positions (1-based pairs) no longer held.
local agent, deadline = ARGV[1], ARGV[2]
local replicated = redundancy() > 1
local lost = {}
local n = 0
for i = 3, #ARGV, 2 do
  n = n + 1
  local slot = slot_for(ARGV[i], ARGV[i + 1], replicated)
  if holds(slot, ARGV[i + 1], agent) then
    redis.call('ZADD', LIVE, deadline, slot)
  else
    lost[#lost + 1] = n
  end
end
return lost
