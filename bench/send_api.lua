-- wrk script for bench/outbound_api.py: POSTs prepared JSON bodies to the send API with an API key.
-- Arguments (after `--`): FILE FIRST COUNT THREADS KEY. FILE has one JSON body per line; thread i of
-- THREADS sends lines FIRST+i, FIRST+i+THREADS, ... of the slice [FIRST, FIRST+COUNT), then repeats.

local thread_count = 0

function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
end

function init(args)
  local file, first, count, threads, key = args[1], tonumber(args[2]), tonumber(args[3]), tonumber(args[4]), args[5]
  requests = {}
  next_request = 1
  local index = 0
  for line in io.lines(file) do
    if index >= first + count then
      break
    end
    if index >= first and (index - first) % threads == thread_index then
      requests[#requests + 1] = wrk.format("POST", wrk.path, {
        ["Content-Type"] = "application/json",
        ["Authorization"] = "Bearer " .. key,
      }, line)
    end
    index = index + 1
  end
end

function request()
  local next = requests[next_request]
  next_request = next_request % #requests + 1
  return next
end
