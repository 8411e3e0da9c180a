-- wrk: sends `depth` requests (default 16) at once on each connection, as
-- TechEmpower's pipelined plaintext test does: wrk ... -s pipeline.lua -- 16
init = function(args)
  local depth = tonumber(args[1]) or 16
  local r = {}
  for i = 1, depth do
    r[i] = wrk.format(nil)
  end
  req = table.concat(r)
end

request = function()
  return req
end
