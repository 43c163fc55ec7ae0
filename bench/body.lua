-- wrk script: POST the request body in the file named by $BODY.
local f = assert(io.open(os.getenv("BODY"), "rb"))
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
-- $KEY: sent as the caller's key (AUTH=on bench/traffic.sh).
local key = os.getenv("KEY")
if key and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end
wrk.body = f:read("*a")
f:close()
