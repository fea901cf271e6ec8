// The seed's reference server, as its design note describes it, for herald-bench to
// measure Herald against: WebSockets on Node's `ws`, Redis pub/sub with `ioredis`, several
// instances behind a load balancer. `POST /publish` puts the body on one Redis channel;
// every instance is subscribed and sends it to each of its sockets. No auth, no rooms, no
// history, no bounds: the cheapest thing that does the job, so the comparison is kind to it.
//
// Usage: REDIS_URL=redis://127.0.0.1:6379 PORT=0 node server.js  (prints where it listens)

import http from "node:http";
import Redis from "ioredis";
import { WebSocketServer } from "ws";

const CHANNEL = "seed:notifications";
const redisUrl = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const publisher = new Redis(redisUrl);
const subscriber = new Redis(redisUrl);

const server = http.createServer(async (req, res) => {
  if (req.method !== "POST" || req.url !== "/publish") return res.writeHead(404).end();
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const instances = await publisher.publish(CHANNEL, Buffer.concat(chunks));
  const answer = JSON.stringify({ instances });
  res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(answer) }).end(answer);
});
const sockets = new WebSocketServer({ server });

await subscriber.subscribe(CHANNEL);
subscriber.on("messageBuffer", (_channel, message) => {
  for (const socket of sockets.clients) if (socket.readyState === 1) socket.send(message, { binary: false });
});
server.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => {
  const { address, port } = server.address();
  console.log(`seed listening on ${address}:${port}`);
});
