-- key_not_found = "tempfail": the message is refused with a 4xx.
dofile(dir .. "/common.lua")

local conn = start_message("127.0.0.1", {
	{"From", "someone@unknown.example"},
	{"Subject", "no key"},
})
check(mt.getreply(conn) == SMFIR_REPLYCODE, "expected a 4xx reply code")
mt.disconnect(conn)
