"""The real chat-memory clients, writing and reading conversations in Redis (tests/chat_libraries.rs).

    client.py LIB write --url URL --prefix P --conversations N --messages M [--ttl S]
    client.py LIB read  --url URL --id SESSION

`write` has the library write N conversations of M messages (session ids P0, P1, ...) and prints
{"sessions": {id: [{"role", "content"}, ...]}}: what each conversation holds, roles normalized to
user / assistant / system / tool. `read` prints one session's messages as the library reads them
back, in the same form: restore is right when the two agree. Each LIB runs in its own venv
(tests/layouts/requirements-LIB.txt); LangChain.js is tests/layouts/langchain.mjs.
"""

import argparse
import asyncio
import json
import sys

# The name RedisVL and agent-framework are given; also the key prefix of their keys.
REDISVL_NAME = "sweeper_test"
AF_APPLICATION = "sweeper-test"


def text(session, j):
    # Not ASCII on purpose: the text must come back byte for byte.
    return f"{session} says {j}: h\u00e9llo \u2713 \"quoted\"\nsecond line"


def plan(session, m):
    """The conversation every library writes: user and assistant turns alternating."""
    return [("user" if j % 2 == 0 else "assistant", text(session, j)) for j in range(m)]


# --- LangChain (langchain-community) ----------------------------------------------------------

LC_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


def langchain_write(a, sid, turns):
    from langchain_community.chat_message_histories import RedisChatMessageHistory
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    h = RedisChatMessageHistory(sid, url=a.url, ttl=a.ttl)
    out = []
    if sid.endswith("0"):
        h.add_message(SystemMessage(content="You are terse."))
        out.append(("system", "You are terse."))
    for role, t in turns:
        h.add_message(HumanMessage(content=t) if role == "user" else AIMessage(content=t))
        out.append((role, t))
    return out


def langchain_read(a):
    from langchain_community.chat_message_histories import RedisChatMessageHistory

    h = RedisChatMessageHistory(a.id, url=a.url)
    return [(LC_ROLES.get(m.type, m.type), m.content) for m in h.messages]


# --- langchain-redis --------------------------------------------------------------------------

def langchain_redis_write(a, sid, turns):
    from langchain_core.messages import AIMessage, HumanMessage
    from langchain_redis import RedisChatMessageHistory

    h = RedisChatMessageHistory(sid, redis_url=a.url, ttl=a.ttl)
    for role, t in turns:
        h.add_message(HumanMessage(content=t) if role == "user" else AIMessage(content=t))
    return turns


def langchain_redis_read(a):
    from langchain_redis import RedisChatMessageHistory

    h = RedisChatMessageHistory(a.id, redis_url=a.url)
    return [(LC_ROLES.get(m.type, m.type), m.content) for m in h.messages]


# --- LlamaIndex RedisChatStore ----------------------------------------------------------------

def llamaindex_write(a, sid, turns):
    from llama_index.core.llms import ChatMessage, MessageRole
    from llama_index.storage.chat_store.redis import RedisChatStore

    store = RedisChatStore(redis_url=a.url, ttl=a.ttl)
    for role, t in turns:
        r = MessageRole.USER if role == "user" else MessageRole.ASSISTANT
        store.add_message(sid, ChatMessage(role=r, content=t))
    return turns


def llamaindex_read(a):
    from llama_index.storage.chat_store.redis import RedisChatStore

    store = RedisChatStore(redis_url=a.url)
    return [(m.role.value, m.content) for m in store.get_messages(a.id)]


# --- RedisVL MessageHistory -------------------------------------------------------------------

def redisvl_write(a, sid, turns):
    from redisvl.extensions.message_history import MessageHistory

    h = MessageHistory(REDISVL_NAME, session_tag=sid, redis_url=a.url)
    for role, t in turns:
        h.add_message({"role": role, "content": t})
    return turns


def redisvl_read(a):
    from redisvl.extensions.message_history import MessageHistory

    h = MessageHistory(REDISVL_NAME, session_tag=a.id, redis_url=a.url)
    got = h.get_recent(top_k=10000, raw=False)
    return [({"llm": "assistant"}.get(m["role"], m["role"]), m["content"]) for m in got]


# --- OpenAI Agents SDK RedisSession -----------------------------------------------------------

def openai_agents_write(a, sid, turns):
    from agents.extensions.memory import RedisSession

    items, out = [], []
    for j, (role, t) in enumerate(turns):
        if role == "user":
            items.append({"role": "user", "content": t})
        else:
            items.append({"id": f"msg_{sid}_{j}", "content": [{"type": "output_text", "text": t, "annotations": []}],
                          "role": "assistant", "status": "completed", "type": "message"})
        out.append((role, t))
    if sid.endswith("0"):
        # A tool round trip: items without a role, still stored (as their type says).
        items.append({"type": "function_call", "id": f"fc_{sid}", "call_id": f"call_{sid}",
                      "name": "lookup", "arguments": "{\"q\": 1}"})
        items.append({"type": "function_call_output", "call_id": f"call_{sid}", "output": "42"})
        out += [("assistant", ""), ("tool", "42")]

    async def go():
        s = RedisSession.from_url(sid, url=a.url, session_settings=None, ttl=a.ttl)
        await s.add_items(items)
        await s.close()

    asyncio.run(go())
    return out


def openai_agents_read(a):
    from agents.extensions.memory import RedisSession

    async def go():
        s = RedisSession.from_url(a.id, url=a.url)
        items = await s.get_items()
        await s.close()
        return items

    out = []
    for it in asyncio.run(go()):
        role = it.get("role") or {"function_call": "assistant", "function_call_output": "tool"}[it["type"]]
        c = it.get("content", it.get("output", ""))
        if isinstance(c, list):
            c = "".join(p.get("text", "") for p in c)
        out.append((role, c))
    return out


# --- Microsoft Agent Framework RedisHistoryProvider -------------------------------------------

def agent_framework_provider(a):
    from agent_framework_redis import RedisHistoryProvider

    if a.lib == "agent-framework-legacy":
        # The key form earlier releases wrote, chat_messages:{session} (deprecated, still there).
        return RedisHistoryProvider(redis_url=a.url, key_format="legacy")
    return RedisHistoryProvider(redis_url=a.url, application_id=AF_APPLICATION)


def agent_framework_write(a, sid, turns):
    from agent_framework import Message

    async def go():
        p = agent_framework_provider(a)
        await p.save_messages(sid, [Message(role=r, contents=[t]) for r, t in turns])
        await p.aclose()

    asyncio.run(go())
    return turns


def agent_framework_read(a):
    async def go():
        p = agent_framework_provider(a)
        got = await p.get_messages(a.id)
        await p.aclose()
        return got

    return [(str(getattr(m.role, "value", m.role)), m.text) for m in asyncio.run(go())]


# --- Redis Agent Memory Server working memory -------------------------------------------------
# agent-memory-server 0.14.0 declares Python >= 3.12; its code runs on 3.11, installed with
# PIP_IGNORE_REQUIRES_PYTHON (tests/layouts/setup.sh).

AMS_NAMESPACE = "sweeper"
AMS_USER = "u1"


def agent_memory_server_write(a, sid, turns):
    import redis.asyncio as aredis
    from agent_memory_server.models import MemoryMessage, WorkingMemory
    from agent_memory_server.working_memory import set_working_memory

    async def go():
        r = aredis.from_url(a.url)
        wm = WorkingMemory(session_id=sid, namespace=AMS_NAMESPACE, user_id=AMS_USER,
                           messages=[MemoryMessage(role=role, content=t) for role, t in turns],
                           ttl_seconds=a.ttl)
        await set_working_memory(wm, redis_client=r)
        await r.aclose()

    asyncio.run(go())
    return turns


def agent_memory_server_read(a):
    import redis.asyncio as aredis
    from agent_memory_server.working_memory import get_working_memory

    async def go():
        r = aredis.from_url(a.url)
        wm = await get_working_memory(session_id=a.id, namespace=AMS_NAMESPACE, user_id=AMS_USER,
                                      redis_client=r)
        await r.aclose()
        return wm

    wm = asyncio.run(go())
    return [(m.role, m.content) for m in (wm.messages if wm else [])]


# --- Rasa RedisTrackerStore -------------------------------------------------------------------
# rasa 3.6.21 declares Python < 3.11 and pulls TensorFlow; its tracker store runs on 3.11 without
# it, installed from a frozen set (tests/layouts/requirements-rasa.txt).

def rasa_store(a):
    from urllib.parse import urlparse

    from rasa.core.tracker_store import RedisTrackerStore
    from rasa.shared.core.domain import Domain

    u = urlparse(a.url)
    return RedisTrackerStore(Domain.empty(), host=u.hostname, port=u.port, record_exp=a.ttl)


def rasa_write(a, sid, turns):
    from rasa.shared.core.events import ActionExecuted, BotUttered, UserUttered
    from rasa.shared.core.trackers import DialogueStateTracker

    store = rasa_store(a)
    tracker = DialogueStateTracker(sid, slots=[])
    for role, t in turns:
        if role == "user":
            tracker.update(ActionExecuted("action_listen"))
            tracker.update(UserUttered(t))
        else:
            tracker.update(BotUttered(t))
    asyncio.run(store.save(tracker))
    return turns


def rasa_read(a):
    tracker = asyncio.run(rasa_store(a).retrieve_full_tracker(a.id))
    out = []
    for e in tracker.events if tracker else []:
        kind = type(e).__name__
        if kind in ("UserUttered", "BotUttered"):
            out.append(("user" if kind == "UserUttered" else "assistant", e.text))
    return out


LIBS = {
    "langchain": (langchain_write, langchain_read),
    "langchain-redis": (langchain_redis_write, langchain_redis_read),
    "llamaindex": (llamaindex_write, llamaindex_read),
    "redisvl": (redisvl_write, redisvl_read),
    "openai-agents": (openai_agents_write, openai_agents_read),
    "agent-framework": (agent_framework_write, agent_framework_read),
    "agent-framework-legacy": (agent_framework_write, agent_framework_read),
    "agent-memory-server": (agent_memory_server_write, agent_memory_server_read),
    "rasa": (rasa_write, rasa_read),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("lib", choices=sorted(LIBS))
    p.add_argument("action", choices=["write", "read"])
    p.add_argument("--url", required=True)
    p.add_argument("--prefix", default="s")
    p.add_argument("--conversations", type=int, default=3)
    p.add_argument("--messages", type=int, default=4)
    p.add_argument("--ttl", type=int, default=None)
    p.add_argument("--id")
    a = p.parse_args()
    write, read = LIBS[a.lib]
    if a.action == "write":
        sessions = {}
        for i in range(a.conversations):
            sid = f"{a.prefix}{i}"
            sessions[sid] = [{"role": r, "content": c} for r, c in write(a, sid, plan(sid, a.messages))]
        json.dump({"sessions": sessions}, sys.stdout, ensure_ascii=False)
    else:
        json.dump([{"role": r, "content": c} for r, c in read(a)], sys.stdout, ensure_ascii=False)
    print()


if __name__ == "__main__":
    main()
