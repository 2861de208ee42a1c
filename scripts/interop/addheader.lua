-- Debian miltertest (Lua) script, adapted from shared/harness/addheader.lua:
-- drives a milter that adds one header at end of message and checks it.
-- env: MILTER (socket, e.g. unix:/tmp/x.sock), HNAME, HVALUE (the header expected).
-- Stages the milter negotiated away (SMFIP_NO*) are not sent, as an MTA would.
local sock = os.getenv("MILTER") or error("MILTER not set")
local hname = os.getenv("HNAME") or "X-Interop"
local hvalue = os.getenv("HVALUE") or "lua"
local function want(conn, code, what)
  local r = mt.getreply(conn)
  if r ~= code then error(what .. ": unexpected reply " .. tostring(r)) end
end
local function run()
  local conn = mt.connect(sock, 3, 1)
  if conn == nil then error("mt.connect() failed") end
  if not mt.test_option(conn, SMFIP_NOCONNECT) then
    if mt.conninfo(conn, "client.test", "127.0.0.1") ~= nil then error("mt.conninfo() failed") end
    want(conn, SMFIR_CONTINUE, "connect")
  end
  if not mt.test_option(conn, SMFIP_NOHELO) then
    if mt.helo(conn, "client.test") ~= nil then error("mt.helo() failed") end
    want(conn, SMFIR_CONTINUE, "helo")
  end
  mt.macro(conn, SMFIC_MAIL, "i", "LUA1")
  if not mt.test_option(conn, SMFIP_NOMAIL) then
    if mt.mailfrom(conn, "<a@example.org>") ~= nil then error("mt.mailfrom() failed") end
    want(conn, SMFIR_CONTINUE, "mail")
  end
  if not mt.test_option(conn, SMFIP_NORCPT) then
    if mt.rcptto(conn, "<b@example.com>") ~= nil then error("mt.rcptto() failed") end
    want(conn, SMFIR_CONTINUE, "rcpt")
  end
  if not mt.test_option(conn, SMFIP_NODATA) then
    if mt.data(conn) ~= nil then error("mt.data() failed") end
    want(conn, SMFIR_CONTINUE, "data")
  end
  if not mt.test_option(conn, SMFIP_NOHDRS) then
    if mt.header(conn, "From", "a@example.org") ~= nil then error("mt.header() failed") end
    want(conn, SMFIR_CONTINUE, "header")
    if mt.header(conn, "Subject", "hello") ~= nil then error("mt.header() failed") end
    want(conn, SMFIR_CONTINUE, "header")
  end
  if not mt.test_option(conn, SMFIP_NOEOH) then
    if mt.eoh(conn) ~= nil then error("mt.eoh() failed") end
    want(conn, SMFIR_CONTINUE, "eoh")
  end
  if not mt.test_option(conn, SMFIP_NOBODY) then
    if mt.bodystring(conn, "This is a test!\r\n") ~= nil then error("mt.bodystring() failed") end
    want(conn, SMFIR_CONTINUE, "body")
  end
  if mt.eom(conn) ~= nil then error("mt.eom() failed") end
  local r = mt.getreply(conn)
  if r ~= SMFIR_ACCEPT and r ~= SMFIR_CONTINUE then error("eom: unexpected reply " .. tostring(r)) end
  if not mt.eom_check(conn, MT_HDRADD, hname, hvalue) then error("no " .. hname .. " header added") end
  mt.disconnect(conn)
end
local ok, err = pcall(run)
if not ok then print("ERROR: " .. tostring(err)); os.exit(1) end
mt.echo("PASS: " .. hname .. ": " .. hvalue .. " was added")
