// The Node.js middle tier of the runtime tests: an `http` server, and a
// keep-alive Agent to the backend. GET /m/<rest> calls GET <backend>/b/<rest>
// and streams its body back (chunked, as Node writes it).
//
//   node middle.js HOST PORT BACKEND_HOST BACKEND_PORT
const http = require("http");

const [host, port, backendHost, backendPort] = process.argv.slice(2);
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
const server = http.createServer((req, res) => {
  const path = "/b/" + req.url.slice("/m/".length);
  http
    .get({ host: backendHost, port: Number(backendPort), path, agent }, (up) => {
      res.writeHead(up.statusCode, { "Content-Type": "text/plain" });
      up.pipe(res);
    })
    .on("error", (e) => {
      res.writeHead(502);
      res.end(String(e));
    });
});
server.keepAliveTimeout = 60000;
server.listen(Number(port), host, () => console.log("READY"));
process.on("SIGTERM", () => process.exit(0));
