local lost = {}
local preempt = {}
local expires = now + tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  local key = 'fleet:lease:' .. ARGV[i]
  local held = redis.call('HMGET', key, 'token', 'worker', 'preempt')
  if held[1] == ARGV[i + 1] and held[2] == ARGV[1] then
    redis.call('HSET', key, 'expires_ms', expires)
    redis.call('ZADD', KEYS[1], expires, ARGV[i])
    if held[3] then
      table.insert(preempt, ARGV[i])
    end
  else
    table.insert(lost, ARGV[i])
  end
end
return {lost, preempt}
