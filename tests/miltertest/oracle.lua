-- An authenticated client may not get a signature for someone else's From.
dofile(dir .. "/common.lua")

local conn = start_message("192.0.2.1", {
	{"From", "alice@example.com"},
	{"Subject", "forged"},
}, {"{auth_authen}", "mallory"})
check(mt.getreply(conn) == SMFIR_ACCEPT, "unsigned, accepted")
mt.disconnect(conn)
