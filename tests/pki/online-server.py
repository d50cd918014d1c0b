#!/usr/bin/python3
"""online-server.py PORT DIR: the CA's web server for tests, on 127.0.0.1.

GET /NAME           the file DIR/www/NAME (CRLs, caIssuers certificates)
GET /moved/NAME     a redirect to /NAME
GET /twice/NAME     a redirect to /moved/NAME (two hops)
GET /big            8 MB of zeros, with a Content-Length
GET /bigstream      8 MB of zeros, without one (until the connection closes)
GET /elsewhere      a redirect to http://10.255.255.1/inter.der
GET /slow/NAME      the file DIR/www/NAME, after a second
GET|POST /broken/…  HTTP 503
GET /ocsp/TAG/REQ   an OCSP request, base64 and URL-escaped (RFC 5019)
POST /ocsp/TAG/     an OCSP request as the body (RFC 6960)

OCSP answers come from `openssl ocsp` over DIR/inter/index.txt, signed by
the intermediate (`openssl ocsp -port` would listen on every address);
for TAG "forged" by the key of the leaf "good" (not authorized), for TAG
"delegated" by DIR/responder (a delegated responder, RFC 6960 §4.2.2.2);
for TAG "replay" the first answer is sent again for every later request
(an old answer replayed: its nonce, if any, is not the new request's).
Every request is logged to stderr as one line "METHOD PATH".
"""
import base64
import http.server
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse

PORT, DIR = int(sys.argv[1]), sys.argv[2]


REPLAYED = []


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def log_request(self, code="-", size="-"):
        sys.stderr.write("%s %s\n" % (self.command, self.path.split("?")[0]))
        sys.stderr.flush()

    def reply(self, code, body=b"", ctype="application/octet-stream", extra=()):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def ocsp(self, tag, der):
        if tag == "replay" and REPLAYED:
            return self.reply(200, REPLAYED[0], "application/ocsp-response")
        signer = {"forged": "good", "delegated": "responder"}.get(tag, "inter")
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "req"), "wb") as f:
                f.write(der)
            r = subprocess.run(
                ["openssl", "ocsp", "-index", os.path.join(DIR, "inter/index.txt"),
                 "-rsigner", os.path.join(DIR, signer + ".crt"),
                 "-rkey", os.path.join(DIR, signer + ".key"),
                 "-CA", os.path.join(DIR, "inter.crt"), "-ndays", "1",
                 "-reqin", os.path.join(d, "req"), "-respout", os.path.join(d, "resp")],
                capture_output=True)
            if r.returncode != 0:
                return self.reply(500)
            with open(os.path.join(d, "resp"), "rb") as f:
                answer = f.read()
        if tag == "replay":
            REPLAYED.append(answer)
        self.reply(200, answer, "application/ocsp-response")

    def do_GET(self):
        path = self.path
        if path.startswith("/ocsp/"):
            tag, req = path[len("/ocsp/"):].split("/", 1)
            return self.ocsp(tag, base64.b64decode(urllib.parse.unquote(req)))
        if path.startswith("/broken/"):
            return self.reply(503)
        if path == "/big":
            return self.reply(200, b"\0" * (8 << 20))
        if path == "/bigstream":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                for _ in range(8 << 10):
                    self.wfile.write(b"\0" * 1024)
            except OSError:
                pass
            return
        if path == "/elsewhere":
            return self.reply(302, extra=[("Location", "http://10.255.255.1/inter.der")])
        if path.startswith("/moved/"):
            return self.reply(302, extra=[("Location", path[len("/moved"):])])
        if path.startswith("/twice/"):
            return self.reply(302, extra=[("Location", "/moved" + path[len("/twice"):])])
        if path.startswith("/slow/"):
            time.sleep(1)
        name = os.path.basename(path)
        try:
            with open(os.path.join(DIR, "www", name), "rb") as f:
                self.reply(200, f.read())
        except OSError:
            self.reply(404)

    def do_POST(self):
        der = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path.startswith("/broken/"):
            return self.reply(503)
        if self.path.startswith("/ocsp/"):
            return self.ocsp(self.path.split("/")[2], der)
        self.reply(404)


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
