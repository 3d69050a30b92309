-- Reads the candidates of Store::job_tasks (the dashboard's sample of a
-- job's replicas), in one atomic read: its failed slot, up to ARGV[1]
-- leased and pending ones (lowest deadline, slot or not-before first), and
-- every replica of its first ARGV[1] tasks. Returns {} for an unknown or
-- unsealed job, else {1, then per replica: index, replica, state,
-- attempts, agent or '', error or '', verdict or ''}.
local limit = tonumber(ARGV[1])
local f = redis.call('HMGET', M, 'sealed', 'total', 'failed_slot')
if f[1] ~= '1' then
  return {}
end
local failed = f[3]
local slots, seen = {}, {}
local function add(slot)
  if not seen[slot] then
    seen[slot] = true
    slots[#slots + 1] = slot
  end
end
if failed then
  add(failed)
end
for _, key in ipairs({LIVE, PEND, WAIT}) do
  for _, slot in ipairs(redis.call('ZRANGE', key, 0, limit - 1)) do
    add(slot)
  end
end
for idx = 0, math.min(tonumber(f[2] or '0'), limit) - 1 do
  local n = tonumber(redis.call('HGET', T, 'n' .. idx) or '1')
  for r = 0, n - 1 do
    add(slot_of(idx, r))
  end
end
local out = {1}
for _, slot in ipairs(slots) do
  local t = redis.call('HMGET', T, 'a' .. slot, 'g' .. slot, 'r' .. slot, 'e' .. slot, 'x' .. slot)
  local state, agent = 'cancelled', ''
  if redis.call('ZSCORE', LIVE, slot) then
    state, agent = 'leased', t[2] or ''
  elseif redis.call('ZSCORE', PEND, slot) or redis.call('ZSCORE', WAIT, slot) then
    state = 'pending'
  elseif slot == failed then
    state = 'failed'
  elseif t[3] then
    state, agent = 'done', t[3]
  end
  out[#out + 1] = idx_of(slot)
  out[#out + 1] = string.format('%d', math.floor(tonumber(slot) / SLOT))
  out[#out + 1] = state
  out[#out + 1] = t[1] or '0'
  out[#out + 1] = agent
  out[#out + 1] = t[4] or ''
  out[#out + 1] = t[5] or ''
end
return out
