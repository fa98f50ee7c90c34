// The web chat: talks to the agent through the Sessions API. No build step, no dependencies.
// WEB_CHAT=public: a visitor holds no key; the server's HttpOnly cookie scopes it to its own sessions.
// WEB_CHAT=admin: the page asks for the server's API key and keeps it in this browser only.
// Replies stream as Server-Sent Events (read from the POST's body) and show as they are written.
// With several agents running, a picker chooses who to chat with; each agent has its own session.
"use strict";

const $ = (id) => document.getElementById(id);
const store = {
  get: (key) => localStorage.getItem("parley." + key),
  set: (key, value) => localStorage.setItem("parley." + key, value),
  drop: (key) => localStorage.removeItem("parley." + key),
};

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || "HTTP " + status);
    this.status = status;
    this.code = body && body.error && body.error.code;
  }
}

let publicChat = false;

async function request(method, path, body, accept = "application/json") {
  const headers = { "Accept": accept };
  const key = publicChat ? null : store.get("apiKey");
  if (key) headers["Authorization"] = "Bearer " + key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401 && !publicChat) $("key-form").hidden = false;
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  return response;
}

async function api(method, path, body) {
  const response = await request(method, path, body);
  return response.json().catch(() => null);
}

// One Server-Sent Event from its lines; comments (": ping") and events without data give null.
function parseEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split(/\r\n|\r|\n/)) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  return data.length ? { event, data: JSON.parse(data.join("\n")) } : null;
}

// The events of a text/event-stream body, each as soon as its closing blank line has arrived.
async function* serverEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = /\r\n\r\n|\n\n|\r\r/.exec(buffer))) {
      const event = parseEvent(buffer.slice(0, end.index));
      buffer = buffer.slice(end.index + end[0].length);
      if (event) yield event;
    }
  }
}

function show(text, role) {
  const item = document.createElement("li");
  item.className = role;
  item.textContent = text;  // never innerHTML: replies are untrusted text
  $("messages").append(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

function setStatus(text) { $("status").textContent = text; }

function typing(on) {
  $("typing").hidden = !on;
  $("send").disabled = on;
}

let agents = [];  // the running agents, the first character first
let agentId = null;  // the one chatted with
let sessionId = null;

// Each agent's session is kept apart; `sessionId` names the current one, whichever agent's it is.
function rememberSession() {
  store.set("session." + agentId, sessionId);
  store.set("sessionId", sessionId);
}

// This agent's last session: its own key, else (a page from before the picker kept only
// `sessionId`) the current one if the server says it is this agent's.
async function recalledSession(id) {
  const own = store.get("session." + id);
  const current = store.get("sessionId");
  if (own || !current) return own;
  try {
    const session = await api("GET", `/api/sessions/${encodeURIComponent(current)}`);
    return session.agentId === id ? current : null;
  } catch (error) {
    // Gone, or its agent stopped (409): not this agent's to resume. Only a missing key is the visitor's to fix.
    if (error.status >= 400 && error.status < 500 && error.status !== 401) return null;
    throw error;
  }
}

async function newSession() {
  let userId = store.get("userId");
  if (!userId) {
    userId = "web-" + crypto.randomUUID();
    store.set("userId", userId);
  }
  const session = await api("POST", "/api/sessions", { userId, agentId, metadata: { client: "web-chat" } });
  sessionId = session.sessionId;
  rememberSession();
}

async function loadHistory() {
  const page = await api("GET", `/api/sessions/${encodeURIComponent(sessionId)}/messages?limit=50`);
  // Tool calls are part of the history for the API; the chat shows only what was said.
  for (const message of page.messages.reverse()) {
    if (!message.toolCall) show(message.content, message.isAgent ? "agent" : "user");
  }
}

// Chat with agent `id`: its name on screen, its session and history.
async function chooseAgent(id) {
  agentId = id;
  store.set("agent", id);
  const { name } = agents.find((agent) => agent.id === id);
  $("agent-name").textContent = name;
  $("typing-name").textContent = name;
  $("agent-picker").value = id;
  document.title = "Chat with " + name;
  $("messages").replaceChildren();
  sessionId = await recalledSession(id);
  if (sessionId) {
    try { await loadHistory(); } catch (error) { if (error.status !== 404) throw error; sessionId = null; }
  }
  if (sessionId) rememberSession();
  else await newSession();
}

async function start() {
  try {
    const info = await api("GET", "/api/web-chat");
    publicChat = info.access === "public";
    if (publicChat) store.drop("apiKey");  // never send a key a visitor's page has no business holding
    agents = info.agents;
    if (!agents.length) throw new Error(info.name + " is not running; try again later.");
    const picker = $("agent-picker");
    picker.replaceChildren(...agents.map((agent) => new Option(agent.name, agent.id)));
    picker.hidden = agents.length < 2;  // a choice only when there is one to make
    const saved = store.get("agent");
    await chooseAgent(agents.some((agent) => agent.id === saved) ? saved : agents[0].id);
    setStatus("");
    $("input").focus();
  } catch (error) {
    setStatus(error.message);
  }
}

$("agent-picker").addEventListener("change", async (event) => {
  try {
    await chooseAgent(event.target.value);
    setStatus("");
  } catch (error) {
    setStatus(error.message);
  }
});

// Streams one message's reply into `drafts` (reply id -> its bubble, text as written so far);
// resolves with the final result (`done`), rejects with the API's error (`error`).
async function streamMessage(text, drafts) {
  const path = `/api/sessions/${encodeURIComponent(sessionId)}/messages`;
  const response = await request("POST", path, { content: text, transport: "sse" }, "text/event-stream");
  if (!(response.headers.get("Content-Type") || "").startsWith("text/event-stream")) return response.json();
  for await (const { event, data } of serverEvents(response)) {
    if (event === "chunk") {
      let item = drafts.get(data.messageId);
      if (!item) drafts.set(data.messageId, item = show("", "agent"));
      item.textContent = (data.reset ? "" : item.textContent) + data.chunk;  // reset: what it showed is void
      item.hidden = !item.textContent;
      $("typing").hidden = true;  // the reply itself shows the agent is writing
      item.scrollIntoView({ block: "end" });
    } else if (event === "done") {
      return data;
    } else if (event === "error") {
      throw new ApiError(response.status, data);
    }
  }
  throw new Error("The connection closed before the reply was complete; reload to see it.");
}

async function sendMessage(text, drafts) {
  try {
    return await streamMessage(text, drafts);
  } catch (error) {
    if (error.status !== 404) throw error;
    await newSession();  // the session expired: start a fresh one and send again
    return await streamMessage(text, drafts);
  }
}

$("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || !sessionId) return;
  $("input").value = "";
  show(text, "user");
  typing(true);
  const drafts = new Map();
  try {
    const result = await sendMessage(text, drafts);
    for (const reply of result.replies) {  // the final text replaces what was shown while it was written
      const item = drafts.get(reply.id);
      if (item) {
        item.textContent = reply.text;
        item.hidden = false;
        drafts.delete(reply.id);
      } else {
        show(reply.text, "agent");
      }
    }
    if (result.warning) show(result.warning.message, "notice");
  } catch (error) {
    show(error.message, "notice");
  } finally {
    for (const item of drafts.values()) item.remove();  // text no final reply kept
    typing(false);
    $("input").focus();
  }
});

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  store.set("apiKey", $("api-key").value.trim());
  $("key-form").hidden = true;
  start();
});

start();
