// The scripted amqplib programs (edge): a Node.js consumer on amqplib (amqp-node), logging what it
// did as the same JSON lines as the Python programs (program.py).
//
// Run as `node client_amqplib.js NAME PARAMS_JSON` with amqplib on NODE_PATH (the runner points it
// at the venv's node/node_modules, which `make venv` fills with npm). PARAMS_JSON is the one the
// Python programs get: url, publish_url, queue, events (the log path), heartbeat, work, messages,
// idle_first.
//
// amqplib (lib/heartbeat.js) starts its heartbeat timers once Connection.Open-Ok arrives: every T/2
// it sends a heartbeat if nothing was sent since the last check (a heartbeat counts as sent, so an
// idle connection beats every T), and every T it checks for received bytes, giving up after two
// silent checks. Both are timers on Node's event loop, as is the socket reader: a consume callback
// that blocks synchronously (Atomics.wait here, or a busy loop) stops all three. One that awaits
// its work (a timer promise) leaves them running.
//
// The publisher is a second, short amqplib connection (the broker's heartbeat proposal, closed
// normally).
//
// TLS runs (PARAMS_JSON's `tls`: ca, version, server_hostname): every connection is amqps with the
// test CA, the server name and, when set, one pinned version, as socket options amqplib hands to
// tls.connect. The runner starts node with --tls-keylog=FILE, so Node writes the secrets itself.
'use strict';

const fs = require('node:fs');
const path = require('node:path');

let amqplib;
try {
  amqplib = require('amqplib');
} catch (err) {
  process.stderr.write(`amqplib is not installed (NODE_PATH=${process.env.NODE_PATH || ''}): ${err.message}\n`);
  process.exit(3);
}
// The package's folder: its main file sits at the top (package.json is outside its "exports").
const AMQPLIB_DIR = path.dirname(require.resolve('amqplib'));
const VERSION = JSON.parse(fs.readFileSync(path.join(AMQPLIB_DIR, 'package.json'), 'utf8')).version;
const LIBRARY = 'amqplib';

let LOG = null; // the event log's path (main sets it)

function emit(event, fields = {}) {
  const record = {t: Date.now() / 1000, source: 'client', event, ...fields};
  fs.appendFileSync(LOG, `${JSON.stringify(record)}\n`); // synchronous: the line survives a kill
}

function logException(err) {
  emit('exception', {
    type: err && err.constructor ? err.constructor.name : typeof err,
    name: (err && (err.code || err.name)) || String(err), // ECONNRESET, EPIPE, ... or the class name
    text: err && err.message !== undefined ? err.message : String(err),
    cause: err && err.cause ? String(err.cause) : null,
    where: err && err.stack ? (err.stack.split('\n')[1] || '').trim() : null,
  });
}

function endpoint(ip, port) {
  return ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;
}

// The broker's Connection.Tune proposal is not kept by amqplib: its frames are read through
// Connection.prototype.recvFrame (lib/connection.js, a private path outside the package's
// exports, loaded by file name so it is the module amqplib itself uses). null when it moved.
const TUNE = {};
try {
  const {Connection} = require(path.join(AMQPLIB_DIR, 'lib', 'connection.js'));
  const defs = require(path.join(AMQPLIB_DIR, 'lib', 'defs.js'));
  const recvFrame = Connection.prototype.recvFrame;
  Connection.prototype.recvFrame = function recordingRecvFrame() {
    const frame = recvFrame.call(this);
    if (frame && frame.id === defs.ConnectionTune) TUNE.serverHeartbeat = frame.fields.heartbeat;
    return frame;
  };
} catch (_err) {
  // a version without these internals: server_heartbeat is logged as null
}

let TLS = null; // the run's TLS settings (main sets them), null: plain TCP

function socketOptions() {
  if (!TLS) return {};
  const version = TLS.version ? `TLSv${TLS.version}` : undefined;
  return {ca: [fs.readFileSync(TLS.ca)], servername: TLS.server_hostname, minVersion: version, maxVersion: version};
}

async function connect(url, role, heartbeat) {
  const u = new URL(url);
  const options = {
    protocol: TLS ? 'amqps' : 'amqp',
    hostname: u.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: Number(u.port) || (TLS ? 5671 : 5672),
    username: decodeURIComponent(u.username || 'guest'),
    password: decodeURIComponent(u.password || 'guest'),
    vhost: decodeURIComponent(u.pathname.slice(1)) || '/',
  };
  if (heartbeat !== null) options.heartbeat = heartbeat; // absent: amqplib takes the broker's value
  delete TUNE.serverHeartbeat;
  const conn = await amqplib.connect(options, socketOptions());
  const c = conn.connection;
  const sock = c.stream;
  const local = endpoint(sock.localAddress, sock.localPort);
  const remote = endpoint(sock.remoteAddress, sock.remotePort);
  const tls = TLS ? {tls: {version: sock.getProtocol(), cipher: sock.getCipher().name}} : {};
  emit('connected', {
    role, connection: `${local}->${remote}`, local, remote, library: LIBRARY, library_version: VERSION,
    server_heartbeat: TUNE.serverHeartbeat === undefined ? null : TUNE.serverHeartbeat,
    heartbeat: c.heartbeat, frame_max: c.frameMax, channel_max: c.channelMax, ...tls,
  });
  return conn;
}

async function declare(ch, queue) {
  await ch.assertQueue(queue, {durable: false, exclusive: false, autoDelete: false, arguments: {'x-expires': 60000}});
}

async function publish(p, count) {
  const conn = await connect(p.publish_url, 'publisher', null);
  const ch = await conn.createChannel();
  await declare(ch, p.queue);
  for (let i = 0; i < count; i++) ch.sendToQueue(p.queue, Buffer.from(`message ${i + 1} of ${count}`));
  emit('published', {role: 'publisher', messages: count});
  // The channel first: its Close queues behind the publishes. conn.close() alone sends
  // Connection.Close at once, ahead of publishes still in the channel's buffer, which the broker
  // then drops.
  await ch.close();
  await conn.close(); // Connection.Close 200 "Cheers, thanks"
  emit('closed', {role: 'publisher', how: 'connection.close'});
}

function sleep(seconds) {
  return new Promise((resolve) => setTimeout(resolve, seconds * 1000));
}

function blockSynchronously(seconds) {
  // The thread sleeps; the event loop (timers, socket reads) with it.
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, seconds * 1000);
}

// Consume `messages` messages with `work` seconds of work each, then close the connection.
// blocked (healthy=false): the callback blocks synchronously for `work` s; healthy: it awaits a
// timer. The consumer starts once the publisher connection has closed: the publisher runs on the
// same event loop, so a callback blocking earlier would hold its close back too. The run ends
// when every message is acked, or rejects with the first connection or channel error (amqplib
// emits them as 'error' events; an ack is written even after the broker's reset, so the error
// may come only afterwards).
async function consumer(p, healthy) {
  const conn = await connect(p.url, 'consumer', p.heartbeat);
  let fail;
  const failed = new Promise((_resolve, reject) => {
    fail = reject;
  });
  failed.catch(() => {}); // handled by the race below, even when it rejects before the race starts
  const onError = (err) => fail(err);
  conn.on('error', onError);
  conn.on('close', (err) => fail(err || new Error('connection closed')));
  const ch = await conn.createChannel();
  ch.on('error', onError);
  await declare(ch, p.queue);
  await ch.prefetch(1);
  let acked = 0;
  let done;
  const allAcked = new Promise((resolve) => {
    done = resolve;
  });
  if (p.idle_first) {
    await sleep(p.idle_first);
    emit('idled', {seconds: p.idle_first});
  }
  if (p.messages) await publish(p, p.messages);
  else done();
  emit('consuming', {role: 'consumer', queue: p.queue}); // before: the callback may run before consume-ok is seen
  await ch.consume(p.queue, async (msg) => {
    const tag = msg.fields.deliveryTag;
    emit('message', {delivery_tag: tag, bytes: msg.content.length});
    emit('callback_start', {delivery_tag: tag});
    if (healthy) await sleep(p.work);
    else blockSynchronously(p.work);
    emit('callback_end', {delivery_tag: tag});
    ch.ack(msg);
    emit('ack', {delivery_tag: tag});
    acked += 1;
    if (acked >= p.messages) done();
  });
  await Promise.race([allAcked, failed]);
  // One more turn of the event loop: a reset the ack's write met shows up as an 'error' event.
  await Promise.race([sleep(0.05), failed]);
  emit('finished');
  conn.removeAllListeners('close');
  await Promise.race([conn.close(), failed]);
  emit('closed', {role: 'consumer', how: 'connection.close'});
}

const SCENARIOS = {
  'amqplib-blocked-handler': (p) => consumer(p, false),
  'amqplib-healthy': (p) => consumer(p, true),
};

async function main(argv) {
  const [name, json] = argv;
  const params = JSON.parse(json);
  LOG = params.events;
  TLS = params.tls || null;
  emit('start', {scenario: name, pid: process.pid, library: LIBRARY, version: VERSION, node: process.version});
  try {
    await SCENARIOS[name](params);
  } catch (err) {
    logException(err);
    emit('exit', {status: 1});
    return 1;
  }
  emit('exit', {status: 0});
  return 0;
}

main(process.argv.slice(2)).then((status) => {
  process.exitCode = status;
  // Timers of a connection torn down under amqplib may still be armed: do not wait for them.
  setImmediate(() => process.exit(status));
});
