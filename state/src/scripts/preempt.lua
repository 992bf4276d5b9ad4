local holder = redis.call('HGET', KEYS[1], 'worker')
if not holder or holder == '' then
  return 0
end
redis.call('HSET', KEYS[1], 'preempt', '1')
return 1
