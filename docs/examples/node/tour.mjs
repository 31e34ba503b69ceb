// A tour of the HTTP API with bridge-client.mjs, against a running daemon:
//   BRIDGE_URL=http://127.0.0.1:8080 CREDENTIALS=data/acme.json WEBHOOK_PORT=8090 node tour.mjs
// CREDENTIALS is what `smpp-bridge account create` printed (app_key, app_secret, webhook_secret),
// the account a raw-text one with CN numbers, some balance, and its status callback URL
// http://127.0.0.1:$WEBHOOK_PORT/hooks (`--callback`). Prints one line per check; exits 1 if any
// failed. With DEDUP_CHECK=1 the receiver answers its first POST 503 after handling it, so the
// gateway posts those reports again (after webhooks.retry_schedule_s[0], 60 s by default).
import crypto from 'node:crypto';
import fs from 'node:fs';
import {
  BridgeClient, BridgeError, query, signRequest, verifyWebhookSignature, webhookReceiver,
} from './bridge-client.mjs';

const creds = JSON.parse(fs.readFileSync(process.env.CREDENTIALS, 'utf8'));
const BASE = process.env.BRIDGE_URL ?? 'http://127.0.0.1:8080';
const client = new BridgeClient(BASE, creds.app_key, creds.app_secret);
const deadline = Date.now() + Number(process.env.TOUR_TIMEOUT_S ?? 60) * 1000;

let failed = 0;
function check(name, ok, detail) {
  if (!ok) failed++;
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}${ok ? '' : ' :: ' + JSON.stringify(detail)?.slice(0, 600)}`);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const number = () => '+86139' + String(crypto.randomInt(1e8)).padStart(8, '0');
async function refusal(promise) {
  try { await promise; return null; } catch (e) { if (e instanceof BridgeError) return e; throw e; }
}

// 1. The worked examples of docs/signing-example.md, byte for byte.
{
  const body = Buffer.from('{"to":"+8613800138000","sign_name":"Example","template":"SMS_0001","params":{"code":"123456"}}');
  const h = signRequest({
    method: 'POST', url: 'http://127.0.0.1:8080/v1/messages', body,
    headers: { 'Content-Type': 'application/json', 'Idempotency-Key': 'order-0001' },
    appKey: 'AK_example_0001', appSecret: 's3cr3t-example-secret-0123456789abcdef',
    date: '2026-11-29T08:00:00Z', nonce: 'nonce-0000000000000001',
  });
  check('docs: request signature', h.Authorization.endsWith(',Signature=3a7aa201bef821480c422f9f59718e109ad31890d04fbb9560c29ee442fcfde0'), h);
  const wbody = Buffer.from('[{"type":"message.status","message_id":"msg_01M8S0A4Q7XK9D2B6HCW3FZ5RT","batch_id":"bat_01M8S0A4Q7XK9D2B6HCW3FZ5RS","client_ref":"order-0001","to":"+8613800138000","status":"delivered","success":true,"final":true,"error_code":null,"error_text":null,"segments":1,"segments_delivered":1,"billable_units":1,"accepted_at":"2026-11-29T08:00:00.120Z","submitted_at":"2026-11-29T08:00:00.127Z","done_at":"2026-11-29T08:00:03.311Z","receipt_inferred_from":null,"webhook_id":"st_msg_01M8S0A4Q7XK9D2B6HCW3FZ5RT"}]');
  const sig = 't=1795939205,v1=322f5458af6963cadf00cd43f32866e39e7ea8f3808b12315cf58c44aa0edea8';
  check('docs: webhook signature', verifyWebhookSignature('whsec-example-0123456789abcdef', wbody, sig, 1795939205), sig);
  check('docs: webhook signature 301 s late refused', !verifyWebhookSignature('whsec-example-0123456789abcdef', wbody, sig, 1795939205 + 301), sig);
}

// 2. The webhook receiver, up before anything is sent.
const reports = new Map(); // webhook_id -> report
let posts = 0;
let duplicates = 0;
let failFirst = process.env.DEDUP_CHECK === '1';
const seen = new Set();
const receiver = webhookReceiver({
  secret: creds.webhook_secret,
  seen,
  onReport: (report, headers) => {
    const handled = (reports.get(report.webhook_id)?.handled ?? 0) + 1;
    reports.set(report.webhook_id, { report, postId: headers['x-bridge-webhook-id'], handled });
  },
});
receiver.prependListener('request', (req, res) => {
  posts++;
  const before = seen.size;
  res.on('finish', () => { if (res.statusCode === 204 && seen.size === before) duplicates++; });
  if (failFirst) {
    // Handle the reports, then fail the answer: as a receiver that crashed after its commit.
    failFirst = false;
    const end = res.end.bind(res);
    res.writeHead = (status) => { res.statusCode = status === 204 ? 503 : status; return res; };
    res.end = (...a) => { res.setHeader('Retry-After', '1'); return end(...a); };
  }
});
await new Promise((r) => receiver.listen(Number(process.env.WEBHOOK_PORT ?? 8090), '127.0.0.1', r));

// 3. Send one, replay it, conflict with it.
const national = number().slice(3); // 139..., the national form for the account's country CN
const one = { to: national, text: 'Hello from Node.js', client_ref: 'node-1' };
const key = 'node-' + crypto.randomUUID();
const first = await client.request('POST', '/v1/messages', { json: one, idempotencyKey: key });
check('send one: 202, national number read as E.164', first.status === 202 && first.json.count === 1 &&
  first.json.messages[0].to === '+86' + national && first.json.messages[0].status === 'queued', first.json);
const replay = await client.request('POST', '/v1/messages', { json: one, idempotencyKey: key });
check('replay: same status and body, Idempotent-Replayed: true', replay.status === 202 &&
  replay.body.equals(first.body) && replay.headers.get('idempotent-replayed') === 'true', replay.json);
const conflict = await refusal(client.request('POST', '/v1/messages', { json: { ...one, text: 'Other text' }, idempotencyKey: key }));
check('conflicting replay: 422 IDEMPOTENCY_KEY_REUSED', conflict?.status === 422 && conflict.code === 'IDEMPOTENCY_KEY_REUSED', conflict);
const reordered = await refusal(client.request('POST', '/v1/messages', {
  body: Buffer.from(JSON.stringify({ text: one.text, to: one.to, client_ref: one.client_ref })),
  headers: { 'Content-Type': 'application/json' }, idempotencyKey: key,
}));
check('same JSON, other key order: 422 (matched on the body bytes)', reordered?.code === 'IDEMPOTENCY_KEY_REUSED', reordered);
const noKey = await refusal(client.request('POST', '/v1/messages', { json: one }));
check('send without Idempotency-Key: 400 IDEMPOTENCY_KEY_REQUIRED', noKey?.status === 400 && noKey.code === 'IDEMPOTENCY_KEY_REQUIRED', noKey);
const dup = await refusal(client.request('POST', '/v1/messages', {
  body: Buffer.from(`{"to":"${number()}","to":"${number()}","text":"x"}`),
  headers: { 'Content-Type': 'application/json' }, idempotencyKey: 'node-' + crypto.randomUUID(),
}));
check('a key twice in the JSON: 400 DUPLICATE_JSON_KEY', dup?.status === 400 && dup.code === 'DUPLICATE_JSON_KEY', dup);
const wrong = new BridgeClient(BASE, creds.app_key, 'not-the-secret');
const denied = await wrong.request('GET', '/v1/account', { raw: true });
check('a wrong secret: 401 SIGNATURE_MISMATCH, request_id as X-Request-Id', denied.status === 401 &&
  denied.json.error.code === 'SIGNATURE_MISMATCH' && denied.json.error.request_id === denied.headers.get('x-request-id'), denied.json);
const url = BASE + '/v1/account';
const stale = await fetch(url, { headers: signRequest({ method: 'GET', url, appKey: creds.app_key, appSecret: creds.app_secret,
  date: new Date(Date.now() - 600_000).toISOString().replace(/\.\d{3}Z$/, 'Z') }) });
const staleError = (await stale.json()).error;
check('a date 600 s old: 401 REQUEST_EXPIRED naming the server time', stale.status === 401 &&
  staleError.code === 'REQUEST_EXPIRED' && /server time \d{4}-\d\d-\d\dT/.test(staleError.message), staleError);
const firstId = first.json.messages[0].id;

// 4. Send several (one message per recipient, one batch), one of them long and in UCS-2.
const many = [number(), number(), number()];
const batch = await client.send({ to: many, text: '你好 from Node ✓ '.repeat(6) });
check('send several: one batch, a message each', batch.count === 3 && batch.messages.every((m, i) => m.to === many[i]) &&
  batch.messages[0].encoding === 'ucs2' && batch.messages[0].segments === 2, batch);
const ids = [firstId, ...batch.messages.map((m) => m.id)];

// 5. Status and parts, until final.
const finals = new Map();
for (const id of ids) {
  let m;
  do { m = await client.message(id); if (m.status === 'delivered') break; await sleep(100); } while (Date.now() < deadline);
  finals.set(id, m);
}
const long = finals.get(batch.messages[0].id);
check('status: delivered, parts with their states and SMSC ids', [...finals.values()].every((m) => m.status === 'delivered') &&
  long.parts.length === 2 && long.parts.every((p, i) => p.seq === i + 1 && p.status === 'delivered' && p.smsc_message_id), long);
const missing = await refusal(client.message('msg_00000000000000000000000000'));
check('unknown message: 404 NOT_FOUND with request_id', missing?.status === 404 && missing.code === 'NOT_FOUND' && /^req_/.test(missing.requestId), missing);

// 6. Lists, with escapes in the query.
const today = new Date().toISOString().slice(0, 10);
const listed = async (raw) => (await client.request('GET', '/v1/messages' + raw)).json.messages.map((m) => m.id);
let got = await listed(query({ to: many[0], date: today, limit: 10 }));
check('list: to=%2B86..., date, limit', got.length === 1 && got[0] === batch.messages[0].id, got);
got = await listed(`?to=${many[1]}&limit=10`);
check('list: a bare + is a plus (signed as %2B)', got.length === 1 && got[0] === batch.messages[1].id, got);
got = await listed(`?limit=10&&to=%2b${many[2].slice(1)}&`);
check('list: lower-case %2b, empty pairs dropped', got.length === 1 && got[0] === batch.messages[2].id, got);
got = await listed(query({ batch_id: batch.batch_id, status: 'delivered' }));
check('list: batch_id and status', got.length === 3 && got.every((id) => ids.includes(id)), got);
const pages = [];
let cursor = '';
do {
  const page = (await client.request('GET', '/v1/messages' + query({ batch_id: batch.batch_id, limit: 2, cursor }))).json;
  pages.push(page.messages.map((m) => m.id));
  cursor = page.next_cursor;
} while (cursor);
// Newest first: by acceptance time, then id; the messages of one send share their time.
const byIdDesc = batch.messages.map((m) => m.id).sort().reverse();
check('list: pages by next_cursor, newest first', pages.length === 2 && pages.flat().join() === byIdDesc.join(), pages);
let bad = await refusal(client.request('GET', '/v1/messages' + query({ to: '☎ 13900139000' })));
check('list: unicode number: 400 INVALID_NUMBER', bad?.status === 400 && bad.code === 'INVALID_NUMBER', bad);
bad = await refusal(client.request('GET', '/v1/messages' + query({ status: 'délivré' })));
check('list: unicode status: 400 INVALID_FIELD', bad?.code === 'INVALID_FIELD', bad);
bad = await refusal(client.request('GET', '/v1/messages?limit=1&limit=2'));
check('list: a parameter twice: 400 INVALID_FIELD', bad?.code === 'INVALID_FIELD', bad);
bad = await refusal(client.request('GET', '/v1/messages' + query({ colour: 'blue' })));
check('list: an unknown parameter: 400 UNKNOWN_FIELD', bad?.code === 'UNKNOWN_FIELD', bad);
const acct = await client.request('GET', '/v1/account?z=1&%C3%A9=%E2%9C%93&A=a+b&q=100%&e=%E4');
check('a query the endpoint ignores, signed as sent (unicode, +, lone %, non-UTF-8)', acct.status === 200, acct.json);

// 7. Money: balance, ledger, CDRs.
const balance = await client.balance();
check('balance: integers in micro-units', Number.isInteger(balance.cash_micro ?? balance.cash?.micro ?? balance.available_domestic_micro), balance);
const entries = [];
cursor = '';
do {
  const page = await client.ledger({ limit: 2, cursor });
  entries.push(...page.entries);
  cursor = page.next_cursor;
} while (cursor);
check('ledger: every entry by next_cursor, oldest first', entries.length >= 2 && entries.every((e, i) => i === 0 || e.id > entries[i - 1].id), entries.slice(0, 3));
const csv = await client.cdrs(today.slice(0, 7));
const [header, ...rows] = csv.trim().split(/\r?\n/);
check('CDRs: CSV with the README header and our messages', header.split(',')[0] === 'message_id' &&
  ids.every((id) => rows.some((r) => r.startsWith(id + ','))), csv.slice(0, 300));

// 8. Webhooks: one final report per message, verified, de-duplicated on webhook_id.
while (Date.now() < deadline && !ids.every((id) => reports.has(`st_${id}`))) await sleep(100);
for (const id of ids) {
  const r = reports.get(`st_${id}`)?.report;
  check(`webhook: ${id} delivered`, r?.type === 'message.status' && r.status === 'delivered' && r.final === true && r.message_id === id, r);
}
const postIds = [...reports.values()].map((r) => [r.report.webhook_id, r.postId]);
check('webhook: X-Bridge-Webhook-Id is the report\'s, or whb_ for several',
  postIds.every(([id, post]) => post === id || /^whb_[0-9a-f]{32}$/.test(post)), postIds);
if (process.env.DEDUP_CHECK === '1') {
  while (Date.now() < deadline && duplicates === 0) await sleep(100);
  check('webhook: the report posted again after a 503 is handled once', duplicates > 0 &&
    [...reports.values()].every((r) => r.handled === 1), { posts, duplicates });
}
receiver.close();
console.log(`${failed ? 'FAILED' : 'PASSED'}: ${failed} failed; ${posts} webhook POSTs, ${duplicates} of them duplicates only`);
process.exitCode = failed ? 1 : 0;
