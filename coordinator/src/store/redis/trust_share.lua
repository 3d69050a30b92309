-- The cluster's trust material: the first coordinator's wins. KEYS: the
-- trust hash. ARGV: CA certificate, CA key, admin token (all PEM or text).
-- Returns what is stored after the call.
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'ca', ARGV[1], 'ca_key', ARGV[2], 'admin', ARGV[3])
end
return redis.call('HMGET', KEYS[1], 'ca', 'ca_key', 'admin')
