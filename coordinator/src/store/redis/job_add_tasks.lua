-- Appends tasks to an unsealed job (see append_tasks). ARGV: per task:
-- work, mem, input. Returns {new task count, queue key, score, version},
-- or an error if the job is not unsealed.
local f = redis.call('HMGET', M, 'sealed', 'state')
if f[1] ~= '0' then
  return redis.error_reply('ERR_NOT_UNSEALED job is not an unsealed job')
end
-- A streamed job can fail (a chunk out of attempts) while its upload goes
-- on: the rest of its tasks must not run, nor hold memory.
local total = append_tasks(1, is_open(f[2]))
local place = queue_place()
return {total, place[1], place[2], place[3]}
