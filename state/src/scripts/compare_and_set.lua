if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  -- The job ended: its record and per-job keys expire after the retention, and the index
  -- says when, so the tenant's job list is pruned then too.
  redis.call('EXPIRE', KEYS[1], ttl)
  for i = 3, #KEYS do
    redis.call('EXPIRE', KEYS[i], ttl)
  end
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[2], tonumber(t[1]) + ttl, ARGV[4])
end
return 1
