"""Reading what a SuperNode sent back, without ever raising: a malformed reply costs that node's clients only.

A train reply holds `client.<id>.{arrays,dtypes,metrics}` per trained client and a `status` record listing the
failed clients with their reasons. Anything else (an error reply, no content, a missing or ill-typed `status`,
`failed`/`reasons` of different lengths, missing `client.<id>.*` records, undecodable arrays, unknown dtype
names) makes the affected clients failures with a reason. The values of a well-formed update (NaN, a lying
`num_examples`, wrong shapes) are judged later, by the round loop's per-update validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message
from flwr.common.constant import ErrorCode

from fedit.engines.flower.records import MalformedRecord, get_update, read_status
from fedit.types import ClientUpdate

# error replies the SuperLink makes itself: the node never answered (expired message, node gone)
UNAVAILABLE = {ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE, ErrorCode.NODE_UNAVAILABLE}
MAX_REASON = 600  # characters of a node's error text kept in the metrics (a traceback is cut to its end)


@dataclass
class NodeAnswer:
    """One node's reply, read: updates by client, failures by client, and whether the node itself answered
    (a failure the node reported can be retried; one the SuperLink reported for an absent node cannot)."""

    updates: dict[int, ClientUpdate] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)
    answered: bool = True


def short(text: object, limit: int = MAX_REASON) -> str:
    """`text` on one line, at most `limit` characters (the end is kept: that is where a traceback says why)."""
    line = " | ".join(s.strip() for s in str(text).strip().splitlines() if s.strip())
    return line if len(line) <= limit else "..." + line[-(limit - 3):]


def read_reply(reply: Message, node: int, clients: list[int]) -> NodeAnswer:
    """What `reply` (from `node`, to a message for `clients`) says about each of those clients; never raises."""
    try:
        return _read(reply, node, clients)
    except Exception as e:  # noqa: BLE001 - whatever a node sends must cost at most that node's clients
        return _all_failed(clients, f"node {node} sent a malformed reply ({type(e).__name__}: {short(e)})")


def _all_failed(clients: list[int], reason: str, answered: bool = True) -> NodeAnswer:
    return NodeAnswer(failures={c: reason for c in clients}, answered=answered)


def _read(reply: Message, node: int, clients: list[int]) -> NodeAnswer:
    if reply.has_error():
        err = reply.error
        if err.code in UNAVAILABLE:
            return _all_failed(clients, f"node {node} is unavailable: {short(err.reason)}", answered=False)
        return _all_failed(clients, f"node {node} failed: {short(err.reason)}")
    if not reply.has_content():
        return _all_failed(clients, f"node {node} sent a reply with neither content nor error")
    try:
        failed = read_status(reply.content)
    except ValueError as e:
        return _all_failed(clients, f"node {node} sent a malformed status ({short(e)})")
    answer = NodeAnswer()
    for c in clients:
        if c in failed:
            answer.failures[c] = f"node {node}: {short(failed[c])}"
            continue
        try:
            answer.updates[c] = get_update(reply.content, c)
        except Exception as e:  # noqa: BLE001 - missing records, undecodable arrays, unknown dtypes
            why = short(e) if isinstance(e, MalformedRecord) else f"{type(e).__name__}: {short(e)}"
            answer.failures[c] = f"node {node} sent a malformed update for client {c} ({why})"
    return answer


def hosted_clients(reply: Message, node: int) -> list[int]:
    """The client ids a node's answer to a discovery query names; ValueError saying why if it names none."""
    if reply.has_error():
        raise ValueError(f"SuperNode {node} cannot serve fedit clients: {short(reply.error.reason)}")
    rec = reply.content.get("node") if reply.has_content() else None
    clients = rec.get("clients") if isinstance(rec, ConfigRecord) else None
    if not isinstance(clients, list) or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                                for c in clients):
        raise ValueError(f"SuperNode {node} sent a malformed client list: {short(repr(clients), 200)}")
    return sorted(set(clients))
