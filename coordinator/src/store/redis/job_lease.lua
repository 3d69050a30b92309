-- Leases tasks of one job to one agent, within what is left of its batch.
-- ARGV: agent, now, deadline, tasks_left, max_work, max_bytes, work_so_far,
-- bytes_so_far, granted_so_far, mem_bytes, labels (JSON).
-- Returns {status, timeout_s or -1, has work left (0/1), version of its
-- queue place, idx, lease, work, mem, input, ...}; a replicated task goes
-- to an agent only if it holds and voted on no other replica of it; status 0 leased what it
-- could, 1 the job is gone or finished, 2 the agent lacks the job's labels.
local agent, now, deadline = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local tasks_left, max_work, max_bytes = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local work, bytes, granted = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local mem_bytes, max_scan = tonumber(ARGV[10]), MAX_LEASE_SCAN

local state = redis.call('HGET', M, 'state')
if not is_open(state) then
  return {1, -1, 0, 0}
end
local required = redis.call('HGET', M, 'labels')
if required ~= '{}' then
  local offered = cjson.decode(ARGV[11])
  for k, v in pairs(cjson.decode(required)) do
    if offered[k] ~= v then
      return {2, -1, 1, 0}
    end
  end
end
-- Retries whose backoff ran out become leasable.
local due = redis.call('ZRANGEBYSCORE', WAIT, '-inf', now)
for _, slot in ipairs(due) do
  redis.call('ZADD', PEND, slot, slot)
  redis.call('ZREM', WAIT, slot)
end

local timeout = tonumber(redis.call('HGET', M, 'timeout_s') or '-1')
-- Past the job's `expires`, a task never leased is not leased any more
-- (the expiry sweep ends the job): as the embedded store's lease query.
local expires = tonumber(redis.call('HGET', M, 'expires_ms') or '-1')
local past_expiry = expires >= 0 and now >= expires
local replicated = redundancy() > 1
local out = {0, timeout, 1, 0}
local leased_here = 0
local skipped, scanned = 0, 0
local full = false
while not full and scanned < max_scan do
  local page = redis.call('ZRANGE', PEND, skipped, skipped + 63)
  if #page == 0 then
    break
  end
  for _, slot in ipairs(page) do
    scanned = scanned + 1
    local idx = idx_of(slot)
    if batch_full(granted, tasks_left, work, max_work, bytes, max_bytes) then
      full = true
      break
    end
    local cost = redis.call('HGET', T, 'c' .. idx)
    local sep = string.find(cost, ':', 1, true)
    local w = tonumber(string.sub(cost, 1, sep - 1))
    local m = tonumber(string.sub(cost, sep + 1))
    -- (Another replica leased in this batch counts too: it is held now.)
    if m > mem_bytes or overfills(granted, work, w, max_work)
        or (replicated and has_a_say(slot, agent))
        or (past_expiry and tonumber(redis.call('HGET', T, 'a' .. slot) or '0') == 0) then
      skipped = skipped + 1
    else
      local lease = redis.call('HINCRBY', M, 'lease_seq', 1)
      if replicated then
        lease = lease * MAX_REPLICAS + math.floor(tonumber(slot) / SLOT)
      end
      redis.call('ZREM', PEND, slot)
      redis.call('ZADD', LIVE, deadline, slot)
      redis.call('HINCRBY', T, 'a' .. slot, 1)
      redis.call('HSET', T, 'l' .. slot, string.format('%d', lease), 'g' .. slot, agent)
      redis.call('HINCRBY', HELD, agent, 1)
      local input = redis.call('HGET', INP, idx) or ''
      out[#out + 1] = tonumber(idx)
      out[#out + 1] = lease
      out[#out + 1] = w
      out[#out + 1] = m
      out[#out + 1] = input
      granted = granted + 1
      leased_here = leased_here + 1
      work = work + w
      bytes = bytes + #input
    end
    if scanned >= max_scan then
      break
    end
  end
end
if not has_work() then
  out[3] = 0
  out[4] = tonumber(redis.call('HGET', M, 'qver') or '0')
end
if leased_here > 0 and state == 'queued' then
  redis.call('HSET', M, 'state', 'running', 'started_ms', now)
end
return out
