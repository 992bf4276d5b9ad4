if ARGV[7] ~= '' and redis.call('HGET', KEYS[4], 'token') ~= ARGV[7] then
  return {'stale'}
end
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return {}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
if ARGV[4] == '1' then
  -- The tenant's items waiting (its quota) lose this task's items.
  local tenant = string.match(KEYS[1], '^fleet:tasks:([^:]+):')
  local task = cjson.decode(ARGV[3])
  if tenant and redis.call('HINCRBY', KEYS[9], tenant, -task.items) <= 0 then
    redis.call('HDEL', KEYS[9], tenant)
  end
  -- The backlog loses the task, and the priority's count of ended tasks (its drain rate)
  -- gains it; records made before the backlog was counted carry no priority.
  if tenant and type(task.priority) == 'string' then
    local field = tenant .. '|' .. task.priority
    if redis.call('HINCRBY', KEYS[10], field, -1) <= 0 then
      redis.call('HDEL', KEYS[10], field)
    end
    redis.call('HINCRBY', KEYS[11], task.priority, 1)
  end
  redis.call('HINCRBY', KEYS[2], 'tasks_done', 1)
  redis.call('HINCRBY', KEYS[2], 'items_succeeded', ARGV[5])
  redis.call('HINCRBY', KEYS[2], 'items_failed', ARGV[6])
  for i = 11, #ARGV do
    redis.call('RPUSH', KEYS[3], ARGV[i])
  end
end
if ARGV[8] == 'end' or ARGV[8] == 'requeue' then
  local worker = redis.call('HGET', KEYS[4], 'worker')
  if worker and worker ~= '' then
    local slot = worker .. '|' .. redis.call('HGET', KEYS[4], 'device') .. '|' .. redis.call('HGET', KEYS[4], 'priority')
    if redis.call('HINCRBY', KEYS[6], slot, -1) <= 0 then
      redis.call('HDEL', KEYS[6], slot)
    end
  end
  redis.call('ZREM', KEYS[5], ARGV[9])
  if ARGV[8] == 'end' then
    redis.call('DEL', KEYS[4])
    redis.call('SREM', KEYS[7], ARGV[9])
  elseif redis.call('EXISTS', KEYS[4]) == 1 then
    redis.call('HSET', KEYS[4], 'worker', '', 'token', new_token(KEYS[8]), 'not_before_ms', ARGV[10])
    redis.call('SADD', KEYS[7], ARGV[9])
  end
end
local out = redis.call('HGETALL', KEYS[2])
table.insert(out, 1, 'ok')
return out
