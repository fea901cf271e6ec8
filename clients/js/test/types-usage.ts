// Compiled (never run) by types.test.js: the declarations describe the API as apps use it.
import { HeraldClient, HeraldError, backoffDelay } from "../herald-client.js";
const c = new HeraldClient({ url: "ws://x/local", getToken: async () => "t" });
c.on("connected", (e) => console.log(e.transport));
c.on("recovery_failed", (e) => console.log(e.room, e.since.offset));
const off = c.subscribe<{ order: number }>("orders", (n) => console.log(n.data.order, n.offset));
off();
c.publish("orders", { a: 1 }).then((a) => a.offset).catch((e: HeraldError) => e.code);
c.presence("orders").then((p) => p.count + p.members.map((m) => m.user + m.connectionId).length);
const d: number = backoffDelay(3);
