-- wrk script for bench/placement.py: `wrk -s bench/mixed.lua URL -- SHORT LONG PERCENT`
-- asks for SHORT ms of handler CPU, and for LONG ms in PERCENT of requests.
function init(args)
   short = args[1] or "1"
   long = args[2] or "20"
   percent = tonumber(args[3]) or 10
   math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end

function request()
   local ms = short
   if math.random(100) <= percent then
      ms = long
   end
   return wrk.format("GET", "/?ms=" .. ms)
end
