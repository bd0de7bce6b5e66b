// The vllm-obtain web console: plain JavaScript over the service's own API.
// Nothing here is kept on the server; the API key stays in this browser.
"use strict";

const TEXT = {
  zh: {
    "tab.overview": "概览", "tab.models": "模型", "tab.playground": "对话试用", "tab.cluster": "集群",
    "tab.logs": "日志", "key.button": "API 密钥", "key.title": "API 密钥",
    "key.explain": "服务设置了密钥。请输入 API 密钥（加载、卸载模型和集群操作需要管理密钥）；密钥只保存在这个浏览器中。",
    "key.save": "保存", "overview.platform": "平台与引擎", "overview.requests": "请求",
    "overview.running": "进行中", "overview.waiting": "等待", "overview.throughput": "生成速度",
    "overview.uptime": "运行时长", "overview.models": "模型", "overview.faces": "协议接口",
    "chart.tokens": "生成速度（token/s）", "chart.latency": "首 token 时间与延迟（毫秒）",
    "chart.requests": "进行中与等待的请求", "chart.system": "CPU、内存与 GPU 显存（%）",
    "models.id": "模型", "models.state": "状态", "models.engine": "引擎", "models.size": "大小",
    "models.context": "上下文", "models.batch": "并行序列", "models.actions": "操作", "models.load": "加载", "models.unload": "卸载",
    "models.arch": "架构", "models.params": "参数量", "models.quant": "量化", "models.caps": "能力",
    "pull.title": "添加模型", "pull.source": "来源", "pull.repo": "仓库", "pull.quant": "文件或量化",
    "pull.name": "名称（可选）", "pull.start": "下载", "pull.origin": "来源", "pull.progress": "进度",
    "pull.cancel": "取消", "pull.hint": "从 Hugging Face（或 HF_ENDPOINT 镜像）、ModelScope 或一个 .gguf 的 URL 下载到 MODEL_BASE_PATH；服务需设置 ALLOW_MODEL_DOWNLOADS=true。取消后再次下载会从断点续传。",
    "pull.need_repo": "请填写仓库（owner/name）。", "pull.need_url": "请填写 .gguf 文件的 URL。",
    "state.downloading": "下载中", "state.success": "完成", "state.cancelled": "已取消",
    "pg.model": "模型", "pg.system": "系统提示词", "pg.temperature": "温度", "pg.max_tokens": "最大输出 token",
    "pg.clear": "清空对话", "pg.placeholder": "输入消息，Ctrl+Enter 发送", "pg.send": "发送", "pg.stop": "停止",
    "pg.snippets": "用代码发送同一个请求", "pg.copy": "复制", "pg.copied": "已复制",
    "pg.clients": "在 n8n 的 OpenAI 凭据中把 Base URL 设为 {base}；在 Dify 中添加“OpenAI-API-compatible”模型供应商，API endpoint 填 {base}；LangChain 的 ChatOpenAI 使用 base_url=\"{base}\"。",
    "pg.stats": "{tps} token/s · 提示词 {prompt} · 输出 {completion} · 合计 {total} token · 首 token {ttft} ms",
    "pg.streaming": "生成中… {count} 块", "pg.thinking": "思考过程（{count} 字）", "cluster.strategy": "分发策略", "cluster.apply": "切换",
    "cluster.up": "扩容 1 个", "cluster.down": "缩容 1 个", "cluster.instance": "实例", "cluster.connections": "连接",
    "cluster.requests": "请求", "cluster.failures": "失败", "cluster.latency": "平均响应（ms）",
    "cluster.memory": "内存（MB）", "cluster.restart": "重启", "logs.file": "文件", "logs.level": "级别",
    "logs.request_id": "请求 id", "logs.refresh": "刷新", "logs.time": "时间", "logs.message": "内容",
    "state.ready": "就绪", "state.loading": "加载中", "state.unloaded": "未加载", "state.unloading": "卸载中",
    "state.error": "加载失败", "state.healthy": "健康", "state.unhealthy": "不健康", "state.starting": "启动中",
    "state.draining": "排空中", "state.stopping": "停止中", "admin.needed": "这个操作需要管理密钥（ADMIN_API_KEY）。",
    "no.gpu": "无 GPU", "instances": "{healthy}/{total} 个实例健康", "lang": "English",
  },
  en: {
    "tab.overview": "Overview", "tab.models": "Models", "tab.playground": "Playground", "tab.cluster": "Cluster",
    "tab.logs": "Logs", "key.button": "API key", "key.title": "API key",
    "key.explain": "This service needs a key. Enter an API key (loading and unloading models and cluster actions need the admin key); it is kept in this browser only.",
    "key.save": "Save", "overview.platform": "Platform and engine", "overview.requests": "Requests",
    "overview.running": "running", "overview.waiting": "waiting", "overview.throughput": "Generation",
    "overview.uptime": "Uptime", "overview.models": "Models", "overview.faces": "API faces",
    "chart.tokens": "Generation (tokens/s)", "chart.latency": "Time to first token and latency (ms)",
    "chart.requests": "Requests running and waiting", "chart.system": "CPU, memory and GPU memory (%)",
    "models.id": "Model", "models.state": "State", "models.engine": "Engine", "models.size": "Size",
    "models.context": "Context", "models.batch": "Sequences", "models.actions": "Actions", "models.load": "Load", "models.unload": "Unload",
    "models.arch": "Architecture", "models.params": "Parameters", "models.quant": "Quantization",
    "models.caps": "Capabilities", "pull.title": "Add a model", "pull.source": "Source", "pull.repo": "Repository",
    "pull.quant": "File or quantization", "pull.name": "Name (optional)", "pull.start": "Download",
    "pull.origin": "From", "pull.progress": "Progress", "pull.cancel": "Cancel",
    "pull.hint": "Downloads from Hugging Face (or the HF_ENDPOINT mirror), ModelScope or the URL of a .gguf into MODEL_BASE_PATH; the server needs ALLOW_MODEL_DOWNLOADS=true. A cancelled download resumes when started again.",
    "pull.need_repo": "Enter a repository (owner/name).", "pull.need_url": "Enter the URL of a .gguf file.",
    "state.downloading": "Downloading", "state.success": "Done", "state.cancelled": "Cancelled",
    "pg.model": "Model", "pg.system": "System prompt", "pg.temperature": "Temperature", "pg.max_tokens": "Max tokens",
    "pg.clear": "Clear chat", "pg.placeholder": "Type a message, Ctrl+Enter sends", "pg.send": "Send", "pg.stop": "Stop",
    "pg.snippets": "The same request from code", "pg.copy": "Copy", "pg.copied": "Copied",
    "pg.clients": "n8n: set the OpenAI credential's Base URL to {base}. Dify: add an \"OpenAI-API-compatible\" model provider with API endpoint {base}. LangChain: ChatOpenAI(base_url=\"{base}\").",
    "pg.stats": "{tps} tokens/s · prompt {prompt} · completion {completion} · total {total} tokens · first token {ttft} ms",
    "pg.streaming": "generating… {count} chunks", "pg.thinking": "Thinking ({count} characters)", "cluster.strategy": "Strategy", "cluster.apply": "Switch",
    "cluster.up": "Scale up 1", "cluster.down": "Scale down 1", "cluster.instance": "Instance",
    "cluster.connections": "Connections", "cluster.requests": "Requests", "cluster.failures": "Failures",
    "cluster.latency": "Avg response (ms)", "cluster.memory": "Memory (MB)", "cluster.restart": "Restart",
    "logs.file": "File", "logs.level": "Level", "logs.request_id": "Request id", "logs.refresh": "Refresh",
    "logs.time": "Time", "logs.message": "Message", "state.ready": "ready", "state.loading": "loading",
    "state.unloaded": "unloaded", "state.unloading": "unloading", "state.error": "failed",
    "state.healthy": "healthy", "state.unhealthy": "unhealthy", "state.starting": "starting",
    "state.draining": "draining", "state.stopping": "stopping",
    "admin.needed": "This action needs the admin key (ADMIN_API_KEY).", "no.gpu": "no GPU",
    "instances": "{healthy}/{total} instances healthy", "lang": "中文",
  },
};
const HISTORY = 150;          // chart points kept: 5 minutes at one poll every 2 s
const METRICS_EVERY = 2000;   // ms
const STATUS_EVERY = 5000;    // ms
const BASE = `${location.origin}/v1`;

const $ = (id) => document.getElementById(id);
let lang = localStorage.getItem("vo-lang") || "zh";
let mode = "single";          // or "load_balance", from /v1/system/status

function t(key, values = {}) {
  const text = (TEXT[lang] && TEXT[lang][key]) || TEXT.zh[key] || key;
  return text.replace(/\{(\w+)\}/g, (_, name) => (name in values ? values[name] : `{${name}}`));
}

function applyLanguage() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  document.querySelectorAll("[data-i18n-placeholder]").forEach((el) => {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  });
  $("lang-button").textContent = t("lang");
  $("pg-clients").textContent = t("pg.clients", { base: BASE });
}

function stateLabel(state) {
  const span = document.createElement("span");
  span.className = `state state-${state}`;
  span.dataset.state = state;
  span.textContent = t(`state.${state}`);
  return span;
}

function notice(message, kind = "error") {
  const box = $("notice");
  box.textContent = message;
  box.className = kind;
  box.hidden = !message;
}

// the API --------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
  }
}

function authHeaders() {
  const key = localStorage.getItem("vo-key");
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options, headers: { "Content-Type": "application/json", ...authHeaders(), ...(options.headers || {}) },
  });
  const body = await response.json().catch(() => null);
  if (response.status === 401) askForKey();
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function askForKey() {
  const dialog = $("key-dialog");
  if (!dialog.open) {
    $("key-input").value = localStorage.getItem("vo-key") || "";
    dialog.showModal();
  }
}

function adminAction(promise) {
  return promise.catch((err) => {
    notice(err.status === 403 ? t("admin.needed") : err.message);
    throw err;
  });
}

// tabs -------------------------------------------------------------------------
const loaders = {};
function showTab() {
  const name = (location.hash || "#overview").slice(1);
  document.querySelectorAll(".tab").forEach((el) => { el.hidden = el.id !== `tab-${name}`; });
  document.querySelectorAll("#tabs a").forEach((a) => a.classList.toggle("active", a.dataset.tab === name));
  if (loaders[name]) loaders[name]();
}

// overview: cards, model states, live charts -------------------------------------------
function makeChart(id, series) {
  const el = $(id);
  const data = [[], ...series.map(() => [])];
  const plot = new uPlot({
    width: Math.max(el.clientWidth, 420), height: 200,
    // always the last 5 minutes, from zero up: one point does not make a chart of years
    scales: { x: { time: true, range: (u, min, max) => {
                const end = max ?? Date.now() / 1000;   // no point yet: end now
                return [end - HISTORY * METRICS_EVERY / 1000, end];
              } },
              y: { range: (u, min, max) => [0, Math.max(max || 0, 1) * 1.1] } },
    series: [{}, ...series.map(([label, stroke]) => ({ label, stroke, width: 2, spanGaps: true }))],
    axes: [{}, { size: 50 }],
  }, data, el);
  return {
    add(time, values) {
      data[0].push(time);
      values.forEach((v, i) => data[i + 1].push(v));
      if (data[0].length > HISTORY) data.forEach((column) => column.shift());
      plot.setData(data);
      // tests and curious users can read them
      el.dataset.points = data[0].length;
      el.dataset.max = Math.max(0, ...data.slice(1).flat().filter((v) => v != null));
    },
  };
}

let charts = null;
let previous = null;

function formatUptime(seconds) {
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60);
  return `${h}h ${m}m ${Math.floor(seconds % 60)}s`;
}

async function pollStatus() {
  let status;
  try { status = await api("/v1/system/status"); } catch (err) { return; }
  mode = status.mode || "single";
  document.querySelector('#tabs a[data-tab="cluster"]').hidden = mode !== "load_balance";
  $("ov-uptime").textContent = formatUptime(status.uptime_seconds);
  // the protocols served, each at its base URL (OpenAI /v1, Anthropic, Ollama)
  $("ov-faces-card").hidden = !status.faces;
  $("ov-faces").replaceChildren(...(status.faces || []).map((f) => {
    const item = document.createElement("span");
    item.className = "face";
    item.dataset.face = f.name;
    item.textContent = `${f.name} ${location.origin}${f.base_url}`;
    return item;
  }));
  const list = $("ov-models");
  list.replaceChildren();
  if (mode === "load_balance") {
    const c = status.cluster;
    $("ov-platform").textContent = `load_balance · ${c.load_balancer_strategy} · ` +
      t("instances", { healthy: c.healthy_instances, total: c.total_instances });
    const models = await api("/v1/models").then((b) => b.data).catch(() => []);
    models.forEach((m) => list.append(modelItem(m.id, m.state)));
    return;
  }
  const engine = status.engine || {};
  const info = status.platform || {};
  const gpus = (info.cuda_gpus || []).map((g) => g.name || g).join(", ");
  $("ov-platform").textContent = [engine.engine, engine.device, `${info.os || ""} ${info.arch || ""}`,
    info.cpu_model, gpus].filter(Boolean).join(" · ");
  status.models.forEach((m) => list.append(modelItem(m.id, m.state)));
}

function modelItem(id, state) {
  const li = document.createElement("li");
  li.dataset.model = id;
  li.append(`${id} `, stateLabel(state));
  return li;
}

async function pollMetrics() {
  let m;
  try { m = await api("/v1/system/metrics"); } catch (err) { return; }
  const sys = m.system;
  const gpus = sys.gpus || [];
  const gpu = gpus.length ? 100 * gpus.reduce((a, g) => a + g.memory_used_bytes, 0) /
    gpus.reduce((a, g) => a + g.memory_total_bytes, 0) : null;
  // the same figures in both modes: at the load-balanced entry point, its instances' sums
  const inf = m.inference || {};
  const running = inf.requests_running ?? 0, waiting = inf.requests_waiting ?? 0;
  let tps = null, ttft = null, latency = null;
  if (previous && m.inference && previous.inference) {
    const before = previous.inference;
    // an instance that restarts starts its totals again: a drop counts as nothing
    const grew = (name) => Math.max(0, (inf[name] || 0) - (before[name] || 0));
    const dt = m.timestamp - previous.timestamp;
    const done = grew("completed_requests"), firsts = grew("ttft_count");
    tps = dt > 0 ? grew("generation_tokens_total") / dt : 0;
    latency = done > 0 ? 1000 * grew("latency_seconds_sum") / done : null;
    ttft = firsts > 0 ? 1000 * grew("ttft_seconds_sum") / firsts : null;
  }
  previous = m;
  $("ov-running").textContent = running;
  $("ov-waiting").textContent = waiting;
  $("ov-tps").textContent = tps == null ? "–" : tps.toFixed(1);
  const time = m.timestamp;
  charts.tokens.add(time, [tps]);
  charts.latency.add(time, [ttft, latency]);
  charts.requests.add(time, [running, waiting]);
  charts.system.add(time, [sys.cpu_percent, sys.memory_percent, gpu]);
}

// models ---------------------------------------------------------------------------
function formatSize(bytes) {
  if (bytes == null) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i += 1; }
  return `${bytes.toFixed(i ? 1 : 0)} ${units[i]}`;
}

async function loadModels() {
  let models;
  if (mode === "load_balance") {
    models = (await api("/v1/models").catch(() => ({ data: [] }))).data
      .map((m) => ({ id: m.id, state: m.state || "ready", engine: (m.instances || []).join(", ") }));
  } else {
    models = (await api("/v1/system/status").catch(() => ({ models: [] }))).models;
  }
  const body = document.querySelector("#models-table tbody");
  body.replaceChildren(...models.map(modelRow));
}

function modelRow(m) {
  const row = document.createElement("tr");
  row.dataset.model = m.id;
  const runtime = m.runtime || {};
  const context = runtime.context_length || (m.settings && m.settings.context_size) || "–";
  // how many requests decode at once, and how that was chosen (auto or set)
  const batch = runtime.parallel_sequences || (m.settings && m.settings.max_batch_size) || "–";
  const meta = m.metadata || {};
  const cells = [m.id, "", m.engine || "–", meta.architecture || "–", meta.parameter_size || "–",
    meta.quantization || "–", formatSize(m.size_bytes), context, batch,
    (meta.capabilities || []).join(", ") || "–", ""].map((text) => {
    const td = document.createElement("td");
    td.textContent = text;
    return td;
  });
  cells[1].append(stateLabel(m.state));
  if (runtime.batch_plan) {  // "auto: 16 sequences x 4096 tokens, ..." or "set: ..."
    cells[8].title = runtime.batch_plan;
    const how = document.createElement("span");
    how.className = "batch-plan";
    how.textContent = ` (${runtime.batch_plan.split(":")[0]})`;
    cells[8].append(how);
  }
  if (m.state === "loading") {
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.value = m.load_progress || 0;
    cells[1].append(" ", bar, ` ${m.load_stage || ""}`);
  }
  if (m.error) {
    const err = document.createElement("div");
    err.className = "error";
    err.textContent = m.error;
    cells[1].append(err);
  }
  const load = document.createElement("button");
  load.textContent = t("models.load");
  load.className = "load";
  load.disabled = m.state === "ready" || m.state === "loading";
  load.onclick = () => loadModel(m.id);
  const unload = document.createElement("button");
  unload.textContent = t("models.unload");
  unload.className = "unload";
  unload.disabled = m.state !== "ready";
  unload.onclick = () => adminAction(api(`/v1/models/${encodeURIComponent(m.id)}/unload`, { method: "DELETE" }))
    .then(loadModels).catch(loadModels);
  cells[10].append(load, " ", unload);
  row.append(...cells);
  return row;
}

// adding a model: a pull, and its progress until it ends ---------------------------------
function pullBody() {
  const source = $("pull-source").value;
  const name = $("pull-name").value.trim();
  const body = source === "url" ? { url: $("pull-url").value.trim() } : { source, repo: $("pull-repo").value.trim() };
  const file = $("pull-file").value.trim();
  if (source !== "url" && file) body[file.endsWith(".gguf") ? "file" : "quantization"] = file;
  if (name) body.name = name;
  return body;
}

async function startPull(event) {
  event.preventDefault();
  notice("");
  const body = pullBody();
  if (body.url === "" || body.repo === "") {
    notice(t(body.url === "" ? "pull.need_url" : "pull.need_repo"));
    return;
  }
  try {
    await adminAction(api("/v1/models/pull", { method: "POST", body: JSON.stringify(body) }));
  } catch (err) {
    return;  // the notice says why (the server's message)
  }
  followPulls();
}

let followingPulls = false;
async function followPulls() {
  if (followingPulls) return;
  followingPulls = true;
  try {
    for (;;) {
      const pulls = (await api("/v1/models/pull").catch(() => ({ data: [] }))).data;
      $("pulls-table").querySelector("tbody").replaceChildren(...pulls.map(pullRow));
      if (!pulls.some((p) => p.status === "downloading")) break;
      await new Promise((r) => setTimeout(r, 400));
    }
  } finally {
    followingPulls = false;
  }
  await loadModels();  // a finished pull is a model now
}

function pullRow(p) {
  const row = document.createElement("tr");
  row.dataset.pull = p.id;
  row.dataset.status = p.status;
  const cells = [p.id, p.origin, "", "", ""].map((text) => {
    const td = document.createElement("td");
    td.textContent = text;
    return td;
  });
  const bar = document.createElement("progress");
  bar.max = 100;
  const percent = p.percent == null ? (p.status === "success" ? 100 : 0) : p.percent;
  bar.value = percent;
  bar.dataset.percent = String(percent);
  cells[2].append(bar, ` ${percent.toFixed(1)} % · ${formatSize(p.completed)} / ${formatSize(p.total)}`);
  cells[3].append(stateLabel(p.status));
  if (p.error) {
    const err = document.createElement("div");
    err.className = "error";
    err.textContent = p.error;
    cells[3].append(err);
  }
  if (p.status === "downloading") {
    const cancel = document.createElement("button");
    cancel.textContent = t("pull.cancel");
    cancel.className = "cancel";
    cancel.onclick = () => adminAction(api(`/v1/models/pull/${encodeURIComponent(p.id)}`, { method: "DELETE" }))
      .catch(() => null);
    cells[4].append(cancel);
  }
  row.append(...cells);
  return row;
}

function showPullFields() {
  const url = $("pull-source").value === "url";
  document.querySelectorAll(".pull-repo").forEach((el) => { el.hidden = url; });
  document.querySelector(".pull-url").hidden = !url;
}

async function loadModel(id) {
  notice("");
  const request = adminAction(api("/v1/models/load", { method: "POST", body: JSON.stringify({ model_name: id }) }));
  let done = false;
  request.then(() => { done = true; }, () => { done = true; });
  // the load answers when it is over: meanwhile, show its progress
  while (!done) {
    await new Promise((r) => setTimeout(r, 300));
    const info = await api(`/v1/models/${encodeURIComponent(id)}/status`).catch(() => null);
    if (info) {
      const old = document.querySelector(`#models-table tr[data-model="${CSS.escape(id)}"]`);
      if (old) old.replaceWith(modelRow(info));
    }
  }
  await loadModels();
}

// playground -----------------------------------------------------------------------
let conversation = [];
let controller = null;

async function loadPlaygroundModels() {
  const select = $("pg-model");
  const chosen = select.value;
  const models = (await api("/v1/models").catch(() => ({ data: [] }))).data;
  select.replaceChildren(...models.map((m) => new Option(`${m.id}${m.state && m.state !== "ready" ? ` (${t(`state.${m.state}`)})` : ""}`, m.id)));
  const ready = models.find((m) => m.state === "ready");
  select.value = chosen || (ready ? ready.id : (models[0] || {}).id || "");
  updateSnippets();
}

function chatRequest(extraUser) {
  const messages = [];
  const system = $("pg-system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...conversation);
  if (extraUser !== undefined) messages.push({ role: "user", content: extraUser });
  return {
    model: $("pg-model").value, messages,
    temperature: Number($("pg-temperature").value), max_tokens: Number($("pg-max-tokens").value),
    stream: true,
  };
}

function updateSnippets(request) {
  request = request || chatRequest($("pg-input").value || "你好");
  const json = JSON.stringify(request, null, 2);
  $("snippet-curl").textContent = `curl ${BASE}/chat/completions \\\n  -H "Content-Type: application/json" \\\n` +
    `  -H "Authorization: Bearer $API_KEY" \\\n  -d '${json.replace(/'/g, "'\\''")}'`;
  const py = (value) => JSON.stringify(value, null, 4).replace(/\n/g, "\n    ");
  $("snippet-python").textContent = `from openai import OpenAI\n\nclient = OpenAI(base_url="${BASE}", api_key="YOUR_API_KEY")\n` +
    `stream = client.chat.completions.create(\n    model=${JSON.stringify(request.model)},\n    messages=${py(request.messages)},\n` +
    `    temperature=${request.temperature},\n    max_tokens=${request.max_tokens},\n    stream=True,\n)\n` +
    `for chunk in stream:\n    if chunk.choices:\n        print(chunk.choices[0].delta.content or "", end="", flush=True)\n`;
}

// an assistant reply: its reasoning folded away above the answer
function addReply() {
  const div = addMessage("assistant", "");
  const thinking = document.createElement("details");
  thinking.className = "thinking";
  thinking.hidden = true;
  const summary = document.createElement("summary");
  const thought = document.createElement("div");
  thought.className = "thinking-text";
  thinking.append(summary, thought);
  const answer = document.createElement("div");
  answer.className = "answer";
  div.append(thinking, answer);
  return {
    div, answer,
    think(text) {
      thinking.hidden = false;
      thought.textContent = text;
      summary.textContent = t("pg.thinking", { count: text.length });
      div.dataset.reasoningChars = String(text.length);
    },
  };
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("pg-messages").append(div);
  $("pg-messages").scrollTop = $("pg-messages").scrollHeight;
  return div;
}

async function send() {
  const text = $("pg-input").value.trim();
  if (!text || controller) return;
  const request = { ...chatRequest(text), stream_options: { include_usage: true } };
  updateSnippets(chatRequest(text));
  conversation.push({ role: "user", content: text });
  addMessage("user", text);
  $("pg-input").value = "";
  const reply = addReply();
  controller = new AbortController();
  $("pg-send").disabled = true;
  $("pg-stop").disabled = false;
  const started = performance.now();
  let firstAt = null, chunks = 0, usage = null, content = "", reasoning = "";
  try {
    const response = await fetch(`${BASE}/chat/completions`, {
      method: "POST", body: JSON.stringify(request), signal: controller.signal,
      headers: { "Content-Type": "application/json", ...authHeaders() },
    });
    if (!response.ok) {
      if (response.status === 401) askForKey();
      throw new ApiError(response.status, await response.json().catch(() => null));
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
          const data = JSON.parse(line.slice(6));
          if (data.error) throw new Error(data.error.message);
          if (data.usage) usage = data.usage;
          const delta = data.choices && data.choices[0] && data.choices[0].delta;
          if (delta && (delta.content || delta.reasoning_content)) {
            if (firstAt === null) firstAt = performance.now();
            if (delta.reasoning_content) {
              reasoning += delta.reasoning_content;
              reply.think(reasoning);
            }
            content += delta.content || "";
            reply.answer.textContent = content;
            chunks += 1;
            $("pg-stats").textContent = t("pg.streaming", { count: chunks });
            $("pg-messages").scrollTop = $("pg-messages").scrollHeight;
          }
        }
      }
    }
    // the earlier reasoning goes back too: the model's template decides what it keeps
    conversation.push(reasoning ? { role: "assistant", content, reasoning_content: reasoning }
      : { role: "assistant", content });
    if (usage) {
      const seconds = (performance.now() - (firstAt || started)) / 1000;
      const tps = usage.completion_tokens > 1 && seconds > 0 ? (usage.completion_tokens - 1) / seconds : 0;
      $("pg-stats").textContent = t("pg.stats", {
        tps: tps.toFixed(1), prompt: usage.prompt_tokens, completion: usage.completion_tokens,
        total: usage.total_tokens, ttft: Math.round((firstAt || performance.now()) - started),
      });
    }
  } catch (err) {
    if (err.name !== "AbortError") {
      reply.div.classList.add("error");
      reply.answer.textContent = `${content}\n[${err.message}]`;
    } else if (content) {
      conversation.push({ role: "assistant", content });
    }
  } finally {
    controller = null;
    $("pg-send").disabled = false;
    $("pg-stop").disabled = true;
  }
}

// cluster --------------------------------------------------------------------------
async function loadCluster() {
  let status;
  try { status = await api("/v1/cluster/status"); } catch (err) {
    notice(err.status === 403 ? t("admin.needed") : err.message);
    return;
  }
  const strategy = $("cl-strategy");
  if (!strategy.dataset.chosen) strategy.value = status.load_balancer_strategy;  // not over a choice not yet applied
  const rows = Object.values(status.instances).map((i) => {
    const row = document.createElement("tr");
    row.dataset.instance = i.id;
    const values = [i.id, i.url, "", i.active_connections, i.requests, i.failures,
      i.avg_response_time == null ? "–" : (i.avg_response_time * 1000).toFixed(0),
      i.cpu_percent, i.memory_mb, ""];
    const cells = values.map((v) => { const td = document.createElement("td"); td.textContent = v; return td; });
    cells[2].append(stateLabel(i.state));
    if (i.kind === "local") {
      const restart = document.createElement("button");
      restart.textContent = t("cluster.restart");
      restart.onclick = () => adminAction(api("/v1/cluster/restart", {
        method: "POST", body: JSON.stringify({ instance_id: i.id }) })).then(loadCluster, () => {});
      cells[9].append(restart);
    }
    row.append(...cells);
    return row;
  });
  document.querySelector("#cluster-table tbody").replaceChildren(...rows);
}

function clusterAction(path, body) {
  notice("");
  adminAction(api(path, { method: "POST", body: JSON.stringify(body) })).then(loadCluster, () => {});
}

// logs -----------------------------------------------------------------------------
let logsQuery = 0;  // answers can arrive out of order: only the latest query's answer is shown

async function loadLogs() {
  const query = ++logsQuery;
  const params = new URLSearchParams({ limit: "200", file: $("log-file").value });
  if ($("log-level").value) params.set("level", $("log-level").value);
  if ($("log-request-id").value.trim()) params.set("request_id", $("log-request-id").value.trim());
  let lines;
  try { lines = (await api(`/v1/logs/recent?${params}`)).data; } catch (err) {
    if (query === logsQuery) notice(err.status === 403 ? t("admin.needed") : err.message);
    return;
  }
  if (query !== logsQuery) return;
  const rows = lines.reverse().map((entry) => {
    const row = document.createElement("tr");
    row.className = `level-${entry.level}`;
    [entry.time, entry.level, entry.request_id, entry.message].forEach((v) => {
      const td = document.createElement("td");
      td.textContent = v;
      row.append(td);
    });
    return row;
  });
  document.querySelector("#logs-table tbody").replaceChildren(...rows);
  // what the table shows, for whoever reads it (the browser tests wait on it)
  Object.assign($("logs-table").dataset, { file: params.get("file"), requestId: params.get("request_id") || "" });
}

// start ------------------------------------------------------------------------------
function start() {
  applyLanguage();
  charts = {
    tokens: makeChart("chart-tokens", [["token/s", "#2f6fde"]]),
    latency: makeChart("chart-latency", [["TTFT", "#e67e22"], ["latency", "#8e44ad"]]),
    requests: makeChart("chart-requests", [["running", "#1e8e3e"], ["waiting", "#c0392b"]]),
    system: makeChart("chart-system", [["CPU", "#2f6fde"], ["memory", "#16a085"], ["GPU", "#c0392b"]]),
  };
  loaders.models = () => { loadModels(); followPulls(); };
  loaders.playground = loadPlaygroundModels;
  loaders.cluster = loadCluster;
  loaders.logs = loadLogs;
  window.addEventListener("hashchange", showTab);
  $("lang-button").onclick = () => {
    lang = lang === "zh" ? "en" : "zh";
    localStorage.setItem("vo-lang", lang);
    applyLanguage();
    showTab();
  };
  $("key-button").onclick = askForKey;
  $("key-form").addEventListener("submit", () => {
    localStorage.setItem("vo-key", $("key-input").value.trim());
    notice("");
    pollStatus();
    showTab();
  });
  $("pg-send").onclick = send;
  $("pg-stop").onclick = () => controller && controller.abort();
  $("pg-clear").onclick = () => { conversation = []; $("pg-messages").replaceChildren(); $("pg-stats").textContent = ""; };
  $("pg-input").addEventListener("keydown", (e) => { if (e.key === "Enter" && e.ctrlKey) send(); });
  ["pg-model", "pg-system", "pg-temperature", "pg-max-tokens", "pg-input"].forEach((id) =>
    $(id).addEventListener("input", () => updateSnippets()));
  document.querySelectorAll("button.copy").forEach((button) => {
    button.onclick = () => navigator.clipboard.writeText($(button.dataset.copy).textContent)
      .then(() => { button.textContent = t("pg.copied"); setTimeout(() => { button.textContent = t("pg.copy"); }, 1500); });
  });
  $("cl-strategy").addEventListener("change", () => { $("cl-strategy").dataset.chosen = "1"; });
  $("cl-apply").onclick = () => {
    delete $("cl-strategy").dataset.chosen;
    clusterAction("/v1/cluster/strategy", { strategy: $("cl-strategy").value });
  };
  $("cl-up").onclick = () => clusterAction("/v1/cluster/scale", { action: "scale_up", count: 1 });
  $("cl-down").onclick = () => clusterAction("/v1/cluster/scale", { action: "scale_down", count: 1 });
  $("log-form").addEventListener("submit", (e) => { e.preventDefault(); loadLogs(); });
  $("pull-form").addEventListener("submit", startPull);
  $("pull-source").addEventListener("change", showPullFields);
  pollStatus().then(showTab);
  pollMetrics();
  setInterval(pollMetrics, METRICS_EVERY);
  // the pages that show live state are read again while open
  setInterval(() => {
    pollStatus();
    if (location.hash === "#models") loadModels();
    if (location.hash === "#cluster") loadCluster();
  }, STATUS_EVERY);
}

start();
