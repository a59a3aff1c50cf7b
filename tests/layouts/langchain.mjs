// LangChain.js @langchain/redis RedisChatMessageHistory, the real client (tests/chat_libraries.rs):
//
//   node langchain.mjs write --url URL --prefix P --conversations N --messages M [--ttl S]
//   node langchain.mjs read  --url URL --id SESSION
//
// Same output as client.py. Run with NODE_PATH pointing at an `npm install @langchain/redis
// @langchain/core` (tests/layouts/setup.sh caches one).
import { createRequire } from "node:module";
import path from "node:path";

// Resolved from the npm install NODE_PATH names (an ES module ignores NODE_PATH itself).
const require = createRequire(path.join(process.env.NODE_PATH || "node_modules", "..", "package.json"));
const { RedisChatMessageHistory } = require("@langchain/redis");
const { HumanMessage, AIMessage } = require("@langchain/core/messages");

const [action, ...rest] = process.argv.slice(2);
const args = {};
for (let i = 0; i < rest.length; i += 2) args[rest[i].replace(/^--/, "")] = rest[i + 1];
const text = (s, j) => `${s} says ${j}: h\u00e9llo \u2713 "quoted"\nsecond line`;
const roles = { human: "user", ai: "assistant", system: "system", tool: "tool" };

async function history(sessionId) {
  const h = new RedisChatMessageHistory({
    sessionId,
    sessionTTL: args.ttl ? Number(args.ttl) : undefined,
    config: { url: args.url },
  });
  return h;
}

if (action === "write") {
  const sessions = {};
  for (let i = 0; i < Number(args.conversations || 3); i++) {
    const sid = `${args.prefix || "s"}${i}`;
    const h = await history(sid);
    sessions[sid] = [];
    for (let j = 0; j < Number(args.messages || 4); j++) {
      const role = j % 2 === 0 ? "user" : "assistant";
      const t = text(sid, j);
      await h.addMessage(role === "user" ? new HumanMessage(t) : new AIMessage(t));
      sessions[sid].push({ role, content: t });
    }
    await h.client.quit();
  }
  console.log(JSON.stringify({ sessions }));
} else {
  const h = await history(args.id);
  const got = await h.getMessages();
  await h.client.quit();
  console.log(JSON.stringify(got.map((m) => ({ role: roles[m._getType()] ?? m._getType(), content: m.content }))));
}
