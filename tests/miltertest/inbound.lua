-- An external client: inbound, nothing is signed.
dofile(dir .. "/common.lua")

local conn = start_message("192.0.2.1", {
	{"From", "alice@example.com"},
	{"Subject", "from outside"},
})
check(mt.getreply(conn) == SMFIR_ACCEPT, "inbound mail is accepted unchanged")
mt.disconnect(conn)
