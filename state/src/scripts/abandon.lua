if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return 0
end
local worker = redis.call('HGET', KEYS[1], 'worker')
if worker and worker ~= '' then
  local slot = worker .. '|' .. redis.call('HGET', KEYS[1], 'device') .. '|' .. redis.call('HGET', KEYS[1], 'priority')
  if redis.call('HINCRBY', KEYS[3], slot, -1) <= 0 then
    redis.call('HDEL', KEYS[3], slot)
  end
end
redis.call('ZREM', KEYS[2], ARGV[2])
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[5], ARGV[2])
else
  redis.call('HSET', KEYS[1], 'worker', '', 'token', new_token(KEYS[4]))
end
return 1
