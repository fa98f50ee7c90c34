// The web chat: talks to the agent through the Sessions API. No build step, no dependencies.
// WEB_CHAT=public: a visitor holds no key; the server's HttpOnly cookie scopes it to its own sessions.
// WEB_CHAT=admin: the page asks for the server's API key and keeps it in this browser only.
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

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  const key = publicChat ? null : store.get("apiKey");
  if (key) headers["Authorization"] = "Bearer " + key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await response.json().catch(() => null);
  if (response.status === 401 && !publicChat) $("key-form").hidden = false;
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

function show(text, role) {
  const item = document.createElement("li");
  item.className = role;
  item.textContent = text;  // never innerHTML: replies are untrusted text
  $("messages").append(item);
  item.scrollIntoView({ block: "end" });
}

function setStatus(text) { $("status").textContent = text; }

function typing(on) {
  $("typing").hidden = !on;
  $("send").disabled = on;
}

let sessionId = store.get("sessionId");

async function newSession() {
  let userId = store.get("userId");
  if (!userId) {
    userId = "web-" + crypto.randomUUID();
    store.set("userId", userId);
  }
  const session = await api("POST", "/api/sessions", { userId, metadata: { client: "web-chat" } });
  sessionId = session.sessionId;
  store.set("sessionId", sessionId);
}

async function loadHistory() {
  const page = await api("GET", `/api/sessions/${encodeURIComponent(sessionId)}/messages?limit=50`);
  // Tool calls are part of the history for the API; the chat shows only what was said.
  for (const message of page.messages.reverse()) {
    if (!message.toolCall) show(message.content, message.isAgent ? "agent" : "user");
  }
}

async function start() {
  try {
    const { name, access } = await api("GET", "/api/web-chat");
    publicChat = access === "public";
    if (publicChat) store.drop("apiKey");  // never send a key a visitor's page has no business holding
    $("agent-name").textContent = name;
    $("typing-name").textContent = name;
    document.title = "Chat with " + name;
    if (sessionId) {
      try { await loadHistory(); } catch (error) { if (error.status !== 404) throw error; sessionId = null; }
    }
    if (!sessionId) await newSession();
    setStatus("");
    $("input").focus();
  } catch (error) {
    setStatus(error.message);
  }
}

async function sendMessage(text) {
  const post = () => api("POST", `/api/sessions/${encodeURIComponent(sessionId)}/messages`, { content: text });
  try {
    return await post();
  } catch (error) {
    if (error.status !== 404) throw error;
    await newSession();  // the session expired: start a fresh one and send again
    return await post();
  }
}

$("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || !sessionId) return;
  $("input").value = "";
  show(text, "user");
  typing(true);
  try {
    const result = await sendMessage(text);
    for (const reply of result.replies) show(reply.text, "agent");
    if (result.warning) show(result.warning.message, "notice");
  } catch (error) {
    show(error.message, "notice");
  } finally {
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
