-- wrk script for bench/inbound_webhook.py: POSTs pre-signed Twilio webhook bodies, each once.
-- Arguments (after `--`): FILE FIRST COUNT THREADS. FILE has one "signature<TAB>form body" per line;
-- thread i of THREADS sends lines FIRST+i, FIRST+i+THREADS, ... of the slice [FIRST, FIRST+COUNT).
-- A thread that runs out starts its share again (repeats are cheap duplicates: the driver warns).

local thread_count = 0

function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
end

function init(args)
  local file, first, count, threads = args[1], tonumber(args[2]), tonumber(args[3]), tonumber(args[4])
  requests = {}
  next_request = 1
  local index = 0
  for line in io.lines(file) do
    if index >= first + count then
      break
    end
    if index >= first and (index - first) % threads == thread_index then
      local signature, body = line:match("^([^\t]*)\t(.*)$")
      requests[#requests + 1] = wrk.format("POST", wrk.path, {
        ["Content-Type"] = "application/x-www-form-urlencoded",
        ["X-Twilio-Signature"] = signature,
      }, body)
    end
    index = index + 1
  end
end

function request()
  local next = requests[next_request]
  next_request = next_request % #requests + 1
  return next
end
