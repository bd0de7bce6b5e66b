"""The Responses API on the real server: n8n's agent requests, the openai
SDK's responses.create / stream / retrieve, reasoning items, stored
responses and their chaining, and what is refused."""
from __future__ import annotations

import json

import openai
import pytest
import requests

from tests.conftest import start_server, stop_server
from tests.scripted_model import (AGENT_REASONING, THINK_ANSWER, THINK_REASONING,
                                  write_test_models)

CALCULATOR = {"type": "function", "name": "Calculator",
              "parameters": {"type": "object", "properties": {"input": {"type": "string"}},
                             "additionalProperties": False,
                             "$schema": "http://json-schema.org/draft-07/schema#"},
              "description": "Useful for getting the result of a math expression.",
              "strict": False}
# exactly what n8n 2.41's OpenAI Chat Model node sends for an AI Agent with one tool
N8N_AGENT = {"input": [{"type": "message", "role": "user",
                        "content": "What is 17 multiplied by 23? Use the calculator tool."}],
             "model": "scripted-agent", "temperature": 0, "stream": False,
             "tools": [CALCULATOR], "text": {}, "max_output_tokens": 96}


def post(server, body, **kwargs):
    return requests.post(f"{server.base_url}/responses", json=body, timeout=60, **kwargs)


def events_of(server, body) -> list[dict]:
    r = post(server, {**body, "stream": True}, stream=True)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith(b"data: ")]


def test_n8n_agent_gets_a_function_call_then_answers(scripted_server):
    r = post(scripted_server, N8N_AGENT)
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["status"] == "completed" and first["store"] is True
    reasoning, call = first["output"]
    assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_")
    assert reasoning["content"] == [{"type": "reasoning_text", "text": AGENT_REASONING}]
    assert call["type"] == "function_call" and call["name"] == "Calculator"
    assert call["id"].startswith("fc_") and call["call_id"].startswith("call_")
    assert json.loads(call["arguments"]) == {"input": "17*23"}
    assert first["usage"]["output_tokens_details"]["reasoning_tokens"] == 4
    assert first["tools"][0]["name"] == "Calculator"
    # n8n's second request: the whole history, with the call and the tool's output
    second = post(scripted_server, {**N8N_AGENT, "input": N8N_AGENT["input"] + [
        {"type": "function_call", "id": call["id"], "call_id": call["call_id"],
         "name": "Calculator", "arguments": call["arguments"]},
        {"type": "function_call_output", "call_id": call["call_id"], "output": "391"}]})
    assert second.status_code == 200, second.text
    (message,) = second.json()["output"]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"][0]["text"] == "17 × 23 = 391."


def test_n8n_agent_streams_the_call(scripted_server):
    events = events_of(scripted_server, N8N_AGENT)
    kinds = [e["type"] for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-1] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    thought = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    assert thought == AGENT_REASONING
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    assert [i["type"] for i in added] == ["reasoning", "function_call"]
    call = added[1]
    assert call["name"] == "Calculator" and call["arguments"] == ""
    deltas = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert len(deltas) > 1 and all(e["item_id"] == call["id"] and e["output_index"] == 1
                                   for e in deltas)
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert done["arguments"] == "".join(e["delta"] for e in deltas)
    assert json.loads(done["arguments"]) == {"input": "17*23"}
    final = events[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["reasoning", "function_call"]
    assert final["output"][1]["call_id"] == call["call_id"]


def test_sdk_create_stream_and_retrieve(scripted_server):
    client = scripted_server.client()
    resp = client.responses.create(model="scripted-think", input="What is 17 × 23?",
                                   temperature=1.2)
    assert resp.output_text == THINK_ANSWER
    assert resp.output[0].type == "reasoning"
    assert resp.output[0].content[0].text == THINK_REASONING
    assert resp.usage.output_tokens_details.reasoning_tokens == 9
    again = client.responses.retrieve(resp.id)
    assert again.id == resp.id and again.output_text == THINK_ANSWER
    with client.responses.stream(model="scripted-think", input="What is 17 × 23?") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.reasoning_text.delta" in kinds and "response.output_text.delta" in kinds
    assert final.output_text == THINK_ANSWER
    assert client.responses.retrieve(final.id).output_text == THINK_ANSWER


def test_sdk_function_tools_and_parallel_calls(scripted_server):
    client = scripted_server.client()
    weather = {"type": "function", "name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    resp = client.responses.create(model="scripted-parallel", input="Weather in Paris and Oslo?",
                                   tools=[weather])
    calls = [item for item in resp.output if item.type == "function_call"]
    assert [json.loads(c.arguments)["city"] for c in calls] == ["Paris", "Oslo"]
    assert len({c.call_id for c in calls}) == 2
    outputs = [{"type": "function_call_output", "call_id": c.call_id, "output": "sunny"}
               for c in calls]
    answer = client.responses.create(model="scripted-parallel", tools=[weather], input=outputs,
                                     previous_response_id=resp.id)
    assert answer.output_text == "Sunny in both."
    assert answer.previous_response_id == resp.id
    # one call at most: parallel_tool_calls false, or max_tool_calls 1 (chat alike)
    for limit in ({"parallel_tool_calls": False}, {"max_tool_calls": 1}):
        single = client.responses.create(model="scripted-parallel", input="Weather?",
                                         tools=[weather], **limit)
        assert [json.loads(i.arguments)["city"] for i in single.output
                if i.type == "function_call"] == ["Paris"]
    chat = client.chat.completions.create(
        model="scripted-parallel", messages=[{"role": "user", "content": "Weather?"}],
        tools=[{"type": "function", "function": {"name": "get_weather",
                                                 "parameters": weather["parameters"]}}],
        parallel_tool_calls=False)
    assert len(chat.choices[0].message.tool_calls) == 1
    # tool_choice none: the tools are not offered, the reply stays text
    text_only = client.responses.create(model="scripted-parallel", input="hi", tools=[weather],
                                        tool_choice="none")
    assert [i.type for i in text_only.output] == ["message"]
    assert text_only.output_text.startswith("<tool_call>")


def test_stored_responses_chain_list_and_delete(scripted_server):
    client = scripted_server.client()
    first = client.responses.create(model="scripted-think", input="first question",
                                    instructions="Be exact.", metadata={"case": "chain"})
    assert first.metadata == {"case": "chain"}
    second = client.responses.create(model="scripted-think", input="second question",
                                     previous_response_id=first.id)
    items = client.responses.input_items.list(second.id, order="asc").data
    # what the second answer was generated from: the first exchange, then its own input
    assert [i.type for i in items] == ["message", "reasoning", "message", "message"]
    assert items[0].content[0].text == "first question"
    assert items[2].role == "assistant" and items[2].content[0].text == THINK_ANSWER
    assert items[3].content[0].text == "second question"
    newest = client.responses.input_items.list(second.id, limit=1)
    assert newest.data[0].id == items[3].id and newest.has_more
    assert second.usage.input_tokens > first.usage.input_tokens  # the history was in the prompt
    deleted = client.responses.delete(first.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="scripted-think", input="x", previous_response_id=first.id)
    unstored = client.responses.create(model="scripted-think", input="x", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_reasoning_effort_text_format_and_logprobs(scripted_server):
    client = scripted_server.client()
    quick = client.responses.create(model="scripted-think", input="17 × 23?",
                                    reasoning={"effort": "none"})
    assert [i.type for i in quick.output] == ["message"] and quick.output_text == "Just 391."
    assert quick.reasoning.effort == "none"
    scored = client.responses.create(model="scripted-think", input="17 × 23?",
                                     reasoning={"effort": "none"}, top_logprobs=2,
                                     include=["message.output_text.logprobs"])
    logprobs = scored.output[0].content[0].logprobs
    assert "".join(lp.token for lp in logprobs) == "Just 391."
    assert all(len(lp.top_logprobs) == 2 and lp.logprob <= 0 for lp in logprobs)
    r = post(scripted_server, {"model": "scripted-think", "input": "x", "max_output_tokens": 24,
                               "text": {"format": {
        "type": "json_schema", "name": "answer", "strict": True,
        "schema": {"type": "object", "properties": {"n": {"type": "integer"}}}}}})
    assert r.status_code == 200, r.text
    assert r.json()["text"]["format"]["name"] == "answer"


def test_truncation_auto_drops_the_oldest_turns(scripted_server):
    long_turns = [{"role": role, "content": "word " * 300}
                  for role in ("user", "assistant", "user", "assistant")]
    body = {"model": "scripted-think", "input": long_turns + [{"role": "user", "content": "hi"}],
            "max_output_tokens": 64}
    refused = post(scripted_server, body)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "context_length_exceeded"
    fitted = post(scripted_server, {**body, "truncation": "auto"})
    assert fitted.status_code == 200, fitted.text
    assert fitted.json()["truncation"] == "auto"
    assert fitted.json()["usage"]["input_tokens"] + 64 <= 1024


@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools.0.type"),
    ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"include": ["everything"]}, "include.0"),
    ({"background": True}, "background"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"input": [{"type": "computer_call_output", "call_id": "c"}]}, "input.0.type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input.0.content.0"),
    ({"input": [{"type": "function_call_output", "output": "1"}]}, "input.0.call_id"),
    ({"truncation": "sometimes"}, "truncation"),
    ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"text": {"format": {"type": "json_schema"}}}, "text.format"),
    ({"input": ""}, "input"),
    # the fuzzer's finds: a list of tools that are not objects with a name was a 500
    ({"tools": [{"type": "function", "name": "f"}],
      "tool_choice": {"type": "allowed_tools", "tools": ["f"]}}, "tool_choice.tools"),
    ({"tools": [{"type": "function", "name": "f"}],
      "tool_choice": {"type": "allowed_tools", "tools": [{"name": {"f": 1}}]}},
     "tool_choice.tools"),
])
def test_what_is_refused_is_refused_precisely(scripted_server, body, param):
    r = post(scripted_server, {"model": "scripted-think", "input": "hi", **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert "Traceback" not in error["message"]


def test_unknown_ids_are_404(scripted_server):
    for method, path in (("get", "resp_nope"), ("delete", "resp_nope"),
                         ("get", "resp_nope/input_items")):
        r = requests.request(method, f"{scripted_server.base_url}/responses/{path}", timeout=10)
        assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"


def test_stored_responses_belong_to_their_key_and_outlive_a_restart(tmp_path):
    for folder in ("models", "first", "second"):
        (tmp_path / folder).mkdir()
    models = write_test_models(tmp_path / "models")
    env = {"DEFAULT_MODEL": "scripted-think", "MODEL_BASE_PATH": str(models),
           "API_KEYS": "key-alice,key-bob", "DATA_DIR": str(tmp_path / "data"),
           "RESPONSE_STORE_RETENTION_DAYS": "7"}
    server = start_server(tmp_path / "first", env)
    try:
        alice = server.client(api_key="key-alice")
        made = alice.responses.create(model="scripted-think", input="remember me")
        with pytest.raises(openai.NotFoundError):
            server.client(api_key="key-bob").responses.retrieve(made.id)
        with pytest.raises(openai.NotFoundError):
            server.client(api_key="key-bob").responses.create(
                model="scripted-think", input="x", previous_response_id=made.id)
    finally:
        stop_server(server)
    assert (tmp_path / "data" / "responses.sqlite3").is_file()
    server = start_server(tmp_path / "second", env)
    try:
        kept = server.client(api_key="key-alice").responses.retrieve(made.id)
        assert kept.output_text == THINK_ANSWER
        with pytest.raises(openai.NotFoundError):
            server.client(api_key="key-bob").responses.retrieve(made.id)
    finally:
        stop_server(server)


def test_langchain_agent_loop_on_the_responses_api(scripted_server):
    """What n8n's agent does underneath (LangChain's ChatOpenAI with the
    Responses API): a tool call, the tool's answer sent back, the final text."""
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def Calculator(input: str) -> str:  # noqa: N802 - the tool's name as n8n gives it
        """Useful for getting the result of a math expression."""
        return "391"

    for streaming in (False, True):
        llm = ChatOpenAI(base_url=scripted_server.base_url, api_key="lc", model="scripted-agent",
                         use_responses_api=True, temperature=0, max_retries=0,
                         streaming=streaming).bind_tools([Calculator])
        history = [HumanMessage("What is 17 multiplied by 23? Use the calculator tool.")]
        asked = llm.invoke(history)
        (call,) = asked.tool_calls
        assert call["name"] == "Calculator" and call["args"] == {"input": "17*23"}
        history += [asked, ToolMessage(Calculator.invoke(call["args"]), tool_call_id=call["id"])]
        answer = llm.invoke(history)
        assert not answer.tool_calls and answer.text == "17 × 23 = 391."
