// The openai npm package (what n8n's AI nodes use underneath) against a live
// server: chat, a stream, and a streamed tool call. Prints one JSON object.
//   node tests/node/client_check.mjs http://127.0.0.1:8000/v1 MODEL TOOLS_MODEL
import OpenAI from "openai";

const [baseURL, model, toolsModel] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "node-check", maxRetries: 0 });
const messages = [{ role: "user", content: "Say hello." }];

// greedy: a random model may end its turn early when it samples
const chat = await client.chat.completions.create({ model, messages, max_tokens: 6, temperature: 0 });

let streamed = "";
let finish = null;
const stream = await client.chat.completions.create({
  model, messages, max_tokens: 6, temperature: 0, stream: true,
  stream_options: { include_usage: true },
});
let usage = null;
for await (const chunk of stream) {
  for (const c of chunk.choices) {
    streamed += c.delta?.content ?? "";
    finish = c.finish_reason ?? finish;
  }
  usage = chunk.usage ?? usage;
}

const tool = {
  type: "function",
  function: {
    name: "get_weather",
    parameters: { type: "object", additionalProperties: false, required: ["city"],
                  properties: { city: { type: "string", maxLength: 12 } } },
  },
};
const calls = {};
let toolFinish = null;
const toolStream = await client.chat.completions.create({
  model: toolsModel, messages: [{ role: "user", content: "Weather in Paris?" }], stream: true,
  tools: [tool], tool_choice: "required", parallel_tool_calls: false, seed: 7,
  max_tokens: 300,  // room to close the JSON: rare characters take a token per byte
});
for await (const chunk of toolStream) {
  for (const c of chunk.choices) {
    toolFinish = c.finish_reason ?? toolFinish;
    for (const tc of c.delta?.tool_calls ?? []) {
      calls[tc.index] ??= { id: tc.id, name: tc.function?.name, arguments: "" };
      calls[tc.index].arguments += tc.function?.arguments ?? "";
    }
  }
}

console.log(JSON.stringify({
  chat: { object: chat.object, content: chat.choices[0].message.content,
          completion_tokens: chat.usage.completion_tokens },
  stream: { text: streamed, finish, completion_tokens: usage?.completion_tokens },
  tools: { finish: toolFinish, calls: Object.values(calls) },
}));
