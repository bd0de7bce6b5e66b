"""The serving core: from a validated chat or completion request to engine
requests (a Job), and from the engine's deltas to the replies and streams
that each protocol face renders in its own wire shape."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from ..core.exceptions import (ClientDisconnectedError, InvalidRequestError, ServiceError,
                               UnsupportedFeatureError)
from ..core.inference_engine import (GenerationDelta, GenerationRequest, InferenceEngine,
                                     RequestStream, SamplingParams, Usage)
from ..core.model_manager import ModelLease
from .reasoning import reasoning_parser_for
from .reply import ReplyEvent, ReplyParser, ReplySummary
from .request_trace import RequestTrace
from .schemas import ChatCompletionRequest, CompletionRequest, _SamplingFields
from .tool_calls import Content, ToolSetup, prompt_messages, tool_setup

KEEPALIVE_INTERVAL = 15.0  # seconds of silence before an SSE comment line
DISCONNECT_CHECK_INTERVAL = 0.1  # how often a waiting request checks its client
UNBOUNDED_OUTPUT_ESTIMATE = 256  # tokens reserved for a choice without max_tokens

Settle = Callable[[int], None]  # told once how many tokens a request really used


@dataclass
class Caller:
    """The HTTP side of a request: who sent it (the engines queue fairly per
    client), its trace, whether its client has hung up, and its token
    reservation (the TPM rate limit: reserve(tokens) -> settle)."""

    client: str
    trace: RequestTrace
    gone: Callable[[], bool]
    reserve: Callable[[int], Settle]


@dataclass
class Job:
    """One running request: its lease on the model, its streams (one per
    choice: `n` per prompt, in choice order), its caller and the response ids.
    `close` ends it once: streams, lease, reservation, metrics."""

    lease: ModelLease
    streams: list[RequestStream]
    response_id: str
    model: str
    caller: Caller
    settle: Settle = lambda used: None
    created: int = field(default_factory=lambda: int(time.time()))
    # a chat's reply parser, one per choice: reasoning and tool calls; None: plain text
    new_parser: Optional[Callable[[], ReplyParser]] = None
    reasoning_tokens: int = 0  # counted by the choices' parsers
    prompt_tokens: int = 0  # of every prompt, known before any usage arrives

    @property
    def engine(self) -> InferenceEngine:
        return self.lease.engine

    @property
    def trace(self) -> RequestTrace:
        return self.caller.trace

    def close(self, status: int) -> None:
        for stream in self.streams:
            stream.close()  # a client that went away aborts what is still running
        self.lease.release()
        self.trace.finish(status)
        self.settle(self.trace.prompt_tokens + self.trace.completion_tokens)


def sampling_params(req: _SamplingFields, choice: int = 0) -> SamplingParams:
    # with n > 1 each choice samples on its own, reproducibly: seed, seed + 1, ...
    seed = None if req.seed is None else req.seed + choice
    return SamplingParams(
        temperature=req.temperature, top_p=req.top_p, top_k=max(req.top_k, 0), min_p=req.min_p,
        seed=seed, presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty, repetition_penalty=req.repetition_penalty,
        logit_bias=dict(req.logit_bias or {}))


def _check_capabilities(engine: InferenceEngine, req: Any,
                        json_schema: Optional[dict[str, Any]]) -> None:
    caps = engine.capabilities
    if req.logprobs_wanted is not None and not caps.logprobs:
        raise UnsupportedFeatureError("This model's engine cannot return logprobs.",
                                      param="logprobs")
    if req.prompt_logprobs_wanted is not None and not caps.prompt_logprobs:
        raise UnsupportedFeatureError("This model's engine cannot score a prompt's tokens "
                                      "(prompt logprobs).", param="prompt_logprobs")
    if json_schema is not None and not caps.grammar:
        raise UnsupportedFeatureError("This model's engine cannot constrain its output to a "
                                      "JSON schema.", param="response_format")


def _submit(lease: ModelLease, prompts: list[list[int]], req: Any, response_id: str,
            caller: Caller, tools: Optional[ToolSetup] = None) -> Job:
    job = Job(lease, [], response_id, req.model, caller,
              prompt_tokens=sum(len(t) for t in prompts))
    # a required or named tool call is a JSON reply of a known shape
    json_schema = (tools.call_schema() if tools else None) or req.json_schema
    try:
        _check_capabilities(lease.engine, req, json_schema)
        job.settle = caller.reserve(sum(len(t) for t in prompts) + len(prompts) * req.n * (
            UNBOUNDED_OUTPUT_ESTIMATE if req.max_tokens is None else req.max_tokens))
        for tokens in prompts:
            for choice in range(req.n):
                job.streams.append(lease.engine.submit(GenerationRequest(
                    request_id=f"{response_id}-{len(job.streams)}", prompt_tokens=tokens,
                    max_tokens=req.max_tokens, sampling=sampling_params(req, choice),
                    stop=req.stop_list, ignore_eos=req.ignore_eos,
                    logprobs=req.logprobs_wanted, json_schema=json_schema,
                    prompt_logprobs=req.prompt_logprobs_wanted,
                    client=caller.client)))
    except BaseException as exc:
        job.close(getattr(exc, "status_code", 500))
        raise
    return job


def _prompt_tokens(lease: ModelLease, trace: RequestTrace,
                   make: Callable[[InferenceEngine], list[list[int]]]) -> list[list[int]]:
    try:
        return make(lease.engine)
    except BaseException as exc:  # a bad prompt ends the request before the engine sees it
        lease.release()
        trace.finish(getattr(exc, "status_code", 500))
        raise


def drop_oldest_turn(messages: list[dict[str, Any]]) -> Optional[list[dict[str, Any]]]:
    """The chat without its oldest message after the system ones (and the
    tool results that answered it), or None when only the last one is left."""
    first = next((i for i, m in enumerate(messages) if m["role"] not in ("system", "developer")),
                 len(messages))
    end = first + 1
    while end < len(messages) and messages[end]["role"] == "tool":
        end += 1
    if end >= len(messages):
        return None
    return messages[:first] + messages[end:]


def chat_prompt(engine: InferenceEngine, req: ChatCompletionRequest, truncate: bool = False
                ) -> tuple[Optional[ToolSetup], str, list[int]]:
    """A chat's tools checked, its prompt rendered with the model's template, and its tokens."""
    setup = tool_setup(req.tool_list(), req.tool_choice_value(), req.parallel_tool_calls,
                       req.max_tool_calls)
    if setup and setup.call_schema() and req.json_schema:
        raise InvalidRequestError("response_format cannot be combined with a required or "
                                  "named tool_choice.", param="response_format")
    history = [m.for_template() for m in req.messages]
    while True:
        messages, tools = prompt_messages(history, setup, engine.capabilities.tools)
        prompt = engine.render_chat(messages, tools=tools, template_kwargs=req.template_kwargs())
        ids = engine.tokenize(prompt, add_special=True)
        shorter = drop_oldest_turn(history) if truncate else None
        if shorter is None or len(ids) + (req.max_tokens or 1) <= engine.context_length:
            return setup, prompt, ids  # the engine refuses a prompt that is still too long
        history = shorter


def start_chat(lease: ModelLease, req: ChatCompletionRequest, caller: Caller,
               truncate: bool = False) -> Job:
    """Render, tokenize and submit a chat request; the job owns the lease from
    here. With `truncate`, the oldest turns are dropped until the prompt and
    max_tokens fit the context (the Responses API's truncation: auto)."""
    setup: Optional[ToolSetup] = None
    prompt = ""

    def tokens(engine: InferenceEngine) -> list[list[int]]:
        nonlocal setup, prompt
        setup, prompt, ids = chat_prompt(engine, req, truncate)
        return [ids]

    job = _submit(lease, _prompt_tokens(lease, caller.trace, tokens), req,
                  f"chatcmpl-{uuid.uuid4().hex}", caller, setup)
    mode = lease.settings.reasoning_parser
    if setup is not None or mode != "none":
        job.new_parser = lambda: ReplyParser(reasoning_parser_for(mode, prompt), setup)
    return job


def start_completion(lease: ModelLease, req: CompletionRequest, caller: Caller) -> Job:
    def tokens(engine: InferenceEngine) -> list[list[int]]:
        return [p if isinstance(p, list) else engine.tokenize(p, add_special=True)
                for p in req.prompts()]

    return _submit(lease, _prompt_tokens(lease, caller.trace, tokens), req,
                   f"cmpl-{uuid.uuid4().hex}", caller)


@dataclass
class _Collected:
    text: str = ""
    finish_reason: Optional[str] = None
    usage: Optional[Usage] = None
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    reply: Optional[ReplySummary] = None  # the text read by the job's reply parser
    stop_sequence: Optional[str] = None  # the stop string that ended it, if one did
    answer_logprobs: list[dict[str, Any]] = field(default_factory=list)  # not the reasoning's
    prompt_logprobs: Optional[list[dict[str, Any]]] = None  # when the request asked for them


def _collect(stream: RequestStream, deadline: Optional[float], job: Job) -> _Collected:
    client_gone, trace = job.caller.gone, job.trace
    parser = job.new_parser() if job.new_parser else None
    out = _Collected()
    parts = []
    events: list[ReplyEvent] = []
    checked = time.monotonic()
    for delta in stream.iter_deltas(deadline, idle_interval=DISCONNECT_CHECK_INTERVAL):
        # asked on a clock, not only in silence: tokens may never pause that long
        if time.monotonic() - checked >= DISCONNECT_CHECK_INTERVAL:
            if client_gone():  # leaving the loop closes the stream: the engine aborts it
                raise ClientDisconnectedError("The client closed the connection.")
            checked = time.monotonic()
        if delta is None:
            continue
        if delta.error is not None:
            raise delta.error
        if delta.token_count:
            trace.first_token()
        parts.append(delta.text)
        out.logprobs.extend(delta.logprobs or ())
        if delta.prompt_logprobs is not None:
            out.prompt_logprobs = delta.prompt_logprobs
        if parser is not None:
            new = parser.feed(delta.text, delta.token_count)
            events += new
            if any(isinstance(e, Content) for e in new):
                out.answer_logprobs.extend(delta.logprobs or ())
        if delta.final:
            out.finish_reason, out.usage = delta.finish_reason, delta.usage
            out.stop_sequence = delta.stop_sequence
            trace.add_usage(delta.usage)
    out.text = "".join(parts)
    if parser is None:
        out.answer_logprobs = out.logprobs
    else:
        out.reply = ReplySummary.of(events + parser.finish(), parser.calls)
        job.reasoning_tokens += parser.reasoning_tokens
    return out


def collect_replies(job: Job, deadline: Optional[float]) -> list[_Collected]:
    """Every choice's whole reply; the job is closed when they are in."""
    status = 200
    try:
        return [_collect(s, deadline, job) for s in job.streams]
    except ServiceError as exc:
        status = exc.status_code
        raise
    except BaseException:
        status = 500
        raise
    finally:
        job.close(status)


def job_deltas(job: Job, deadline: Optional[float]
               ) -> Iterator[tuple[int, Optional[GenerationDelta]]]:
    """(choice index, delta) as they come, choice after choice; (index, None)
    after KEEPALIVE_INTERVAL of silence. Raises the error a delta carries, and
    ClientDisconnectedError as soon as a waiting request's client hangs up
    (a write would tell only at the next token)."""
    quiet_since = time.monotonic()
    for index, stream in enumerate(job.streams):
        for delta in stream.iter_deltas(deadline, idle_interval=DISCONNECT_CHECK_INTERVAL):
            if delta is None:
                if job.caller.gone():
                    raise ClientDisconnectedError("The client closed the connection.")
                if time.monotonic() - quiet_since < KEEPALIVE_INTERVAL:
                    continue
            else:
                if delta.error is not None:
                    raise delta.error
                if delta.token_count:
                    job.trace.first_token()
                job.trace.add_usage(delta.usage)
            quiet_since = time.monotonic()
            yield index, delta


def run_stream(job: Job, lines: Iterator[str], error_line: Callable[[ServiceError], str],
               last_line: str = "") -> Iterator[str]:
    """The SSE lines of a job, ending it once whatever happens: an error
    becomes `error_line`, a client that leaves (the generator closed) a 499."""
    status = ClientDisconnectedError.status_code  # unless the stream runs to its end
    try:
        yield from lines
        status = 200
    except ServiceError as exc:
        status = exc.status_code
        job.close(status)
        yield error_line(exc)
    finally:
        job.close(status)
    if last_line:
        yield last_line
