// A Node.js `http` server answering in the ways Node writes responses:
//   /len/<i>      res.end(body): one write, Content-Length
//   /chunk/<i>    res.write() twice then res.end(): chunked, several writes
//   /cork/<i>     chunks written while the socket is corked: one writev, many iovecs
//   /big/<i>      a 200 KiB body (writes larger than the capture)
// usage: node node_server.js PORT
const http = require("http");

const port = Number(process.argv[2]);
const server = http.createServer((req, res) => {
  const kind = req.url.split("/")[1];
  if (kind === "chunk") {
    res.write("first part ");
    setImmediate(() => {
      res.write("x".repeat(3000));
      res.end(" last");
    });
  } else if (kind === "cork") {
    res.socket.cork();
    res.write("a".repeat(100));
    res.write("b".repeat(5000));
    res.end("c");
    process.nextTick(() => res.socket && res.socket.uncork());
  } else if (kind === "big") {
    res.end(Buffer.alloc(200 * 1024, 0x7a));
  } else {
    res.end("ok " + req.url);
  }
});
server.keepAliveTimeout = 30000;
server.listen(port, "127.0.0.1", () => console.log("READY"));
process.on("SIGTERM", () => process.exit(0));
