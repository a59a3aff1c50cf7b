"""The real-client side of tests/langgraph.rs.

    proof.py write REDIS_URL STATE.json   # a chatbot graph on RedisSaver (TTL 30 min), 4 threads
    proof.py check PG_URL STATE.json      # PostgresSaver on what `sweeper run --format langgraph` wrote
    proof.py setup PG_URL                 # PostgresSaver.setup(), for the schema comparison

What RedisSaver 0.5.2 wrote for one thread of this graph (two turns), seen with JSON.GET:
  checkpoint:{thread}:__empty__:{id}   x6, RedisJSON; `checkpoint.channel_values` inline, messages in
                                       LangChain's {"lc":1,"type":"constructor",...} form;
                                       `metadata` a JSON string; parent "" for the first
  checkpoint_write:{thread}:__empty__:{id}:{task}:{idx}   x8, type "json"/"null", blob base64
  checkpoint_latest:{thread}:__empty__ a string naming the newest checkpoint's key
  write_keys_zset:{thread}:__empty__:{id}                 one per checkpoint with writes
each with a TTL of default_ttl minutes, the newest checkpoint's the longest.
"""

import json
import sys
from typing import Annotated, TypedDict

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

THREADS = ["t-1", "t-2", "user:42/chat", "t-4"]


class State(TypedDict):
    messages: Annotated[list, add_messages]
    turns: int


def bot(state: State):
    """Answers each message deterministically (no LLM)."""
    last = state["messages"][-1]
    n = state.get("turns", 0) + 1
    return {
        "messages": [AIMessage(content=f"turn {n}: you said {last.content!r}", id=f"ai-{n}")],
        "turns": n,
    }


def graph(saver):
    g = StateGraph(State)
    g.add_node("bot", bot)
    g.add_edge(START, "bot")
    g.add_edge("bot", END)
    return g.compile(checkpointer=saver)


def cfg(thread):
    return {"configurable": {"thread_id": thread}}


def snapshot(app, saver, thread):
    st = app.get_state(cfg(thread))
    return {
        "checkpoint_id": st.config["configurable"]["checkpoint_id"],
        "messages": [[type(m).__name__, m.content, m.id] for m in st.values["messages"]],
        "turns": st.values.get("turns"),
        "history": [t.config["configurable"]["checkpoint_id"] for t in saver.list(cfg(thread))],
        "parents": [
            (t.parent_config or {}).get("configurable", {}).get("checkpoint_id")
            for t in saver.list(cfg(thread))
        ],
        "metadata": [t.metadata for t in saver.list(cfg(thread))],
        "writes": [len(t.pending_writes or []) for t in saver.list(cfg(thread))],
    }


def write(url, out):
    from langgraph.checkpoint.redis import RedisSaver

    with RedisSaver.from_conn_string(url, ttl={"default_ttl": 30, "refresh_on_read": True}) as saver:
        saver.setup()
        app = graph(saver)
        state = {}
        for i, thread in enumerate(THREADS):
            for turn in range(1 + i % 3):
                app.invoke({"messages": [HumanMessage(content=f"hello {turn} from {thread}", id=f"h-{turn}")]}, cfg(thread))
            state[thread] = snapshot(app, saver, thread)
    json.dump(state, open(out, "w"), indent=1)


def check(url, expected_file):
    from langgraph.checkpoint.postgres import PostgresSaver

    expected = json.load(open(expected_file))
    failures = []
    with PostgresSaver.from_conn_string(url) as saver:
        app = graph(saver)
        for thread, want in expected.items():
            got = snapshot(app, saver, thread)
            for k in want:
                if got[k] != want[k]:
                    failures.append(f"{thread}: {k}: PostgresSaver gives {got[k]!r}, RedisSaver gave {want[k]!r}")
            # The conversation goes on from where Redis left it.
            app.invoke({"messages": [HumanMessage(content="and now?", id="h-next")]}, cfg(thread))
            after = app.get_state(cfg(thread))
            contents = [m.content for m in after.values["messages"]]
            turns = (want["turns"] or 0) + 1
            if contents[: len(want["messages"])] != [m[1] for m in want["messages"]] or contents[-1] != f"turn {turns}: you said 'and now?'":
                failures.append(f"{thread}: continuing gave {contents!r}")
            if after.config["configurable"]["checkpoint_id"] == want["checkpoint_id"]:
                failures.append(f"{thread}: continuing saved no new checkpoint")
    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print(f"ok: {len(expected)} threads: same messages, checkpoint ids, history; continued on PostgresSaver")


def setup(url):
    from langgraph.checkpoint.postgres import PostgresSaver

    with PostgresSaver.from_conn_string(url) as saver:
        saver.setup()


if __name__ == "__main__":
    {"write": write, "check": check, "setup": setup}[sys.argv[1]](*sys.argv[2:])
