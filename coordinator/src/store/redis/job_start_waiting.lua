-- Releases a waiting job (a workflow step whose needs succeeded) with its
-- reduce plan and tasks, once: only a job still waiting is released.
-- ARGV: plan, then per task: work, mem, input.
-- Returns {1, queue key, score, version} if released, {0} if not waiting.
if redis.call('HGET', M, 'state') ~= 'waiting' then
  return {0}
end
redis.call('HSET', M, 'state', 'queued', 'plan', ARGV[1])
append_tasks(2, true)
local place = queue_place()
return {1, place[1], place[2], place[3]}
