local rec = redis.call('HGET', KEYS[6], ARGV[2])
if not rec then
  return {'gone'}
end
local state = cjson.decode(rec).state.state
if state == 'succeeded' or state == 'dead_lettered' or state == 'cancelled' then
  return {'ended'}
end
local holder = redis.call('HGET', KEYS[1], 'worker')
if holder and holder ~= '' then
  if tonumber(redis.call('HGET', KEYS[1], 'expires_ms')) > now then
    return {'held'}
  end
  local slot = holder .. '|' .. redis.call('HGET', KEYS[1], 'device') .. '|' .. redis.call('HGET', KEYS[1], 'priority')
  if redis.call('HINCRBY', KEYS[3], slot, -1) <= 0 then
    redis.call('HDEL', KEYS[3], slot)
  end
end
local token = new_token(KEYS[5])
local grants = redis.call('HINCRBY', KEYS[1], 'grants', 1)
local expires = now + tonumber(ARGV[6])
redis.call('HSET', KEYS[1], 'token', token, 'worker', ARGV[3], 'device', ARGV[4], 'priority', ARGV[5],
  'expires_ms', expires, 'body', ARGV[7], 'not_before_ms', 0)
redis.call('HDEL', KEYS[1], 'preempt')
redis.call('ZADD', KEYS[2], expires, ARGV[1])
redis.call('HINCRBY', KEYS[3], ARGV[3] .. '|' .. ARGV[4] .. '|' .. ARGV[5], 1)
redis.call('SREM', KEYS[4], ARGV[1])
return {'granted', token, tostring(grants)}
