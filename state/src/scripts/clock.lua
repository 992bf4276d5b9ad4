-- Prepended to the lease scripts (see lease.rs). Redis's own clock: lease times are read and
-- written on it alone, so clock skew between the hosts of workers and schedulers moves no
-- lease.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- A new fencing token: the counter's next value, never below the microseconds of Redis's
-- clock, so a counter rolled back by lost writes (a crash with appendfsync everysec) never
-- hands out a token again. Kept as a decimal string (Lua numbers print as 1.7e+15).
local function new_token(counter)
  local floor = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local token = redis.call('INCR', counter)
  if token < floor then
    token = floor
    redis.call('SET', counter, string.format('%.0f', token))
  end
  return string.format('%.0f', token)
end
