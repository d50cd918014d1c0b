-- 8-bit data in a multipart without a boundary cannot be signed safely: the
-- malformed action (default accept) delivers it unchanged.
dofile(dir .. "/common.lua")

local conn = start_message("127.0.0.1", {
	{"From", "alice@example.com"},
	{"MIME-Version", "1.0"},
	{"Content-Type", "multipart/mixed"},
})
check(mt.getreply(conn) == SMFIR_CONTINUE, "eoh not continued")
check(mt.bodystring(conn, "--x\r\nContent-Type: text/plain\r\n\r\n\195\188ber\r\n--x--\r\n") == nil, "body failed")
check(mt.eom(conn) == nil, "eom failed")
local r = mt.getreply(conn)
check(r == SMFIR_ACCEPT or r == SMFIR_CONTINUE, "message not accepted")
check(not mt.eom_check(conn, MT_BODYCHANGE), "body must not change")
check(not mt.eom_check(conn, MT_HDRCHANGE), "headers must not change")
mt.disconnect(conn)
