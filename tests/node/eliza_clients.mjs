// The official elizaOS clients (@elizaos/api-client 1.7.2, socket.io-client 4) against a running parley.
// Run by tests/test_eliza_clients.py: BASE_URL=http://127.0.0.1:PORT API_KEY=... node eliza_clients.mjs
// Prints one line per step; exits 1 naming the step that failed.
import assert from 'node:assert/strict';
import { ApiError, ElizaClient } from '@elizaos/api-client';
import { io } from 'socket.io-client';

const BASE = process.env.BASE_URL;
const KEY = process.env.API_KEY;
const USER = crypto.randomUUID();
const SERVER_ID = '00000000-0000-0000-0000-000000000000';
const ISO_MS = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;
const client = ElizaClient.create({ baseUrl: BASE, apiKey: KEY, timeout: 60_000 });

async function step(name, body) {
  try {
    await body();
    console.log(`ok   ${name}`);
  } catch (error) {
    console.log(`FAIL ${name}: ${error?.stack ?? error}`);
    process.exit(1);
  }
}

function within(promise, what, ms = 30_000) {
  return Promise.race([promise, new Promise((_, fail) => setTimeout(() => fail(new Error(`no ${what}`)), ms))]);
}

// A socket that records every event it receives.
async function connect(auth) {
  const socket = io(BASE, { auth, transports: ['websocket'], reconnection: false });
  socket.seen = [];
  socket.onAny((event, data) => socket.seen.push([event, data]));
  await within(new Promise((ok, fail) => { socket.on('connect', ok); socket.on('connect_error', fail); }), 'connect');
  return socket;
}

function next(socket, event, matches = () => true) {
  return within(new Promise((ok) => {
    const found = socket.seen.find(([name, data]) => name === event && matches(data));
    if (found) return ok(found[1]);
    const listener = (data) => { if (matches(data)) { socket.off(event, listener); ok(data); } };
    socket.on(event, listener);
  }), event);
}

function join(socket, channelId) {
  socket.emit('message', { type: 1, payload: { channelId, roomId: channelId, entityId: USER } });
  return next(socket, 'channel_joined', (d) => d.channelId === channelId);
}

const CLEARED = 'All agent memories cleared successfully';
// Every table but the knowledge index's fragments (this bot has no knowledge documents either).
const TABLES = ['messages', 'facts', 'documents', 'descriptions', 'custom'];

let agentId;
let session;
let socketChannel;

function apiError(code, status, message) {
  return (e) => e instanceof ApiError && e.code === code && e.status === status
    && (message === undefined || e.message === message);
}

await step('server: ping, hello, health, status', async () => {
  assert.equal((await client.server.ping()).pong, true);
  assert.equal((await client.server.hello()).message, 'Hello World!');
  assert.equal((await client.server.checkHealth()).status, 'OK');
  assert.equal((await client.server.getStatus()).agentCount, 1);
});

await step('agents: list, get (character fields at top level, status)', async () => {
  const { agents } = await client.agents.listAgents();
  assert.equal(agents.length, 1);
  agentId = agents[0].id;
  assert.equal(agents[0].status, 'active');
  const agent = await client.agents.getAgent(agentId);
  assert.equal(agent.id, agentId);
  assert.equal(agent.name, agents[0].name);
  assert.ok(Array.isArray(agent.bio) && agent.bio.length > 0);
  assert.equal(agent.status, 'active');
  assert.equal(agent.secrets, undefined);
});

await step('agents: an unknown id is NOT_FOUND (404), a malformed one INVALID_ID (400)', async () => {
  await assert.rejects(client.agents.getAgent(crypto.randomUUID()), apiError('NOT_FOUND', 404, 'Agent not found'));
  await assert.rejects(client.agents.getAgent('bad'), apiError('INVALID_ID', 400));
  await assert.rejects(client.memory.getAgentMemories('bad'), apiError('INVALID_ID', 400));
});

await step('agents: startAgent finds it active; createAgent and stopping the only agent are NOT_SUPPORTED (409)', async () => {
  const { agents } = await client.agents.listAgents();
  assert.deepEqual(await client.agents.startAgent(agentId), { id: agentId, name: agents[0].name, status: 'active' });
  await assert.rejects(client.agents.createAgent({ characterJson: { name: 'Echo2' } }),
    (e) => apiError('NOT_SUPPORTED', 409)(e) && /^parley runs the characters it was started with /.test(e.message));
  await assert.rejects(client.agents.stopAgent(agentId),
    (e) => apiError('NOT_SUPPORTED', 409)(e) && /^parley runs one agent, its character, for the life of the process: /.test(e.message));
  assert.equal((await client.agents.getAgent(agentId)).status, 'active');
});

await step('auth: a wrong key is refused', async () => {
  const wrong = ElizaClient.create({ baseUrl: BASE, apiKey: `${KEY}-wrong` });
  await assert.rejects(wrong.agents.listAgents(), (e) => e instanceof ApiError && e.status === 401);
});

await step('sessions: health, create, get, list', async () => {
  assert.equal((await client.sessions.checkHealth()).status, 'healthy');
  session = await client.sessions.createSession({ agentId, userId: USER, metadata: { platform: 'node' } });
  assert.ok(session.sessionId && session.channelId);
  assert.match(session.createdAt, ISO_MS);
  const info = await client.sessions.getSession(session.sessionId);
  assert.equal(info.sessionId, session.sessionId);
  assert.equal(typeof info.timeRemaining, 'number');
  const listed = await client.sessions.listSessions();
  assert.ok(listed.sessions.some((s) => s.sessionId === session.sessionId));
});

await step('sessions: sendMessageSync returns the reply', async () => {
  const answer = await client.sessions.sendMessageSync(session.sessionId, { content: 'hello over http' });
  assert.equal(answer.userMessage.content, 'hello over http');
  assert.ok(answer.agentResponse.text.length > 0);
  assert.equal(typeof answer.sessionStatus.wasRenewed, 'boolean');
});

await step('sessions: sendMessage (websocket transport) replies in the session channel', async () => {
  const socket = await connect({ entityId: USER, apiKey: KEY });
  await join(socket, session.channelId);
  const answer = await client.sessions.sendMessage(session.sessionId, { content: 'hello over the socket' });
  assert.equal(answer.userMessage.content, 'hello over the socket');
  const reply = await next(socket, 'messageBroadcast', (m) => m.senderId === agentId);
  assert.equal(reply.roomId, session.channelId);
  assert.ok(reply.text.length > 0);
  socket.close();
});

await step('sessions: getMessages with limit, before and after', async () => {
  const all = await client.sessions.getMessages(session.sessionId, { limit: 50 });
  assert.equal(all.messages.length, 4);
  assert.equal(all.hasMore, false);
  for (const message of all.messages) {
    assert.match(message.createdAt, ISO_MS);
    assert.equal(typeof message.metadata, 'object');
  }
  const newest = await client.sessions.getMessages(session.sessionId, { limit: 2 });
  assert.equal(newest.messages.length, 2);
  assert.equal(newest.hasMore, true);
  const older = await client.sessions.getMessages(session.sessionId, { before: newest.messages[1].createdAt });
  assert.deepEqual(older.messages.map((m) => m.id), all.messages.slice(2).map((m) => m.id));
  const newer = await client.sessions.getMessages(session.sessionId, { after: new Date(older.messages[0].createdAt) });
  assert.deepEqual(newer.messages.map((m) => m.id), all.messages.slice(0, 2).map((m) => m.id));
});

await step('sessions: renew and heartbeat (no client method: plain HTTP)', async () => {
  for (const what of ['renew', 'heartbeat']) {
    const response = await fetch(`${BASE}/api/messaging/sessions/${session.sessionId}/${what}`, {
      method: 'POST', headers: { 'X-API-KEY': KEY },
    });
    assert.equal(response.status, 200, what);
    assert.equal((await response.json()).sessionId, session.sessionId);
  }
});

await step('memory: agent memories, room memories, rooms, create and get a room', async () => {
  const { memories } = await client.memory.getAgentMemories(agentId);
  assert.ok(memories.some((m) => m.content.text === 'hello over http'));
  const inRoom = await client.memory.getRoomMemories(agentId, session.channelId, { limit: 50 });
  assert.ok(inRoom.memories.some((m) => m.content.text === 'hello over the socket'));
  const { rooms } = await client.memory.listAgentRooms(agentId);
  assert.ok(rooms.length > 0);
  const room = await client.memory.createRoom(agentId, { name: 'made by the node client' });
  assert.equal((await client.memory.getRoom(agentId, room.id)).name, 'made by the node client');
});

await step('memory: update and delete a memory', async () => {
  const { memories } = await client.memory.getAgentMemories(agentId);
  const target = memories.find((m) => m.content.text === 'hello over http');
  const updated = await client.memory.updateMemory(agentId, target.id, { metadata: { note: 'edited' } });
  assert.equal(updated.id, target.id);
  await client.memory.deleteMemory(agentId, target.id);
  const after = await client.memory.getAgentMemories(agentId);
  assert.ok(!after.memories.some((m) => m.id === target.id));
});

await step('memory: the AgentInternalMemory aliases read, update and delete', async () => {
  const read = async () => (await client.memory.getAgentInternalMemories(agentId, session.channelId, true)).memories;
  const target = (await read()).find((m) => m.content.text === 'hello over the socket');
  const updated = await client.memory.updateAgentInternalMemory(agentId, target.id, { metadata: { note: 'alias' } });
  assert.deepEqual(updated, { id: target.id, message: 'Memory updated successfully' });
  assert.deepEqual((await read()).find((m) => m.id === target.id).metadata.client, { note: 'alias' });
  const deleted = await client.memory.deleteAgentInternalMemory(agentId, target.id);
  assert.deepEqual(deleted, { message: 'Memory deleted successfully' });
  assert.ok(!(await read()).some((m) => m.id === target.id));
});

await step('memory: clearRoomMemories empties the session channel', async () => {
  const before = await client.memory.getRoomMemories(agentId, session.channelId, { limit: 50 });
  assert.equal(before.memories.length, 2); // the sync exchange's reply and the socket exchange's reply
  assert.deepEqual(await client.memory.clearRoomMemories(agentId, session.channelId), { success: true });
  assert.deepEqual(await client.memory.getRoomMemories(agentId, session.channelId), { memories: [] });
});

await step('sessions: delete', async () => {
  const ended = await client.sessions.deleteSession(session.sessionId);
  assert.equal(ended.success, true);
  await assert.rejects(client.sessions.getSession(session.sessionId), (e) => e instanceof ApiError && e.status === 404);
});

await step('socket.io: refused without the key or without an entityId', async () => {
  await assert.rejects(connect({ entityId: USER, apiKey: 'wrong' }), /Invalid or missing API Key/);
  await assert.rejects(connect({ apiKey: KEY }), /Valid entityId required/);
});

await step('socket.io: join, send, ack, stream chunks, reply to both tabs', async () => {
  const channelId = crypto.randomUUID();
  socketChannel = channelId;
  const tab = await connect({ entityId: USER, apiKey: KEY });
  const secondTab = await connect({ entityId: USER, apiKey: KEY });
  const joined = await join(tab, channelId);
  assert.equal(joined.roomId, channelId);
  await next(tab, 'room_joined');
  await join(secondTab, channelId);
  const clientMessageId = crypto.randomUUID();
  tab.emit('message', { type: 2, payload: {
    senderId: USER, senderName: 'Node', message: 'tell me a story', channelId, roomId: channelId,
    messageServerId: SERVER_ID, messageId: clientMessageId, source: 'client_chat', attachments: [],
    metadata: { isDm: true, channelType: 'DM', targetUserId: agentId },
  } });
  const echo = await next(tab, 'messageBroadcast', (m) => m.clientMessageId === clientMessageId);
  assert.equal(echo.text, 'tell me a story');
  const ack = await next(tab, 'messageAck');
  assert.equal(ack.clientMessageId, clientMessageId);
  assert.equal(ack.messageId, echo.id);
  const seenByOther = await next(secondTab, 'messageBroadcast', (m) => m.senderId === USER);
  assert.equal(seenByOther.text, 'tell me a story');
  for (const socket of [tab, secondTab]) {
    const reply = await next(socket, 'messageBroadcast', (m) => m.senderId === agentId);
    assert.equal(reply.roomId, channelId);
    const chunks = socket.seen.filter(([e, d]) => e === 'messageStreamChunk' && d.messageId === reply.id);
    assert.ok(chunks.length > 1, `${chunks.length} stream chunks`);
    assert.equal(chunks.map(([, d]) => d.chunk).join(''), reply.text);
  }
  tab.close();
  secondTab.close();
});

await step('memory: deleteAllAgentInternalMemories empties the socket channel', async () => {
  const { memories } = await client.memory.getAgentInternalMemories(agentId, socketChannel);
  assert.deepEqual(memories.map((m) => m.entityId === agentId), [true, false]); // the reply, then the message
  assert.equal(memories[1].content.text, 'tell me a story');
  assert.deepEqual(await client.memory.deleteAllAgentInternalMemories(agentId, socketChannel), { success: true });
  assert.deepEqual(await client.memory.getAgentInternalMemories(agentId, socketChannel), { memories: [] });
});

// Last: it empties what the steps before read.
await step('memory: clearAgentMemories deletes every memory of the agent', async () => {
  const fresh = await client.sessions.createSession({ agentId, userId: USER });
  await client.sessions.sendMessageSync(fresh.sessionId, { content: 'remember this' });
  const { memories } = await client.memory.getAgentMemories(agentId);
  assert.deepEqual(memories.map((m) => m.entityId === agentId), [true, false]); // all that the steps above left
  assert.equal(memories[1].content.text, 'remember this');
  let left = 0;
  for (const tableName of TABLES) {
    left += (await client.memory.getAgentMemories(agentId, { tableName, limit: 1000 })).memories.length;
  }
  assert.deepEqual(await client.memory.clearAgentMemories(agentId), { deleted: left, message: CLEARED });
  for (const tableName of TABLES) {
    assert.deepEqual(await client.memory.getAgentMemories(agentId, { tableName }), { memories: [] }, tableName);
  }
  assert.deepEqual(await client.memory.clearAgentMemories(agentId), { deleted: 0, message: CLEARED });
});

console.log('ALL OK');
process.exit(0);
