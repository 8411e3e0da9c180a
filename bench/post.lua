-- wrk script for the POST echo benchmarks: `wrk -s bench/post.lua URL -- BYTES`
-- sends BYTES of "x" as the body of every request (the default is 1024).
function init(args)
   local size = tonumber(args[1]) or 1024
   wrk.method = "POST"
   wrk.body = string.rep("x", size)
   wrk.headers["Content-Type"] = "application/octet-stream"
end
