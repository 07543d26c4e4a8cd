-- One shared token bucket: the Lua mirror of qmtl/runtime/io/token_bucket.py (reserve,
-- penalize, sync), run atomically by Redis on Redis server time (TIME); clients never send
-- their clock. Instants are milliseconds as doubles; every number goes out as a string
-- ('%.17g', exact round trip), because Redis turns Lua numbers into integer replies.
--
-- KEYS[1]  hash {tokens, updated_ms, not_before_ms}; a missing key is a full bucket.
-- ARGV     op, rate_per_ms, capacity, then per op:
--   reserve   cost                               take cost now; reply says when it is due
--   penalize  pause_ms                           drain to min(tokens, 0), stop until now+pause
--   sync      allowance, window_ms, age_ms, grace_ms   clamp to an exchange usage report
--   check     (none)                             read only: is a penalty in force?
-- Reply    {now_ms, due_ms, tokens, updated_ms, not_before_ms, applied}: tokens as of
--          updated_ms; applied is 1 when the state was written.
-- Idle keys expire after twice the time to refill a full bucket (pause included) + 1 s.

if redis.replicate_commands then redis.replicate_commands() end  -- Redis < 5: TIME then write

local key = KEYS[1]
local op = ARGV[1]
local rate = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
if not rate or not cap or rate <= 0 or cap <= 0 then
  return redis.error_reply('token_bucket: rate_per_ms and capacity must be > 0')
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000

local tokens, updated, nb = cap, now, 0
local saved = redis.call('HMGET', key, 'tokens', 'updated_ms', 'not_before_ms')
if saved[1] then
  tokens = tonumber(saved[1])
  updated = tonumber(saved[2])
  nb = tonumber(saved[3]) or 0
end

local at = math.max(now, updated)
local level = math.min(cap, tokens + (at - updated) * rate)
local due = at
local write = true

if op == 'reserve' then
  local cost = tonumber(ARGV[4])
  if not cost or cost < 0 or cost > cap then
    return redis.error_reply('token_bucket: cost must be within [0, capacity]')
  end
  level = level - cost
  due = at + math.max(0, -level / rate)
  updated = at
elseif op == 'penalize' then
  local untill = now + math.max(0, tonumber(ARGV[4]))
  level = math.min(level, 0)
  updated = math.max(at, untill)
  nb = math.max(nb, untill)
  due = updated
elseif op == 'sync' then
  local allowance = tonumber(ARGV[4])
  local window = tonumber(ARGV[5])
  local observed = now - math.max(0, tonumber(ARGV[6]))
  local grace = tonumber(ARGV[7])
  local index = math.floor(now / window)
  updated = at
  if math.floor(observed / window) ~= index or observed - index * window < grace then
    write = false
  else
    local rest = math.max(0, ((index + 1) * window - now) - (at - now))
    local excess = math.max(level, 0) + rest * rate - allowance
    if excess > 0 then
      level = level - excess
    else
      write = false
    end
  end
elseif op == 'check' then
  updated = at
  write = false
else
  return redis.error_reply('token_bucket: unknown op ' .. tostring(op))
end

local function s(x) return string.format('%.17g', x) end

if write then
  redis.call('HSET', key, 'tokens', s(level), 'updated_ms', s(updated), 'not_before_ms', s(nb))
  local idle_ms = (updated - now) + (cap - level) / rate
  redis.call('PEXPIRE', key, math.ceil(2 * idle_ms + 1000))
end
return {s(now), s(due), s(level), s(updated), s(nb), write and '1' or '0'}
