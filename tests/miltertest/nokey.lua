-- A sender without a key: accepted at end of headers, nothing changed.
dofile(dir .. "/common.lua")

local conn = start_message("127.0.0.1", {
	{"From", "someone@unknown.example"},
	{"Subject", "no key"},
})
check(mt.getreply(conn) == SMFIR_ACCEPT, "expected accept at end of headers")
mt.disconnect(conn)
