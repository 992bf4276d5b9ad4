if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'tasks_total', 1)
  redis.call('HINCRBY', KEYS[2], 'items_total', ARGV[3])
  redis.call('HINCRBY', KEYS[3], ARGV[4], ARGV[3])
  redis.call('HINCRBY', KEYS[4], ARGV[4] .. '|' .. ARGV[5], 1)
  return false
end
return redis.call('HGET', KEYS[1], ARGV[1])
