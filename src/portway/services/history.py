"""Chat history: sessions owned by a principal, and the turns that chat completions append to them.

Plain methods, for the API (`api/sessions.py`) and the compat helpers (seed 001's /api/chat-history maps
userId → owner, sessionId → session_id, message{content,isUser,timestamp} → append(role, content, ts)):

- ``create(owner, session_id=None, title=None, metadata=None) -> (SessionRow, created)``: a new session
  (a generated ``sess_…`` id when none is given); the owner's own existing id is returned as it is
  (created False); another owner's id is ``NotFound``; past ``history.max_sessions_per_owner`` it is
  ``SessionLimitReached``.
- ``list_sessions(owner, limit=50, offset=0) -> (sessions, has_more)``: most recently updated first.
- ``get(owner, session_id, limit=100, offset=0, after=None, before=None) -> (SessionRow, messages,
  has_more)``: one page of messages, oldest first (see `SessionStore.messages`); ``NotFound`` if not the
  owner's.
- ``append(owner, session_id, role, content, ts=None)``: one message, written before it returns; an
  unknown session is created for the owner.
- ``delete(owner, session_id)``: the session and its messages; ``NotFound`` if not the owner's.

Owner is a principal id ("master", "key:<id>", "user:<id>"). Session ids are 1-64 characters of
``A-Za-z0-9_.:-``, starting with a letter or digit; anything else is a 400.

The chat path (`around`): a completion that names a session is checked (another owner's: 404; an unknown
one is created by its first turn) and, when prepending, given the stored messages. Its turn — the request's
new messages and the answer — is queued and written by one background task per worker, never awaited
before the answer goes out; queued turns are written before shutdown (`aclose`). A turn is appended only
when the answer was delivered in full: a failed request, a broken stream or a client that left mid-stream
appends nothing, so a retry does not store the question twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from portway.config import HistoryConfig
from portway.errors import NotFound, SessionLimitReached, ValidationError
from portway.protocols.chat_chunks import assemble
from portway.services.chat import ChatReply, RequestContext
from portway.services.common import shielded
from portway.stores.sql.sessions import MessageRow, SessionRow, SessionStore
from portway.tasks import stop

log = logging.getLogger("portway.history")

SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_SYSTEM_ROLES = frozenset({"system", "developer"})
_KNOWN_CAP = (
    10_000  # (owner, session) pairs remembered per worker as checked: no read per turn after the first
)
_TITLE_CHARS = 80
_WRITE_TRIES = 3
_DRAIN_SECONDS = 30.0

ChatCall = Callable[[dict[str, Any], RequestContext, dict[str, Any] | None], Awaitable[ChatReply]]


def check_id(session_id: str) -> str:
    if not SESSION_ID.fullmatch(session_id):
        raise ValidationError(
            "session id: 1-64 characters of A-Z a-z 0-9 _ . : - starting with a letter or digit",
            param="session_id",
        )
    return session_id


def named_session(
    body: dict[str, Any], header: bytes | str | None, history: bytes | str | None
) -> tuple[str | None, bool | None]:
    """The session a chat request names (`x-portway-session`, else `metadata.session_id`) and its
    `x-portway-history` choice (True: prepend, False: off, None: the configured default)."""
    session: Any = header
    if session is None:
        meta = body.get("metadata")
        session = meta.get("session_id") if isinstance(meta, dict) else None
        if session is None:
            return None, None
        if not isinstance(session, str):
            raise ValidationError("'metadata.session_id' must be a string", param="metadata.session_id")
    if isinstance(session, bytes):
        session = session.decode("latin-1")
    if isinstance(history, bytes):
        history = history.decode("latin-1")
    if history is None:
        return session, None
    choice = history.strip().lower()
    if choice not in ("prepend", "off"):
        raise ValidationError("x-portway-history: prepend or off", param="x-portway-history")
    return session, choice == "prepend"


@dataclass(slots=True)
class _Turn:
    owner: str
    session_id: str
    messages: list[dict[str, Any]]
    ts: float
    title: str | None
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class HistoryService:
    def __init__(self, store: SessionStore, cfg: HistoryConfig) -> None:
        self.store = store
        self.cfg = cfg
        self._known: dict[tuple[str, str], None] = {}  # checked as the owner's (or claimed by its turn)
        # session id -> (its owner, its newest queued turn)
        self._pending: dict[str, tuple[str, asyncio.Future[None]]] = {}
        self._queue: asyncio.Queue[_Turn] = asyncio.Queue(cfg.write_queue)
        self._writer: asyncio.Task[None] | None = None
        self.dropped = 0

    # -- lifecycle

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_turns(), name="portway-history-writer")

    async def aclose(self) -> None:
        """Write what is queued (bounded), then stop the writer."""
        if self._writer is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), _DRAIN_SECONDS)
        except TimeoutError:
            log.error("%d chat history turns not written at shutdown", self._queue.qsize())
        await stop(self._writer)
        self._writer = None

    # -- the plain methods

    async def create(
        self,
        owner: str,
        session_id: str | None = None,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> tuple[SessionRow, bool]:
        if session_id is not None:
            check_id(session_id)
            await self._settled(session_id)
            found = await self._existing(owner, session_id)
            if found is not None:
                return found, False
        await self._check_cap(owner)
        now = time.time()
        sid = session_id or "sess_" + secrets.token_hex(12)
        row = SessionRow(sid, owner, title, metadata, now, now, 0)
        if not await self.store.create(row):  # taken meanwhile
            found = await self._existing(owner, sid)
            if found is None:
                raise _not_found(sid)
            return found, False
        self._remember(owner, sid)
        return row, True

    async def list_sessions(
        self, owner: str, limit: int = 50, offset: int = 0
    ) -> tuple[list[SessionRow], bool]:
        return await self.store.page(owner, limit, offset)

    async def get(
        self,
        owner: str,
        session_id: str,
        limit: int = 100,
        offset: int = 0,
        *,
        after: int | None = None,
        before: int | None = None,
    ) -> tuple[SessionRow, list[MessageRow], bool]:
        check_id(session_id)
        await self._settled(session_id)
        row = await self.store.get(owner, session_id)
        if row is None:
            raise _not_found(session_id)
        page, more = await self.store.messages(session_id, limit, after=after, before=before, offset=offset)
        return row, page, more

    async def append(
        self, owner: str, session_id: str, role: str, content: Any, ts: float | None = None
    ) -> None:
        check_id(session_id)
        message = {"role": role, "content": content}
        self._check_sizes([message])
        await self._claim(owner, session_id, None)
        await self._settled(session_id)
        if not await self.store.append(owner, session_id, [message], ts or time.time()):
            raise _not_found(session_id)

    async def delete(self, owner: str, session_id: str) -> None:
        check_id(session_id)
        await self._settled(session_id)
        self._known.pop((owner, session_id), None)
        if not await self.store.delete(owner, session_id):
            raise _not_found(session_id)

    # -- the chat path

    async def around(
        self,
        payload: dict[str, Any],
        ctx: RequestContext,
        messages: dict[str, Any] | None,
        chat: ChatCall,
    ) -> ChatReply:
        """Serve a completion that names a session (`ctx.session`) with `chat`, and queue its turn."""
        sid, owner = check_id(ctx.session or ""), ctx.principal.id
        ctx.session = None  # taken over here: `chat` serves the request as any other
        meta = payload.get("metadata")
        if isinstance(meta, dict) and "session_id" in meta:
            # portway's own field: an upstream may refuse metadata (OpenAI: only with `store`).
            meta = {k: v for k, v in meta.items() if k != "session_id"}
            if meta:
                payload["metadata"] = meta
            else:
                del payload["metadata"]
        sent: list[dict[str, Any]] = payload["messages"]
        new = new_messages(sent)
        self._check_sizes(new)
        known = await self._claim(owner, sid, _title(new))
        prepend = self.cfg.prepend if ctx.prepend is None else ctx.prepend
        if prepend and known and messages is None and not any(m.get("role") == "assistant" for m in sent):
            await self._settled(sid)
            stored = await self.store.last_messages(sid, self.cfg.prepend_max_messages)
            if stored:
                payload["messages"] = with_history([r.message for r in stored], sent)
                ctx.body_bytes = len(orjson.dumps(payload))  # the prompt estimate counts the history
        title = None  # a new session was created by the claim, with its title
        try:
            reply = await chat(payload, ctx, messages)
        except BaseException:
            if not known:  # no answer: the session this request created goes again
                self._known.pop((owner, sid), None)
                with contextlib.suppress(Exception):  # the request's own error is the one to report
                    await shielded(self.store.delete(owner, sid))
            raise
        if reply.stream is not None:
            reply.stream = self._recorded(reply.stream, owner, sid, new, title)
        elif reply.body is not None:
            answer = answer_from_body(reply.body)
            if answer is not None:
                self._enqueue(owner, sid, [*new, answer], title)
        return reply

    async def _recorded(
        self,
        events: AsyncGenerator[bytes, None],
        owner: str,
        sid: str,
        new: list[dict[str, Any]],
        title: str | None,
    ) -> AsyncGenerator[bytes, None]:
        """The stream as relayed; at its end the answer is assembled from its events, and queued only if
        the stream was a whole answer (no error event, a finish_reason)."""
        relayed: list[bytes] = []
        try:
            async for event in events:
                relayed.append(event)
                yield event
            completion = assemble(relayed)
            answer = None if completion is None else _answer(completion)
            if answer is not None:
                self._enqueue(owner, sid, [*new, answer], title)
        finally:
            await events.aclose()  # the chat relay records usage and settles limits in its clean-up

    # -- internals

    async def _existing(self, owner: str, session_id: str) -> SessionRow | None:
        """The owner's session; None when there is none; NotFound when it is another owner's."""
        row = await self.store.get(owner, session_id)
        if row is None and await self.store.owner_of(session_id) is not None:
            raise _not_found(session_id)
        if row is not None:
            self._remember(owner, session_id)
        return row

    async def _claim(self, owner: str, session_id: str, title: str | None) -> bool:
        """True when the session is the owner's already; False when it is new (created now, before the
        upstream call, so that another caller naming the same id a moment later gets 404 and the cap counts
        it at once); NotFound when it is another owner's."""
        if (owner, session_id) in self._known:
            return True
        found = await self.store.owner_of(session_id)
        if found is None:
            await self._check_cap(owner)
            now = time.time()
            if await self.store.create(SessionRow(session_id, owner, title, None, now, now, 0)):
                self._remember(owner, session_id)
                return False
            found = await self.store.owner_of(session_id)  # taken meanwhile
        if found != owner:
            raise _not_found(session_id)
        self._remember(owner, session_id)
        return True

    async def _check_cap(self, owner: str) -> None:
        """Counted after this worker's queued turns of the owner are written (a turn may create its session),
        so one worker never lets an owner past the cap."""
        cap = self.cfg.max_sessions_per_owner
        queued = [done for who, done in self._pending.values() if who == owner]
        if queued:
            await asyncio.wait([asyncio.shield(done) for done in queued], timeout=_DRAIN_SECONDS)
        if await self.store.count(owner) >= cap:
            raise SessionLimitReached(
                f"At most {cap} chat sessions per caller; delete some (DELETE /v1/sessions/{{id}})",
                param="session_id",
            )

    def _remember(self, owner: str, session_id: str) -> None:
        if len(self._known) >= _KNOWN_CAP:
            self._known.clear()  # rarely: the next turn of each re-checks once
        self._known[(owner, session_id)] = None

    def _check_sizes(self, messages: list[dict[str, Any]]) -> None:
        cap = self.cfg.max_message_bytes
        for message in messages:
            if len(orjson.dumps(message)) > cap:
                raise ValidationError(
                    f"A message of a chat session may be at most {cap} bytes (history.max_message_bytes)",
                    param="messages",
                )

    def _enqueue(self, owner: str, sid: str, messages: list[dict[str, Any]], title: str | None) -> None:
        messages = [m for m in (_fit(m, self.cfg.max_message_bytes) for m in messages) if m is not None]
        turn = _Turn(owner, sid, messages, time.time(), title)
        try:
            self._queue.put_nowait(turn)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("chat history queue full: a turn of session %s was not stored", sid)
            return
        self._pending[sid] = (owner, turn.done)
        turn.done.add_done_callback(lambda fut: self._forget(sid, fut))

    def _forget(self, sid: str, done: asyncio.Future[None]) -> None:
        entry = self._pending.get(sid)
        if entry is not None and entry[1] is done:
            del self._pending[sid]

    async def _settled(self, session_id: str) -> None:
        """Wait for this worker's queued turns of the session (a read after a turn sees it)."""
        entry = self._pending.get(session_id)
        if entry is not None:
            await asyncio.shield(entry[1])

    async def _write_turns(self) -> None:
        while True:
            turn = await self._queue.get()
            try:
                await self._write(turn)
            finally:
                if not turn.done.done():
                    turn.done.set_result(None)
                self._queue.task_done()

    async def _write(self, turn: _Turn) -> None:
        for attempt in range(_WRITE_TRIES):
            try:
                if not await self.store.append(
                    turn.owner, turn.session_id, turn.messages, turn.ts, turn.title
                ):
                    self._known.pop((turn.owner, turn.session_id), None)
                    log.warning("session %s is another caller's: a turn was not stored", turn.session_id)
                return
            except Exception:
                if attempt == _WRITE_TRIES - 1:
                    log.exception("could not store a turn of session %s", turn.session_id)
                    return
                await asyncio.sleep(0.2 * 2**attempt)  # a database blip: try again shortly


def _not_found(session_id: str) -> NotFound:
    return NotFound(f"Session '{session_id[:64]}' not found.", param="session_id")


def new_messages(sent: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a turn adds to the history: the request's messages after its last assistant message (all of
    them when it has none), without system and developer messages (instructions, not turns)."""
    last = -1
    for i, message in enumerate(sent):
        if message.get("role") == "assistant":
            last = i
    return [m for m in sent[last + 1 :] if m.get("role") not in _SYSTEM_ROLES]


def with_history(stored: list[dict[str, Any]], sent: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's leading system/developer messages, then the stored messages, then the rest of the
    request. The stored part starts at a user message (a cut history never opens with a tool result)."""
    start = next((i for i, m in enumerate(stored) if m.get("role") == "user"), len(stored))
    lead = 0
    while lead < len(sent) and sent[lead].get("role") in _SYSTEM_ROLES:
        lead += 1
    return [*sent[:lead], *stored[start:], *sent[lead:]]


def answer_from_body(body: bytes) -> dict[str, Any] | None:
    """The assistant message of a chat.completion body; None if it has none."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return _answer(parsed)


def _answer(completion: Any) -> dict[str, Any] | None:
    """The first choice's message as it is stored (and prepended later): role, content, tool_calls only,
    so that no provider-specific field (reasoning text) is sent back upstream."""
    try:
        message = completion["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(message, dict):
        return None
    answer: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        answer["tool_calls"] = message["tool_calls"]
    return answer


def _title(new: list[dict[str, Any]]) -> str | None:
    """A new session's title: the start of its first user message's text."""
    for message in new:
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return " ".join(message["content"].split())[:_TITLE_CHARS] or None
    return None


def _fit(message: dict[str, Any], cap: int) -> dict[str, Any] | None:
    """A message within the size cap: an answer's text is cut to fit; one that still does not is dropped."""
    if len(orjson.dumps(message)) <= cap:
        return message
    content = message.get("content")
    if isinstance(content, str):
        cut = content.encode()[: max(cap - 1024, 0)].decode(errors="ignore")
        message = {**message, "content": cut}
        if len(orjson.dumps(message)) <= cap:
            return message
    log.warning("a chat history message over history.max_message_bytes was not stored")
    return None
