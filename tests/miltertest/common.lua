-- Helpers shared by the miltertest scripts. The test harness defines
-- `socket` (-D socket=...) and `dir` (this directory).

local unpack = table.unpack or unpack

function check(cond, what)
	if not cond then
		-- miltertest does not print the error text itself.
		mt.echo("FAILED: " .. what)
		error(what)
	end
end

-- Connects as `ip`, starts a message from `from` and sends the headers;
-- returns the connection after end-of-headers.
function start_message(ip, headers, macros)
	local conn = mt.connect(socket, 40, 0.25)
	check(conn ~= nil, "cannot connect to " .. socket)
	check(mt.conninfo(conn, "client.example.net", ip) == nil, "conninfo failed")
	check(mt.getreply(conn) == SMFIR_CONTINUE, "connect not continued")
	-- Postfix sends the queue id with MAIL FROM as well.
	check(mt.macro(conn, SMFIC_MAIL, "i", "MT0001", unpack(macros or {})) == nil, "macro failed")
	check(mt.mailfrom(conn, "<sender@example.com>") == nil, "mailfrom failed")
	check(mt.getreply(conn) == SMFIR_CONTINUE, "mailfrom not continued")
	check(mt.rcptto(conn, "<rcpt@example.net>") == nil, "rcptto failed")
	check(mt.getreply(conn) == SMFIR_CONTINUE, "rcptto not continued")
	for _, h in ipairs(headers) do
		check(mt.header(conn, h[1], h[2]) == nil, "header failed")
	end
	check(mt.eoh(conn) == nil, "eoh failed")
	return conn
end
