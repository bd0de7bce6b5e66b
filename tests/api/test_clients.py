"""The real clients people point at this server: LangChain, LiteLLM and the
openai npm package under Node (what n8n uses)."""
from __future__ import annotations

import json
import os

from pydantic import BaseModel, Field

from tests.conftest import SMOL, TOOLS_MODEL, needs_node, run_node_check


def test_langchain_invoke_stream_tools_and_structured_output(smollm_server, tools_server):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=smollm_server.base_url, api_key="lc", model=SMOL, max_tokens=8,
                     temperature=0, max_retries=0)
    answer = llm.invoke("What is 2+2?")
    assert answer.content and answer.response_metadata["finish_reason"] in ("stop", "length")
    streamed = "".join(chunk.content for chunk in llm.stream("What is 2+2?"))
    assert streamed == answer.content

    class Person(BaseModel):
        name: str = Field(max_length=20)
        age: int

    structured = ChatOpenAI(base_url=smollm_server.base_url, api_key="lc", model=SMOL,
                            max_tokens=60, temperature=0, max_retries=0)
    person = structured.with_structured_output(Person).invoke("Alice is 30 years old.")
    assert isinstance(person, Person)

    class City(BaseModel):
        city: str = Field(max_length=12)  # a random model's strings stay short

    @tool(args_schema=City)
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    # a random model's arguments: seeded, with room to close the JSON (bytes of rare
    # characters are tokens of their own)
    tools_llm = ChatOpenAI(base_url=tools_server.base_url, api_key="lc", model=TOOLS_MODEL,
                           max_tokens=300, seed=7, max_retries=0)
    reply = tools_llm.bind_tools([get_weather], tool_choice="get_weather").invoke("Paris?")
    (call,) = reply.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)


def test_litellm_completion_stream_and_tools(smollm_server, tools_server):
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # no fetch from the internet
    import litellm

    messages = [{"role": "user", "content": "Say hello."}]
    resp = litellm.completion(model=f"openai/{SMOL}", api_base=smollm_server.base_url,
                              api_key="ll", messages=messages, max_tokens=6, temperature=0)
    assert resp.choices[0].message.content and resp.usage.completion_tokens <= 6
    chunks = litellm.completion(model=f"openai/{SMOL}", api_base=smollm_server.base_url,
                                api_key="ll", messages=messages, max_tokens=6, temperature=0,
                                stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == \
        resp.choices[0].message.content
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string", "maxLength": 10}},
        "required": ["q"], "additionalProperties": False}}}
    called = litellm.completion(model=f"openai/{TOOLS_MODEL}", api_base=tools_server.base_url,
                                api_key="ll", messages=messages, tools=[tool],
                                tool_choice="required", parallel_tool_calls=False,
                                max_tokens=300, seed=7)
    (call,) = called.choices[0].message.tool_calls
    assert call.function.name == "lookup" and "q" in json.loads(call.function.arguments)


@needs_node
def test_openai_npm_package_under_node(tiny_server, tools_server):
    result = run_node_check("client_check.mjs", tiny_server.base_url, "tiny-chat", TOOLS_MODEL)
    assert result["chat"]["object"] == "chat.completion"
    assert result["chat"]["completion_tokens"] == 6
    assert result["stream"]["finish"] == "length" and result["stream"]["completion_tokens"] == 6
    assert result["tools"]["finish"] == "tool_calls"
    (call,) = result["tools"]["calls"]
    assert call["id"].startswith("call_") and call["name"] == "get_weather"
    assert set(json.loads(call["arguments"])) == {"city"}
