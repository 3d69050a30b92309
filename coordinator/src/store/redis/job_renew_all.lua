-- Gives every lease of the job at least until ARGV[1]. Returns how many
-- leases the job has.
local until_ms = tonumber(ARGV[1])
local live = redis.call('ZRANGE', LIVE, 0, -1, 'WITHSCORES')
for i = 1, #live, 2 do
  if tonumber(live[i + 1]) < until_ms then
    redis.call('ZADD', LIVE, until_ms, live[i])
  end
end
return #live / 2
