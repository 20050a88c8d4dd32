// The Node.js middle tier of the runtime tests: an `http` server, and a
// keep-alive Agent to the backend. GET /m/<rest> calls GET <backend>/b/<rest>
// and streams its body back (chunked, as Node writes it). With `gap`, requests
// with an odd id wait on a timer (1-4 ms) before they call: an asynchronous gap,
// after which the call is written in whatever turn the loop is in.
//
//   node middle.js HOST PORT BACKEND_HOST BACKEND_PORT [gap]
const http = require("http");

const [host, port, backendHost, backendPort, mode] = process.argv.slice(2);
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
const server = http.createServer((req, res) => {
  const path = "/b/" + req.url.slice("/m/".length);
  const id = Number(req.url.split("/").pop()) || 0;
  if (mode === "gap" && id % 2 === 1) {
    setTimeout(() => call(path, res), 1 + (id % 4));
  } else {
    call(path, res);
  }
});

function call(path, res) {
  http
    .get({ host: backendHost, port: Number(backendPort), path, agent }, (up) => {
      res.writeHead(up.statusCode, { "Content-Type": "text/plain" });
      up.pipe(res);
    })
    .on("error", (e) => {
      res.writeHead(502);
      res.end(String(e));
    });
}
server.keepAliveTimeout = 60000;
server.listen(Number(port), host, () => console.log("READY"));
process.on("SIGTERM", () => process.exit(0));
