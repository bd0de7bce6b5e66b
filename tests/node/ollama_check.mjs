// @langchain/ollama (what n8n's Ollama nodes use) against a live server's
// Ollama face: a chat that thinks, the same streamed, a tool call and the
// answer after its result, and embeddings. Prints one JSON object.
//   node tests/node/ollama_check.mjs ROOT_URL THINK_MODEL AGENT_MODEL EMBED_ROOT_URL EMBED_MODEL
import { HumanMessage, ToolMessage } from "@langchain/core/messages";
import { ChatOllama, OllamaEmbeddings } from "@langchain/ollama";

const [baseUrl, thinkModel, agentModel, embedBaseUrl, embedModel] = process.argv.slice(2);
const ask = "What is 17 × 23?";

const thinker = new ChatOllama({ baseUrl, model: thinkModel, think: true, temperature: 1.5 });
const reply = await thinker.invoke(ask);
let streamed = null;
let pieces = 0;
for await (const chunk of await thinker.stream(ask)) {
  streamed = streamed ? streamed.concat(chunk) : chunk;
  pieces += 1;
}

const calculator = {
  type: "function",
  function: {
    name: "Calculator", description: "Evaluates a math expression.",
    parameters: { type: "object", properties: { input: { type: "string" } } },
  },
};
// checkOrPullModel: the model is looked up in /api/tags (and pulled if missing) first
const agent = new ChatOllama({ baseUrl, model: agentModel, checkOrPullModel: true })
  .bindTools([calculator]);
const call = await agent.invoke([new HumanMessage(ask)]);
const final = await agent.invoke([
  new HumanMessage(ask), call,
  new ToolMessage({ content: "391", tool_call_id: call.tool_calls[0]?.id ?? "" }),
]);

const embeddings = new OllamaEmbeddings({ baseUrl: embedBaseUrl, model: embedModel });
const vectors = await embeddings.embedDocuments(["hello", "a longer text to embed"]);

console.log(JSON.stringify({
  reply: { content: reply.content, reasoning: reply.additional_kwargs.reasoning_content ?? null,
           usage: reply.usage_metadata },
  stream: { pieces, content: streamed.content,
            reasoning: streamed.additional_kwargs.reasoning_content ?? null },
  call: call.tool_calls.map((c) => ({ name: c.name, args: c.args })),
  final: final.content,
  embeddings: vectors,
}));
