"""The Lua scripts: each runs atomically on the server, which is what makes recovery exactly-once,
chords fire once, and lets one round trip do the work of many.

Key names built inside a script (``{queue}:machinery:...``) share the queue's hash slot by design, so
these scripts stay valid on Redis Cluster. On a cluster the broker passes keys of one slot only: each
queue's own delayed ZSET (:data:`MOVE_DUE_QUEUE` instead of :data:`MOVE_DUE`, which moves from Go's
global ZSET to any queue), a tagged dead list, and a chord mutex key in the group's slot (Go's global
``TriggerChordMutex`` is then taken around the script instead, see backend.py).
"""

from __future__ import annotations

from .client import Script

__all__ = [
    "ACK_REDELIVERED",
    "CLAIM_GO_DELAYED",
    "DEAD",
    "EVENTS_HEARTBEAT",
    "EVENTS_OF_TASK",
    "EVENTS_RECORD",
    "MOVE_DUE",
    "MOVE_DUE_QUEUE",
    "NACK_DELAY",
    "NACK_REQUEUE",
    "PUBLISH_PRIORITY",
    "PURGE_DELAYED",
    "RECOVER",
    "RELEASE_LOCK",
    "SET_STATES",
    "TAKE",
    "TRIGGER_CHORD",
    "WAIT_MARK",
]

#: 2^40: the priority band width of a priority ZSET score: ``(255 - priority) * 2^40 + sequence``.
PRIORITY_BAND = 1 << 40
#: Seconds the "redelivered" marks of a queue live after their last change.
REDELIVERED_TTL = 7 * 24 * 3600

#: Lua helpers the scripts below share (prepended to their source).
_HELPERS = """
local BAND = @BAND@
local function push(cmd, key, items)
  for i = 1, #items, 1000 do
    redis.call(cmd, key, unpack(items, i, math.min(i + 999, #items)))
  end
end
local function priority_in(d)
  if type(d) == 'table' and type(d['Priority']) == 'number' and d['Priority'] > 0 then
    return math.min(math.floor(d['Priority']), 255)
  end
  return 0
end
local function priority_of(m)
  local ok, d = pcall(cjson.decode, m)
  if ok then return priority_in(d) end
  return 0
end
-- ZADD m to a priority ZSET: the band of priority p, then FIFO by the sequence at seq_key
local function push_prioritised(zset, seq_key, p, m)
  local seq = redis.call('INCR', seq_key) % BAND
  redis.call('ZADD', zset, string.format('%.0f', (255 - p) * BAND + seq), m)
end
-- the server's clock in ns, as a string (ZSET scores of delayed messages)
local function now_ns()
  local t = redis.call('TIME')
  return t[1] .. string.format('%06d', tonumber(t[2])) .. '000'
end
""".replace("@BAND@", str(PRIORITY_BAND))

#: Move up to ARGV[1] messages from the queue (the priority ZSET first when ARGV[2] == '1') to the
#: consumer's processing list; register the consumer while it holds any; report redelivery marks.
#: KEYS: queue, processing, redelivered, priority, registry, heartbeat
#: ARGV: count, use_priority, consumer id, lease ms
TAKE = Script(
    "take",
    _HELPERS
    + """
local n = tonumber(ARGV[1])
local out = {}
if n > 0 and ARGV[2] == '1' then
  local popped = redis.call('ZPOPMIN', KEYS[4], n)
  for i = 1, #popped, 2 do out[#out + 1] = popped[i] end
  if #out > 0 then push('RPUSH', KEYS[2], out) end
  n = n - #out
end
if n > 0 then
  local items = redis.call('LRANGE', KEYS[1], 0, n - 1)
  if #items > 0 then
    redis.call('LTRIM', KEYS[1], #items, -1)
    push('RPUSH', KEYS[2], items)
    for i = 1, #items do out[#out + 1] = items[i] end
  end
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[6], '1', 'PX', ARGV[4])
  redis.call('SADD', KEYS[5], ARGV[3])
end
local flags = {}
local marked = redis.call('EXISTS', KEYS[3])
if marked == 1 then
  for i = 1, #out do flags[i] = tonumber(redis.call('HGET', KEYS[3], redis.sha1hex(out[i]))) or 0 end
end
return {out, flags, marked}
""",
)

#: Give the messages of dead consumers (heartbeat key gone) back to the queue, oldest at the head,
#: marked as redelivered; with ARGV[3] set, release that one consumer unconditionally (close()).
#: KEYS: registry, queue, redelivered, priority
#: ARGV: processing key prefix, heartbeat key prefix, only this consumer id (or ''), use_priority, seq key
RECOVER = Script(
    "recover",
    _HELPERS
    + """
local ids
if ARGV[3] ~= '' then ids = {ARGV[3]} else ids = redis.call('SMEMBERS', KEYS[1]) end
local moved = 0
for _, id in ipairs(ids) do
  if ARGV[3] ~= '' or redis.call('EXISTS', ARGV[2] .. id) == 0 then
    local proc = ARGV[1] .. id
    local items = redis.call('LRANGE', proc, 0, -1)
    if #items > 0 then
      local plain = {}
      for i = #items, 1, -1 do
        local m = items[i]
        local p = 0
        if ARGV[4] == '1' then p = priority_of(m) end
        if p > 0 then
          redis.call('ZADD', KEYS[4], string.format('%.0f', (255 - p) * BAND), m)
        else
          plain[#plain + 1] = m
        end
        redis.call('HINCRBY', KEYS[3], redis.sha1hex(m), 1)
      end
      if #plain > 0 then push('LPUSH', KEYS[2], plain) end
      redis.call('EXPIRE', KEYS[3], @TTL@)
      moved = moved + #items
    end
    redis.call('DEL', proc, ARGV[2] .. id)
    redis.call('SREM', KEYS[1], id)
  end
end
return moved
""".replace("@TTL@", str(REDELIVERED_TTL)),
)

#: Ack of a message that carried a redelivery mark: remove it and its mark.
#: KEYS: processing, redelivered   ARGV: body
ACK_REDELIVERED = Script(
    "ack_redelivered",
    """
local n = redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('HDEL', KEYS[2], redis.sha1hex(ARGV[1]))
return n
""",
)

#: Give one message back to its queue (head), or to the priority ZSET when ARGV[2] is a score.
#: KEYS: processing, queue, redelivered, priority   ARGV: body, priority score or ''
NACK_REQUEUE = Script(
    "nack_requeue",
    """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
if ARGV[2] ~= '' then
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
else
  redis.call('LPUSH', KEYS[2], ARGV[1])
end
redis.call('HINCRBY', KEYS[3], redis.sha1hex(ARGV[1]), 1)
redis.call('EXPIRE', KEYS[3], @TTL@)
return 1
""".replace("@TTL@", str(REDELIVERED_TTL)),
)

#: Give one message back later: into the delayed ZSET with score = due time in ns; wake a mover.
#: KEYS: processing, delayed, redelivered, mover wake list   ARGV: body, score
NACK_DELAY = Script(
    "nack_delay",
    """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('LPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], 0, 0)
redis.call('HINCRBY', KEYS[3], redis.sha1hex(ARGV[1]), 1)
redis.call('EXPIRE', KEYS[3], @TTL@)
return 1
""".replace("@TTL@", str(REDELIVERED_TTL)),
)

#: Dead-letter one message: from the processing list to the queue's dead list, and its reason, time and
#: delivery count (JSON) to the parallel list ``<dead>:meta`` (the dead list keeps the bare bodies).
#: KEYS: processing, dead, redelivered, dead meta   ARGV: body, meta
DEAD = Script(
    "dead",
    """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[4], ARGV[2])
redis.call('HDEL', KEYS[3], redis.sha1hex(ARGV[1]))
return 1
""",
)

#: Publish messages of one priority (> 0) to a queue's priority ZSET, FIFO within the priority.
#: KEYS: priority, sequence   ARGV: priority, body...
PUBLISH_PRIORITY = Script(
    "publish_priority",
    _HELPERS
    + """
local p = tonumber(ARGV[1])
for i = 2, #ARGV do push_prioritised(KEYS[1], KEYS[2], p, ARGV[i]) end
return #ARGV - 1
""",
)

#: Move due delayed messages (score <= the server's clock in ns) to their queues, oldest first, as
#: Go's poller does one by one (RPUSH to the message's RoutingKey, or ARGV[2] when it has none).
#: Returns {moved, next due score or false, server time in ns}.
#: KEYS: delayed   ARGV: limit, default queue, use_priority
MOVE_DUE = Script(
    "move_due",
    _HELPERS
    + """
local now = now_ns()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(due) do
  redis.call('ZREM', KEYS[1], m)
  local q = ARGV[2]
  local p = 0
  local ok, d = pcall(cjson.decode, m)
  if ok and type(d) == 'table' then
    local rk = d['RoutingKey']
    if type(rk) == 'string' and rk ~= '' then q = rk end
    if ARGV[3] == '1' then p = priority_in(d) end
  end
  if p > 0 then
    local tag = '{' .. q .. '}:machinery:'
    push_prioritised(tag .. 'priority', tag .. 'priority_seq', p, m)
  else
    redis.call('RPUSH', q, m)
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, nxt[2] or false, now}
""",
)

#: Redis Cluster: move the due messages of one queue's own delayed ZSET (same slot) to that queue,
#: oldest first (or to its priority ZSET when ARGV[2] == '1' and the message has a priority).
#: Returns {moved, next due score or false, server time in ns}.
#: KEYS: delayed, queue, priority, priority_seq   ARGV: limit, use_priority
MOVE_DUE_QUEUE = Script(
    "move_due_queue",
    _HELPERS
    + """
local now = now_ns()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(due) do
  redis.call('ZREM', KEYS[1], m)
  local p = 0
  if ARGV[2] == '1' then p = priority_of(m) end
  if p > 0 then
    push_prioritised(KEYS[3], KEYS[4], p, m)
  else
    redis.call('RPUSH', KEYS[2], m)
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, nxt[2] or false, now}
""",
)

#: Redis Cluster, Go interop: claim the due messages of Go's global delayed ZSET into this mover's
#: "moving" list (same slot), guarded by a heartbeat key; the client then pushes them to their queues
#: (other slots) and deletes the list. A dead mover's list goes back into the ZSET, due at once, so a
#: message is moved at least once whoever dies when. Returns {claimed, next due score or false, now}.
#: KEYS: delayed, moving list, heartbeat, registry of movers
#: ARGV: limit, mover id, lease ms, moving prefix, heartbeat prefix
CLAIM_GO_DELAYED = Script(
    "claim_go_delayed",
    _HELPERS
    + """
local now = now_ns()
for _, id in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  if redis.call('EXISTS', ARGV[5] .. id) == 0 then
    for _, m in ipairs(redis.call('LRANGE', ARGV[4] .. id, 0, -1)) do
      redis.call('ZADD', KEYS[1], now, m)
    end
    redis.call('DEL', ARGV[4] .. id)
    redis.call('SREM', KEYS[4], id)
  end
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(due) do
  redis.call('ZREM', KEYS[1], m)
  redis.call('RPUSH', KEYS[2], m)
end
if #due > 0 then
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
  redis.call('SADD', KEYS[4], ARGV[2])
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {due, nxt[2] or false, now}
""",
)

#: Remove the delayed messages bound for one queue. KEYS: delayed   ARGV: queue, default queue
PURGE_DELAYED = Script(
    "purge_delayed",
    """
local n = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local q = ARGV[2]
  local ok, d = pcall(cjson.decode, m)
  if ok and type(d) == 'table' and type(d['RoutingKey']) == 'string' and d['RoutingKey'] ~= '' then
    q = d['RoutingKey']
  end
  if q == ARGV[1] then
    redis.call('ZREM', KEYS[1], m)
    n = n + 1
  end
end
return n
""",
)

_STORE = """
local function store(key, notify_key, waiter_key, json, name_pos, created_pos, fallback, ttl, notify_ttl)
  if name_pos > 0 or created_pos > 0 then
    local old = redis.call('GET', key)
    local created = fallback
    local name = ''
    if old then
      -- the top-level CreatedAt is the last one (Go's field order puts it after Results): look near
      -- the end first, then through the whole record
      local s, e
      for _, from in ipairs({math.max(1, #old - 120), 1}) do
        local pos = from
        while true do
          local s2, e2 = string.find(old, '"CreatedAt":"', pos, true)
          if not s2 then break end
          s, e, pos = s2, e2, e2 + 1
        end
        if s then break end
      end
      if s then
        local q = string.find(old, '"', e + 1, true)
        local c = q and string.sub(old, e + 1, q - 1)
        if c and c ~= '0001-01-01T00:00:00Z' then created = c end
      end
      local n = string.match(old, '"TaskName":"(.-)","State":"')
      if n then name = n end
    end
    if created_pos > 0 then
      json = string.sub(json, 1, created_pos + 12) .. created .. string.sub(json, created_pos + 33)
    end
    if name_pos > 0 then
      json = string.sub(json, 1, name_pos + 11) .. name .. string.sub(json, name_pos + 12)
    end
  end
  if tonumber(ttl) > 0 then
    redis.call('SET', key, json, 'EX', ttl)
  else
    redis.call('SET', key, json)
  end
  if notify_ttl ~= '0' and redis.call('EXISTS', waiter_key) == 1 then
    redis.call('DEL', notify_key)
    redis.call('RPUSH', notify_key, json)
    redis.call('EXPIRE', notify_key, notify_ttl)
  end
end
"""

#: Store task states in order (Go's layout: the JSON at the bare uuid, EX results_expire_in), each
#: keeping the task name and creation time of the record before it when it has none (Go merges the
#: same way), and wake waiters when a state is final (the notification carries the state). One call
#: for several states reads one reply instead of one per state; on a cluster each state is its own
#: call (its three keys share the uuid's slot; different states do not).
#: KEYS: per state: state key, notify key, waiter key (the notify list is written only while
#:       somebody waits)
#: ARGV: fallback creation time, ttl s (0 = never expire), then per state: json, position of
#:       '"TaskName":""' (1-based, 0 = has a name), position of the zero
#:       '"CreatedAt":"0001-01-01T00:00:00Z"' (0 = has a time), notify ttl s (0 = not final)
SET_STATES = Script(
    "set_states",
    _STORE
    + """
for i = 0, #KEYS / 3 - 1 do
  local a = 3 + i * 4
  store(KEYS[i * 3 + 1], KEYS[i * 3 + 2], KEYS[i * 3 + 3], ARGV[a], tonumber(ARGV[a + 1]),
        tonumber(ARGV[a + 2]), ARGV[1], ARGV[2], ARGV[a + 3])
end
return #KEYS / 3
""",
)

#: A waiter's first step, before it blocks on the done list: mark the waiter and read the state; a state
#: already final is pushed onto the (empty) done list too, so the ``BLMOVE`` sent in the same round trip
#: returns at once instead of blocking (one round trip instead of two for ``AsyncResult.get``).
#: The top-level ``State`` is the first ``"State":"`` of Go's TaskState JSON (strings before it are escaped).
#: KEYS: state key, done list, waiter mark   ARGV: waiter ttl s, done list ttl s   Returns: the state or nil
WAIT_MARK = Script(
    "wait_mark",
    """
redis.call('SET', KEYS[3], '1', 'EX', ARGV[1])
local state = redis.call('GET', KEYS[1])
if state then
  local _, e = string.find(state, '"State":"', 1, true)
  local name = e and string.sub(state, e + 1, e + 7)
  if (name == 'SUCCESS' or name == 'FAILURE') and redis.call('EXISTS', KEYS[2]) == 0 then
    redis.call('RPUSH', KEYS[2], state)
    redis.call('EXPIRE', KEYS[2], ARGV[2])
  end
end
return state
""",
)

#: Set ChordTriggered on a group record, once: 1 = this caller fired it, 0 = already fired,
#: -1 = a Go worker holds TriggerChordMutex (try again shortly), -2 = no such group, -3 = malformed.
#: KEYS: group key, Go's chord mutex key   ARGV: ttl s (0 = never expire)
TRIGGER_CHORD = Script(
    "trigger_chord",
    """
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local meta = redis.call('GET', KEYS[1])
if not meta then return -2 end
local s, e = string.find(meta, '"ChordTriggered":false', 1, true)
if not s then
  if string.find(meta, '"ChordTriggered":true', 1, true) then return 0 end
  return -3
end
meta = string.sub(meta, 1, s - 1) .. '"ChordTriggered":true' .. string.sub(meta, e + 1)
if tonumber(ARGV[1]) > 0 then
  redis.call('SET', KEYS[1], meta, 'EX', ARGV[1])
else
  redis.call('SET', KEYS[1], meta)
end
return 1
""",
)

#: Compare-and-delete: release a lock only when this owner's token is still there.
#: KEYS: lock key   ARGV: token
RELEASE_LOCK = Script(
    "release_lock",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""",
)


#: The events store (machinery.events): append a batch to the capped stream in the batch's order, index
#: each task's stream ids (so an event trimmed from the stream is gone from its history too), trim the
#: stream to max events and what is older than results_expire_in, then drop the index buckets whose
#: newest id is older than the stream's oldest entry: the index is bounded like the stream.
#: The index is a series of hashes (task uuid -> its ids, space-separated), a new one once the current
#: one holds ARGV[5] tasks; the ZSET holds each bucket's number scored by the newest id written into it
#: (``ms * 4096 + seq``: exact in a double; a sequence past 4,095 in one ms only keeps a bucket longer).
#: A task's field keeps its last ~1,000 ids. Every key has the same hash tag: one slot.
#: KEYS: stream, bucket ZSET, current bucket number   ARGV: max events, ttl s, oldest id kept (ms),
#: bucket key prefix, tasks per bucket, then per event its task uuid and its JSON
EVENTS_RECORD = Script(
    "events_record",
    """
local function score(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return string.format('%.0f', tonumber(ms) * 4096 + math.min(tonumber(seq), 4095))
end
local ids, order, last = {}, {}, nil
for i = 6, #ARGV, 2 do
  local task = ARGV[i]
  last = redis.call('XADD', KEYS[1], '*', 'e', ARGV[i + 1])
  local list = ids[task]
  if list then list[#list + 1] = last else ids[task] = {last}; order[#order + 1] = task end
end
if not last then return 0 end
local ttl = ARGV[2]
local bucket = tonumber(redis.call('GET', KEYS[3]) or '1')
local index = ARGV[4] .. bucket
if redis.call('HLEN', index) >= tonumber(ARGV[5]) then
  bucket = bucket + 1
  index = ARGV[4] .. bucket
end
redis.call('SET', KEYS[3], bucket, 'EX', ttl)
for _, task in ipairs(order) do
  local value = table.concat(ids[task], ' ')
  local old = redis.call('HGET', index, task)
  if old then
    if #old > 16000 then old = string.sub(old, string.find(old, ' ', #old - 16000, true) + 1) end
    value = old .. ' ' .. value
  end
  redis.call('HSET', index, task, value)
end
redis.call('EXPIRE', index, ttl)
redis.call('ZADD', KEYS[2], 'GT', score(last), bucket)
redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[1])
redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[3])
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
local oldest = first and score(first[1]) or '+inf'
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. oldest)
if #gone > 0 then
  for _, b in ipairs(gone) do redis.call('DEL', ARGV[4] .. b) end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. oldest)
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return (#ARGV - 5) / 2
""",
)

#: A task's events still in the stream, oldest first.   KEYS: stream, bucket ZSET   ARGV: task uuid,
#: bucket key prefix
EVENTS_OF_TASK = Script(
    "events_of_task",
    """
local out = {}
for _, b in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local ids = redis.call('HGET', ARGV[2] .. b, ARGV[1])
  if ids then
    for id in string.gmatch(ids, '%S+') do
      local entry = redis.call('XRANGE', KEYS[1], id, id)[1]
      if entry then out[#out + 1] = entry[2][2] end
    end
  end
end
return out
""",
)

#: A worker's latest heartbeat (a hash field), its time in a ZSET; heartbeats older than the cutoff go.
#: KEYS: hash, zset   ARGV: worker, JSON, sent at, cutoff, ttl s
EVENTS_HEARTBEAT = Script(
    "events_heartbeat",
    """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
if #old > 0 then
  redis.call('HDEL', KEYS[1], unpack(old))
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return #old
""",
)
