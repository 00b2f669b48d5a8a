"""The Lua scripts of the Redis store, one per write (and per read that must see
several keys at once), over the layout :mod:`actors.stores.redis` describes.

Every script starts with the same prelude of helpers and takes the key prefix as
``ARGV[1]``; each one's comment says what the rest of ``ARGV`` holds. A script runs
atomically, and computes the keys it touches, so it needs one Redis server, not a
cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["JOB_FIELDS", "NOTIFICATION_FIELDS", "SCRIPTS"]

# A job's fields as the scripts read them, its output (content, reasoning) aside.
JOB_FIELDS = (
    "id",
    "user_id",
    "workspace_id",
    "thread_id",
    "message_id",
    "model",
    "status",
    "started_at",
    "chunks_received",
    "last_seq",
    "completed_at",
    "error",
    "finish_reason",
    "usage",
    "generation_id",
    "tool_calls",
    "images",
    "foreground",
    "content_length",
    "reasoning_length",
)
NOTIFICATION_FIELDS = (
    "id",
    "user_id",
    "workspace_id",
    "thread_id",
    "job_id",
    "type",
    "title",
    "body",
    "created_at",
    "actions",
    "read_at",
)


def _lua_list(names: Sequence[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


# Shared by every script. ARGV[1] is always the key prefix. Lua compares strings
# with strcoll, so ids are ordered by `bytewise_less`, and numbers that must stay
# exact (microsecond times) are passed on as the text they came as.
_PRELUDE = f"""
local P = ARGV[1]
local TERMINAL = {{complete = true, error = true, aborted = true}}
local JOB_FIELDS = {{{_lua_list(JOB_FIELDS)}}}
local STATUS = {JOB_FIELDS.index("status") + 1}
local NOTIFICATION_FIELDS = {{{_lua_list(NOTIFICATION_FIELDS)}}}
local READ_AT = {NOTIFICATION_FIELDS.index("read_at") + 1}

local function key(kind, id) return P .. kind .. ':' .. id end
local function owner(user, workspace) return #user .. ':' .. user .. ':' .. workspace end

local function bytewise_less(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

-- A running job's output: what it was created with, then its deltas'.
local function joined(id, content, reasoning)
  local cs, rs = {{content}}, {{reasoning}}
  for _, entry in ipairs(redis.call('XRANGE', key('deltas', id), '-', '+')) do
    cs[#cs + 1] = entry[2][2]
    rs[#rs + 1] = entry[2][4]
  end
  return table.concat(cs), table.concat(rs)
end

-- The job's JOB_FIELDS, then (with_output) its content and reasoning; nil if missing.
local function read_job(id, with_output)
  local k = key('job', id)
  local job = redis.call('HMGET', k, unpack(JOB_FIELDS))
  if not job[1] then return nil end
  if with_output then
    local out = redis.call('HMGET', k, 'content', 'reasoning')
    local content, reasoning = out[1], out[2]
    if not TERMINAL[job[STATUS]] then content, reasoning = joined(id, content, reasoning) end
    local n = #job
    job[n + 1], job[n + 2] = content, reasoning
  end
  return job
end

local function running_sets(foreground, user)
  if foreground == '1' then return {{P .. 'running:fg'}} end
  return {{P .. 'running:bg', key('running-user', user)}}
end

-- Index a finished job and schedule its deletion.
local function finish(id, completed_at, expire_at, status, who)
  redis.call('ZADD', P .. 'finished', completed_at, id)
  redis.call('HSET', P .. 'finished-index', id, status .. ':' .. who)
  redis.call('PEXPIREAT', key('job', id), expire_at)
  redis.call('PEXPIREAT', key('deltas', id), expire_at)
end

-- Delete a finished job (if it has not expired yet) and its index entries; whether
-- it was still there.
local function drop_finished(id)
  local index = redis.call('HGET', P .. 'finished-index', id)
  if index then
    local status, who = string.match(index, '^([^:]*):(.*)$')
    redis.call('ZREM', key('owner-jobs', who), id)
    redis.call('ZREM', key('status', status), id)
    redis.call('HDEL', P .. 'finished-index', id)
  end
  redis.call('ZREM', P .. 'finished', id)
  redis.call('DEL', key('deltas', id))
  return redis.call('DEL', key('job', id)) == 1
end

local function drop_expired(retention, most)
  local now = redis.call('TIME')
  local cutoff = tonumber(now[1]) * 1000000 + tonumber(now[2]) - tonumber(retention)
  local expired = redis.call(
    'ZRANGEBYSCORE', P .. 'finished', '-inf', string.format('(%.0f', cutoff), 'LIMIT', 0, most)
  for _, id in ipairs(expired) do drop_finished(id) end
end

local function enqueue(first)
  for i = first, #ARGV, 6 do
    local id = ARGV[i]
    local k = key('webhook', id)
    if redis.call('EXISTS', k) == 0 then
      redis.call('HSET', k, 'type', ARGV[i + 1], 'created_at', ARGV[i + 2], 'body', ARGV[i + 3],
        'next_attempt_at', ARGV[i + 4], 'attempts', ARGV[i + 5])
      redis.call('ZADD', P .. 'outbox', ARGV[i + 4], id)
      redis.call('ZADD', P .. 'outbox-created', ARGV[i + 2], id)
    end
  end
end
"""

# ARGV[2]: 'admit' or ''; [3..5]: the background, per-user and foreground caps;
# [6]: node; [7]: lease (ms); [8]: when a finished job expires (ms) or '';
# [9..]: the job's fields and values.
_CREATE = """
local job = {}
for i = 9, #ARGV, 2 do job[ARGV[i]] = ARGV[i + 1] end
local id = job.id
if redis.call('EXISTS', key('job', id)) == 1 then return 'exists' end
local admit = ARGV[2] == 'admit'
local running = not TERMINAL[job.status]
local sets = running_sets(job.foreground, job.user_id)
if admit then
  local caps = {{ARGV[3], 'global_cap'}, {ARGV[4], 'user_cap'}}
  if job.foreground == '1' then caps = {{ARGV[5], 'foreground_cap'}} end
  for i, cap in ipairs(caps) do
    if redis.call('SCARD', sets[i]) >= tonumber(cap[1]) then return cap[2] end
  end
end
-- An expired job of the same id may have left index entries.
if redis.call('HEXISTS', P .. 'finished-index', id) == 1 then drop_finished(id) end
redis.call('HSET', key('job', id), unpack(ARGV, 9))
local who = owner(job.user_id, job.workspace_id)
redis.call('ZADD', key('owner-jobs', who), job.started_at, id)
redis.call('ZADD', key('status', job.status), job.started_at, id)
if running then
  for _, set in ipairs(sets) do redis.call('SADD', set, id) end
  if admit then redis.call('SET', key('lease', id), ARGV[6], 'PX', ARGV[7]) end
elseif job.completed_at then
  finish(id, job.completed_at, ARGV[8], job.status, who)
end
return 'admitted'
"""

# ARGV[2..]: per job, its id, the number n of its new deltas, then n times seq,
# content, reasoning and their two lengths, in seq order.
_APPEND = """
local i = 2
while i <= #ARGV do
  local id, first = ARGV[i], i + 2
  i = first + 5 * tonumber(ARGV[i + 1])
  local k = key('job', id)
  local job = redis.call('HMGET', k, 'status', 'last_seq')
  if job[1] and not TERMINAL[job[1]] then
    local last, top, taken, content, reasoning = tonumber(job[2]), nil, 0, 0, 0
    for d = first, i - 1, 5 do
      if tonumber(ARGV[d]) > last then
        redis.call('XADD', key('deltas', id), ARGV[d] .. '-0', 'c', ARGV[d + 1], 'r', ARGV[d + 2])
        top, taken = ARGV[d], taken + 1
        content = content + tonumber(ARGV[d + 3])
        reasoning = reasoning + tonumber(ARGV[d + 4])
      end
    end
    if taken > 0 then
      redis.call('HSET', k, 'last_seq', top)
      redis.call('HINCRBY', k, 'chunks_received', taken)
      redis.call('HINCRBY', k, 'content_length', content)
      redis.call('HINCRBY', k, 'reasoning_length', reasoning)
    end
  end
end
"""

# ARGV[2]: id; [3]: status; [4]: completed_at or ''; [5]: when it expires (ms) or '';
# [6]: retention (µs); [7]: the number n of fields to set (status among them); then
# n fields and values; then the fields to delete.
_UPDATE = """
local id, status = ARGV[2], ARGV[3]
local k = key('job', id)
local was = redis.call('HMGET', k, 'status', 'started_at', 'user_id', 'workspace_id',
  'foreground', 'last_seq', 'content', 'reasoning')
if not was[1] or TERMINAL[was[1]] then return 0 end
local last_set = 7 + 2 * tonumber(ARGV[7])
redis.call('HSET', k, unpack(ARGV, 8, last_set))
if #ARGV > last_set then redis.call('HDEL', k, unpack(ARGV, last_set + 1)) end
if status ~= was[1] then
  redis.call('ZREM', key('status', was[1]), id)
  redis.call('ZADD', key('status', status), was[2], id)
end
if TERMINAL[status] then
  local content, reasoning = joined(id, was[7], was[8])
  redis.call('HSET', k, 'content', content, 'reasoning', reasoning)
  for _, set in ipairs(running_sets(was[5], was[3])) do redis.call('SREM', set, id) end
  redis.call('DEL', key('lease', id))
  redis.call('XADD', key('deltas', id), was[6] .. '-1', 'end', status)
  if ARGV[4] ~= '' then finish(id, ARGV[4], ARGV[5], status, owner(was[3], was[4])) end
  drop_expired(ARGV[6], 2)
end
return 1
"""

# ARGV[2]: id; [3]: its owner, or '' for any.
_GET = """
if ARGV[3] ~= '' then
  local job = redis.call('HMGET', key('job', ARGV[2]), 'user_id', 'workspace_id')
  if not job[1] or owner(job[1], job[2]) ~= ARGV[3] then return nil end
end
return read_job(ARGV[2], true)
"""

# ARGV[2]: owner; [3]: status or ''; [4]: '1' for the output too.
_LIST = """
local index = key('owner-jobs', ARGV[2])
local found = {}
for _, id in ipairs(redis.call('ZREVRANGE', index, 0, -1)) do
  local job = read_job(id, ARGV[4] == '1')
  if not job then redis.call('ZREM', index, id)
  elseif ARGV[3] == '' or job[STATUS] == ARGV[3] then found[#found + 1] = job end
end
return found
"""

# ARGV[2..]: statuses.
_BY_STATUS = """
local found = {}
for i = 2, #ARGV do
  local index = key('status', ARGV[i])
  for _, id in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    local job = read_job(id, true)
    if not job then redis.call('ZREM', index, id) else found[#found + 1] = job end
  end
end
return found
"""

_COUNT_ACTIVE = """
return redis.call('SCARD', P .. 'running:bg') + redis.call('SCARD', P .. 'running:fg')
"""

# ARGV[2]: the cutoff.
_DELETE_FINISHED = """
local deleted = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'finished', '-inf', '(' .. ARGV[2])) do
  if drop_finished(id) then deleted[#deleted + 1] = id end
end
return deleted
"""

# ARGV[2]: id; [3]: after seq; [4]: most entries.
_LIVE = """
return {redis.call('XRANGE', key('deltas', ARGV[2]), '(' .. ARGV[3] .. '-0', '+', 'COUNT', ARGV[4]),
  redis.call('HGET', key('job', ARGV[2]), 'status')}
"""

# ARGV[2]: node; [3]: lease (ms); [4..]: job ids. A lease that ran out is taken
# again while its job runs.
_RENEW = """
local lost = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local holder = redis.call('GET', key('lease', id))
  local status = redis.call('HGET', key('job', id), 'status')
  if holder == ARGV[2] or (not holder and status and not TERMINAL[status]) then
    redis.call('SET', key('lease', id), ARGV[2], 'PX', ARGV[3])
  else
    lost[#lost + 1] = id
  end
end
return lost
"""

_EXPIRED = """
local found = {}
for _, set in ipairs({P .. 'running:bg', P .. 'running:fg'}) do
  for _, id in ipairs(redis.call('SMEMBERS', set)) do
    if redis.call('EXISTS', key('lease', id)) == 0 then
      local started = redis.call('HGET', key('job', id), 'started_at')
      if started then found[#found + 1] = {id, started} else redis.call('SREM', set, id) end
    end
  end
end
return found
"""

# ARGV[2]: id; [3]: duration (ms).
_WATCH = """
local k = key('watched', ARGV[2])
if not redis.call('SET', k, '1', 'PX', ARGV[3], 'NX') then
  redis.call('PEXPIRE', k, ARGV[3], 'GT')
end
"""

# ARGV[2]: the number n of fields; then n fields and values; then webhook events.
_ADD_NOTIFICATION = """
local last = 2 + 2 * tonumber(ARGV[2])
local note = {}
for i = 3, last, 2 do note[ARGV[i]] = ARGV[i + 1] end
if redis.call('EXISTS', key('notification-of', note.job_id)) == 1 then return 0 end
if redis.call('EXISTS', key('notification', note.id)) == 1 then return -1 end
redis.call('HSET', key('notification', note.id), unpack(ARGV, 3, last))
redis.call('ZADD', key('owner-notifications', owner(note.user_id, note.workspace_id)),
  note.created_at, note.id)
redis.call('SET', key('notification-of', note.job_id), note.id)
enqueue(last + 1)
return 1
"""

# ARGV[2]: owner; [3]: '1' for unread only; [4]: limit.
_LIST_NOTIFICATIONS = """
local limit = tonumber(ARGV[4])
local found = {}
if limit == 0 then return found end
for _, id in ipairs(redis.call('ZREVRANGE', key('owner-notifications', ARGV[2]), 0, -1)) do
  local note = redis.call('HMGET', key('notification', id), unpack(NOTIFICATION_FIELDS))
  if ARGV[3] ~= '1' or not note[READ_AT] then
    found[#found + 1] = note
    if #found == limit then break end
  end
end
return found
"""

# ARGV[2]: id; [3]: owner; [4]: read at.
_MARK_READ = """
local k = key('notification', ARGV[2])
local note = redis.call('HMGET', k, 'user_id', 'workspace_id')
if not note[1] or owner(note[1], note[2]) ~= ARGV[3] then return 0 end
redis.call('HSETNX', k, 'read_at', ARGV[4])
return 1
"""

# ARGV[2]: owner; [3]: read at.
_MARK_ALL_READ = """
local marked = 0
for _, id in ipairs(redis.call('ZRANGE', key('owner-notifications', ARGV[2]), 0, -1)) do
  marked = marked + redis.call('HSETNX', key('notification', id), 'read_at', ARGV[3])
end
return marked
"""

# ARGV[2]: id; [3]: owner.
_DELETE_NOTIFICATION = """
local k = key('notification', ARGV[2])
local note = redis.call('HMGET', k, 'user_id', 'workspace_id', 'job_id')
if not note[1] or owner(note[1], note[2]) ~= ARGV[3] then return 0 end
redis.call('DEL', k)
redis.call('ZREM', key('owner-notifications', ARGV[3]), ARGV[2])
if redis.call('GET', key('notification-of', note[3])) == ARGV[2] then
  redis.call('DEL', key('notification-of', note[3]))
end
return 1
"""

_ENQUEUE = "enqueue(2)"

# ARGV[2]: now; [3]: limit; [4]: lease until. The first `limit` due events by
# next_attempt_at, with every other one due at the last one's time, then ordered by
# next_attempt_at, created_at and id; the first `limit` of those are taken.
_TAKE_DUE = """
local limit = tonumber(ARGV[3])
if limit == 0 then return {} end
local outbox = P .. 'outbox'
local due = redis.call('ZRANGEBYSCORE', outbox, '-inf', ARGV[2], 'WITHSCORES', 'LIMIT', 0, limit)
if #due == 0 then return {} end
local last = due[#due]
local ids = {}
for i = 1, #due, 2 do if due[i + 1] ~= last then ids[#ids + 1] = due[i] end end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', outbox, last, last)) do ids[#ids + 1] = id end
local events = {}
for _, id in ipairs(ids) do
  local e = redis.call('HMGET', key('webhook', id), 'type', 'created_at', 'body',
    'next_attempt_at', 'attempts')
  events[#events + 1] = {id, e[1], e[2], e[3], e[4], e[5]}
end
table.sort(events, function(a, b)
  if a[5] ~= b[5] then return tonumber(a[5]) < tonumber(b[5]) end
  if a[3] ~= b[3] then return tonumber(a[3]) < tonumber(b[3]) end
  return bytewise_less(a[1], b[1])
end)
local taken = {}
for i = 1, math.min(limit, #events) do
  taken[i] = events[i]
  redis.call('HSET', key('webhook', events[i][1]), 'next_attempt_at', ARGV[4])
  redis.call('ZADD', outbox, ARGV[4], events[i][1])
end
return taken
"""

# ARGV[2]: id; [3]: attempts; [4]: next attempt at.
_RESCHEDULE = """
local k = key('webhook', ARGV[2])
if redis.call('EXISTS', k) == 0 then return 0 end
redis.call('HSET', k, 'attempts', ARGV[3], 'next_attempt_at', ARGV[4])
redis.call('ZADD', P .. 'outbox', ARGV[4], ARGV[2])
return 1
"""

_REMOVE_WEBHOOK = """
if redis.call('DEL', key('webhook', ARGV[2])) == 0 then return 0 end
redis.call('ZREM', P .. 'outbox', ARGV[2])
redis.call('ZREM', P .. 'outbox-created', ARGV[2])
return 1
"""

# ARGV[2]: the cutoff.
_DELETE_WEBHOOKS = """
local ids = redis.call('ZRANGEBYSCORE', P .. 'outbox-created', '-inf', '(' .. ARGV[2])
for _, id in ipairs(ids) do
  redis.call('DEL', key('webhook', id))
  redis.call('ZREM', P .. 'outbox', id)
  redis.call('ZREM', P .. 'outbox-created', id)
end
return ids
"""

_OUTBOX_SUMMARY = """
local depth = redis.call('ZCARD', P .. 'outbox')
if depth == 0 then return {0} end
local first = redis.call('ZRANGE', P .. 'outbox', 0, 0)[1]
local oldest = redis.call('ZRANGE', P .. 'outbox-created', 0, 0)[1]
return {depth, redis.call('HGET', key('webhook', first), 'next_attempt_at'),
  redis.call('HGET', key('webhook', oldest), 'created_at')}
"""

_BODIES = {
    "create": _CREATE,
    "append": _APPEND,
    "update": _UPDATE,
    "get": _GET,
    "list": _LIST,
    "by_status": _BY_STATUS,
    "count_active": _COUNT_ACTIVE,
    "delete_finished": _DELETE_FINISHED,
    "live": _LIVE,
    "renew": _RENEW,
    "expired": _EXPIRED,
    "watch": _WATCH,
    "add_notification": _ADD_NOTIFICATION,
    "list_notifications": _LIST_NOTIFICATIONS,
    "mark_read": _MARK_READ,
    "mark_all_read": _MARK_ALL_READ,
    "delete_notification": _DELETE_NOTIFICATION,
    "enqueue": _ENQUEUE,
    "take_due": _TAKE_DUE,
    "reschedule": _RESCHEDULE,
    "remove_webhook": _REMOVE_WEBHOOK,
    "delete_webhooks": _DELETE_WEBHOOKS,
    "outbox_summary": _OUTBOX_SUMMARY,
}

SCRIPTS: Mapping[str, str] = {name: _PRELUDE + body for name, body in _BODIES.items()}
"""Every script's source, by name."""
