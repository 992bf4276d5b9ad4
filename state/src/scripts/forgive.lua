local grants = tonumber(redis.call('HGET', KEYS[1], 'grants') or '0')
if grants > 0 then
  redis.call('HINCRBY', KEYS[1], 'grants', -1)
end
return grants
