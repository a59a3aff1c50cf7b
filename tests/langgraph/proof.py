"""The real-client side of tests/langgraph.rs.

    proof.py write REDIS_URL STATE.json   # graphs on RedisSaver (TTL 30 min): a chatbot over 4
                                          # threads, a fan-out (Send) stopped half done, the same
                                          # as a v3 checkpoint, a subgraph stopped half done,
                                          # a thread holding a NUL PostgreSQL refuses
    proof.py check PG_URL STATE.json      # PostgresSaver on what `sweeper run --format langgraph` wrote
    proof.py setup PG_URL                 # PostgresSaver.setup(), for the schema comparison
    proof.py late REDIS_URL THREAD        # one more turn on a thread, by an app that still holds
                                          # it after an erasure (langgraph #7206's late put)

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
import operator
import sys
from typing import Annotated, TypedDict

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Send

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


# --- a fan-out: `plan` sends one `work` task per item; `work` fails on "b" until FAIL is cleared,
# so the thread stops with the sends pending and two of three results written.
FAIL = {"on": True}
CALLS = []


class Fan(TypedDict):
    items: list
    done: Annotated[list, operator.add]


def work(x):
    CALLS.append(x["item"])
    if FAIL["on"] and x["item"] == "b":
        raise RuntimeError("work failed on b")
    return {"done": [x["item"].upper()]}


def fanout(saver):
    g = StateGraph(Fan)
    g.add_node("plan", lambda s: {})
    g.add_node("work", work)
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", lambda s: [Send("work", {"item": i}) for i in s["items"]], ["work"])
    g.add_edge("work", END)
    return g.compile(checkpointer=saver)


# --- a subgraph: the root's `inner` node is a graph of its own, checkpointed under the namespace
# `inner:<task id>`; its second step fails until FAIL is cleared.
class Inner(TypedDict):
    log: Annotated[list, operator.add]


def step2(s):
    CALLS.append("step2")
    if FAIL["on"]:
        raise RuntimeError("step2 failed")
    return {"log": ["step2"]}


def nested(saver):
    sub = StateGraph(Inner)
    sub.add_node("step1", lambda s: {"log": ["step1"]})
    sub.add_node("step2", step2)
    sub.add_edge(START, "step1")
    sub.add_edge("step1", "step2")
    sub.add_edge("step2", END)
    g = StateGraph(Inner)
    g.add_node("inner", sub.compile())
    g.add_edge(START, "inner")
    g.add_edge("inner", END)
    return g.compile(checkpointer=saver)


# --- a thread PostgreSQL refuses: a string channel value (kept inline, in the `checkpoint` JSONB)
# holding a NUL, which RedisJSON stores and JSONB does not.
class Note(TypedDict):
    note: str


def noted(saver):
    g = StateGraph(Note)
    g.add_node("keep", lambda s: {"note": s["note"] + "!"})
    g.add_edge(START, "keep")
    g.add_edge("keep", END)
    return g.compile(checkpointer=saver)


REFUSED = "t-nul"


def canon(v):
    """Values as comparable JSON: messages by (type, content, id), anything else by repr (a Send
    read back as a dict would show)."""

    def default(o):
        if hasattr(o, "content"):
            return [type(o).__name__, o.content, o.id]
        return repr(o)

    return json.loads(json.dumps(v, default=default, sort_keys=True))


def state_of(app, saver, config):
    """What a saver gives for one thread and namespace, as the graph sees it."""
    st = app.get_state(config, subgraphs=True)
    # RedisSaver's list() for the root namespace ("") gives every namespace's checkpoints;
    # PostgresSaver's only the root's: the namespace's own are compared.
    ns = config["configurable"].get("checkpoint_ns", "")
    history = [t for t in saver.list(config) if t.config["configurable"].get("checkpoint_ns", "") == ns]
    return canon({
        "checkpoint_id": st.config["configurable"]["checkpoint_id"],
        "values": st.values,
        "next": list(st.next),
        "tasks": [
            [t.id, t.name, t.result, t.state.values if t.state is not None and hasattr(t.state, "values") else None]
            for t in st.tasks
        ],
        "history": [t.config["configurable"]["checkpoint_id"] for t in history],
        "parents": [(t.parent_config or {}).get("configurable", {}).get("checkpoint_id") for t in history],
        "metadata": [t.metadata for t in history],
        "writes": [sorted([w[0], w[1], canon(w[2])] for w in t.pending_writes or []) for t in history],
    })


def as_v3(saver, source, thread):
    """Copies thread `source` into `thread` as LangGraph wrote checkpoints before v4: no tasks
    channel in the checkpoint; its sends are the parent's writes to that channel, which both
    savers turn back into the checkpoint's pending sends."""
    for t in reversed(list(saver.list(cfg(source)))):
        cp = dict(t.checkpoint)
        cp["v"] = 3
        cp["channel_values"] = {k: v for k, v in cp["channel_values"].items() if k != "__pregel_tasks"}
        cp["channel_versions"] = {k: v for k, v in cp["channel_versions"].items() if k != "__pregel_tasks"}
        cp.pop("pending_sends", None)
        parent = (t.parent_config or {}).get("configurable", {}).get("checkpoint_id")
        conf = {"configurable": {"thread_id": thread, "checkpoint_ns": "", **({"checkpoint_id": parent} if parent else {})}}
        done = saver.put(conf, cp, t.metadata, cp["channel_versions"])
        by_task = {}
        for task_id, channel, value in t.pending_writes or []:
            by_task.setdefault(task_id, []).append((channel, value))
        for task_id, writes in by_task.items():
            saver.put_writes(done, writes, task_id)


def namespaces(url, thread):
    import redis

    r = redis.Redis.from_url(url)
    ns = {k.decode().split(":", 2)[2] for k in r.scan_iter(f"checkpoint_latest:{thread}:*", count=1000)}
    return sorted("" if n == "__empty__" else n for n in ns)


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

        # The fan-out, stopped with its sends pending; and the same thread as v3 checkpoints.
        fan = fanout(saver)
        try:
            fan.invoke({"items": ["a", "b", "c"], "done": []}, cfg("fan"))
        except RuntimeError:
            pass
        as_v3(saver, "fan", "fan-v3")
        others = {}
        for thread in ["fan", "fan-v3"]:
            others[thread] = {"": state_of(fan, saver, cfg(thread))}
            v = saver.get_tuple(cfg(thread)).checkpoint["v"]
            assert v == (3 if thread == "fan-v3" else 4), (thread, v)
        assert [t[1] for t in others["fan"][""]["tasks"]] == ["work"] * 3, others["fan"]
        # The v3 thread's pending sends, as RedisSaver's list() reads them (from the parent's
        # writes to the tasks channel). Its get_tuple() does not: its write-key registry path looks
        # for the channel's name in key names, which never hold it, so get_state shows no tasks.
        sends = next(saver.list(cfg("fan-v3"))).checkpoint["pending_sends"]
        assert [repr(s) for s in sends] == [repr(Send("work", {"item": i})) for i in "abc"], sends
        others["fan-v3"][""]["sends"] = [repr(s) for s in sends]

        # The subgraph, stopped inside it.
        app = nested(saver)
        try:
            app.invoke({"log": []}, cfg("sub"))
        except RuntimeError:
            pass
        ns = namespaces(url, "sub")
        assert len(ns) == 2 and ns[0] == "" and ns[1].startswith("inner:"), ns
        others["sub"] = {n: state_of(app, saver, {"configurable": {"thread_id": "sub", "checkpoint_ns": n}}) for n in ns}
        assert others["sub"][""]["tasks"][0][3] == {"log": ["step1"]}, others["sub"]

        noted(saver).invoke({"note": "nul\x00here"}, cfg(REFUSED))

        import redis

        r = redis.Redis.from_url(url)
        count = lambda match: sum(1 for _ in r.scan_iter(match, count=1000))
        counts = {
            "latest": count("checkpoint_latest:*"),
            # What PostgreSQL takes: all but the refused thread's.
            "checkpoints": count("checkpoint:*") - count(f"checkpoint:{REFUSED}:*"),
            "refused_keys": count(f"*:{REFUSED}:*"),
        }
    json.dump({"chat": state, "others": others, "counts": counts}, open(out, "w"), indent=1)


def check(url, expected_file):
    from langgraph.checkpoint.postgres import PostgresSaver

    saved = json.load(open(expected_file))
    expected = saved["chat"]
    failures = []
    with PostgresSaver.from_conn_string(url) as saver:
        check_others(saver, saved["others"], failures)
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
    print(f"ok: {len(expected)} chat threads: same messages, checkpoint ids, history; continued on PostgresSaver")
    print("ok: fan-out (v4 and v3) and subgraph threads: same state, tasks, history, writes; finished on PostgresSaver")


def check_others(saver, expected, failures):
    """The fan-out and subgraph threads: the same state in every namespace, then each finishes on
    PostgresSaver running only what had not run (the results written before are used)."""
    fan, sub = fanout(saver), nested(saver)
    # The v3 thread: PostgresSaver turns the parent's writes to the tasks channel into the
    # checkpoint's pending sends (into the tasks channel, as LangGraph migrates them), so the graph
    # sees the tasks the v4 thread has, with the same results.
    v3 = expected["fan-v3"][""]
    got = saver.get_tuple(cfg("fan-v3")).checkpoint["channel_values"].get("__pregel_tasks")
    if [repr(s) for s in got or []] != v3.pop("sends"):
        failures.append(f"fan-v3: PostgresSaver's pending sends are {got!r}")
    v3["tasks"] = expected["fan"][""]["tasks"]
    for thread, by_ns in expected.items():
        app = sub if thread == "sub" else fan
        for ns, want in by_ns.items():
            got = state_of(app, saver, {"configurable": {"thread_id": thread, "checkpoint_ns": ns}})
            if thread.startswith("fan"):
                # RedisSaver's get_tuple() gives the newest checkpoint of a failed fan-out no
                # pending writes (its list() does; `writes` compares those), so its get_state
                # shows the tasks without the results written: the tasks are compared by name
                # (and id, but for the v3 copy's), and the results by the resume below, which
                # must run only the task that failed.
                for k in ["next", "values"]:
                    want.pop(k, None)
                want["tasks"] = [t[1 if thread == "fan-v3" else 0 : 2] for t in want["tasks"]]
                got["tasks"] = [t[1 if thread == "fan-v3" else 0 : 2] for t in got["tasks"]]
                if got["values"]["done"] != ["A", "C"]:
                    failures.append(f"{thread}: PostgresSaver's state lacks the results written: {got['values']!r}")
            for k in want:
                if got[k] != want[k]:
                    failures.append(f"{thread} ns {ns!r}: {k}: PostgresSaver gives {got[k]!r}, RedisSaver gave {want[k]!r}")
    FAIL["on"] = False
    for thread in ["fan", "fan-v3"]:
        CALLS.clear()
        final = fan.invoke(None, cfg(thread))
        if sorted(final["done"]) != ["A", "B", "C"] or CALLS != ["b"]:
            failures.append(f"{thread}: resuming gave {final!r} after running {CALLS!r}, not only b")
    CALLS.clear()
    final = sub.invoke(None, cfg("sub"))
    if final["log"] != ["step1", "step2"] or CALLS != ["step2"]:
        failures.append(f"sub: resuming gave {final!r} after running {CALLS!r}, not only step2")


def late(url, thread):
    from langgraph.checkpoint.redis import RedisSaver

    with RedisSaver.from_conn_string(url, ttl={"default_ttl": 30, "refresh_on_read": True}) as saver:
        saver.setup()
        graph(saver).invoke({"messages": [HumanMessage(content="still there?", id="h-late")]}, cfg(thread))


def setup(url):
    from langgraph.checkpoint.postgres import PostgresSaver

    with PostgresSaver.from_conn_string(url) as saver:
        saver.setup()


if __name__ == "__main__":
    {"write": write, "check": check, "setup": setup, "late": late}[sys.argv[1]](*sys.argv[2:])
