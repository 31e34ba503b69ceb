// A BRIDGE-HMAC-SHA256 client written from the README alone (Node 20, standard library only),
// run by tests/integration/test_session34_integrator_review.py against a real server.
// Env: BRIDGE_URL (http://127.0.0.1:PORT), APP_KEY, APP_SECRET. Prints one line per check and
// exits 1 when any failed.
import crypto from 'node:crypto';
import http from 'node:http';

const BASE = process.env.BRIDGE_URL;
const KEY = process.env.APP_KEY;
const SECRET = process.env.APP_SECRET;

const sha256hex = (b) => crypto.createHash('sha256').update(b).digest('hex');
const hmachex = (k, s) => crypto.createHmac('sha256', Buffer.from(k, 'utf8')).update(s).digest('hex');

function rfc3986(bytes) {
  let out = '';
  for (const b of bytes) {
    const c = String.fromCharCode(b);
    out += /[A-Za-z0-9\-_.~]/.test(c) ? c : '%' + b.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}
// Percent-decode once at the byte level; '+' stays '+'; a '%' without two hex digits stays.
function pctDecode(s) {
  const src = Buffer.from(s, 'utf8');
  const out = [];
  for (let i = 0; i < src.length; i++) {
    const hex = String.fromCharCode(src[i + 1] ?? 0, src[i + 2] ?? 0);
    if (src[i] === 0x25 && /^[0-9A-Fa-f]{2}$/.test(hex)) { out.push(parseInt(hex, 16)); i += 2; } else out.push(src[i]);
  }
  return Buffer.from(out);
}
const canonicalUri = (p) => (p ? p.split('/').map((seg) => rfc3986(pctDecode(seg))).join('/') : '/');
function canonicalQuery(raw) {
  if (!raw) return '';
  const pairs = raw.split('&').filter((p) => p !== '').map((p) => {
    const i = p.indexOf('=');
    return [rfc3986(pctDecode(i < 0 ? p : p.slice(0, i))), rfc3986(pctDecode(i < 0 ? '' : p.slice(i + 1)))];
  });
  pairs.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
  return pairs.map(([n, v]) => `${n}=${v}`).join('&');
}
const isoNow = (off = 0) => new Date(Date.now() + off * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
const newNonce = () => crypto.randomBytes(18).toString('base64url');

function sign({ method, url, headers = {}, body = Buffer.alloc(0), key = KEY, secret = SECRET, date, nonce, host }) {
  const u = new URL(url);
  const h = { ...headers, 'X-Bridge-Date': date ?? isoNow(), 'X-Bridge-Nonce': nonce ?? newNonce(), 'X-Bridge-Content-SHA256': sha256hex(body) };
  const signed = { host: host ?? u.host };
  for (const [k, v] of Object.entries(h)) {
    const lk = k.toLowerCase();
    if (['content-type', 'idempotency-key'].includes(lk) || lk.startsWith('x-bridge-')) signed[lk] = String(v).trim();
  }
  const names = Object.keys(signed).sort();
  const canonical = [method, canonicalUri(u.pathname), canonicalQuery(u.search.slice(1)),
    names.map((n) => `${n}:${signed[n]}\n`).join(''), names.join(';'), sha256hex(body)].join('\n');
  const sts = ['BRIDGE-HMAC-SHA256', h['X-Bridge-Date'], sha256hex(Buffer.from(canonical, 'utf8'))].join('\n');
  h.Authorization = `BRIDGE-HMAC-SHA256 Credential=${key},SignedHeaders=${names.join(';')},Signature=${hmachex(secret, sts)}`;
  return h;
}

function send({ method, path, headers, body = Buffer.alloc(0), agent, chunked = false }) {
  return new Promise((resolve, reject) => {
    const u = new URL(BASE + path);
    const req = http.request({ method, host: u.hostname, port: u.port, path: u.pathname + u.search, headers, agent }, (res) => {
      const c = [];
      res.on('data', (d) => c.push(d));
      res.on('end', () => {
        const text = Buffer.concat(c).toString('utf8');
        let json = null;
        try { json = JSON.parse(text); } catch {}
        resolve({ status: res.statusCode, headers: res.headers, json, text });
      });
    });
    req.on('error', reject);
    if (!body.length) return req.end();
    if (chunked) { req.write(body.subarray(0, 7)); setTimeout(() => req.end(body.subarray(7)), 10); return; }
    req.setHeader('Content-Length', body.length);
    req.end(body);
  });
}

async function call(method, path, { json, idem, headers = {}, body, agent, chunked, ...signOpts } = {}) {
  const b = body ?? (json === undefined ? Buffer.alloc(0) : Buffer.from(JSON.stringify(json), 'utf8'));
  const h = { ...headers };
  if (json !== undefined && !Object.keys(h).some((k) => k.toLowerCase() === 'content-type')) h['Content-Type'] = 'application/json';
  if (idem) h['Idempotency-Key'] = idem;
  return send({ method, path, headers: sign({ method, url: BASE + path, headers: h, body: b, ...signOpts }), body: b, agent, chunked });
}

function verifyWebhook(secret, raw, header, now = Math.floor(Date.now() / 1000), tolerance = 300) {
  let t = null;
  const v1 = [];
  for (const part of (header ?? '').split(',')) {
    const i = part.indexOf('=');
    const k = part.slice(0, i).trim();
    if (k === 't') t = part.slice(i + 1).trim();
    else if (k === 'v1') v1.push(part.slice(i + 1).trim());
  }
  if (!t || !/^\d+$/.test(t) || Math.abs(now - Number(t)) > tolerance) return false;
  const want = Buffer.from(hmachex(secret, Buffer.concat([Buffer.from(t + '.'), raw])));
  return v1.some((s) => Buffer.byteLength(s) === want.length && crypto.timingSafeEqual(Buffer.from(s), want));
}

let failed = 0;
const check = (name, ok, detail) => {
  if (!ok) failed++;
  console.log(`${ok ? 'PASS' : 'FAIL'} ${name}${ok ? '' : ' :: ' + JSON.stringify(detail).slice(0, 400)}`);
};
const rnd = () => crypto.randomInt(1e8).toString().padStart(8, '0');
const num = () => '+86138' + rnd();
const code = (r) => r.json?.error?.code;

// The worked examples of docs/signing-example.md
{
  const body = Buffer.from('{"to":"+8613800138000","sign_name":"Example","template":"SMS_0001","params":{"code":"123456"}}');
  const h = sign({ method: 'POST', url: 'http://127.0.0.1:8080/v1/messages', headers: { 'Content-Type': 'application/json', 'Idempotency-Key': 'order-0001' }, body, key: 'AK_example_0001', secret: 's3cr3t-example-secret-0123456789abcdef', date: '2026-11-29T08:00:00Z', nonce: 'nonce-0000000000000001' });
  check('docs request example', h.Authorization.endsWith('Signature=3a7aa201bef821480c422f9f59718e109ad31890d04fbb9560c29ee442fcfde0'), h.Authorization);
  const wb = Buffer.from('[{"type":"message.status","message_id":"msg_01M8S0A4Q7XK9D2B6HCW3FZ5RT","batch_id":"bat_01M8S0A4Q7XK9D2B6HCW3FZ5RS","client_ref":"order-0001","to":"+8613800138000","status":"delivered","success":true,"error_code":null,"error_text":null,"segments":1,"segments_delivered":1,"billable_units":1,"accepted_at":"2026-11-29T08:00:00.120Z","submitted_at":"2026-11-29T08:00:00.127Z","done_at":"2026-11-29T08:00:03.311Z","webhook_id":"st_msg_01M8S0A4Q7XK9D2B6HCW3FZ5RT"}]');
  const sig = 't=1795939205,v1=2bea94659ed8740f9b752e6e73517cb7f1cc96084016e28a2bfa62f0d2f386a5';
  check('docs webhook example', verifyWebhook('whsec-example-0123456789abcdef', wb, sig, 1795939205), sig);
  check('docs webhook example, rotated (two v1)', verifyWebhook('whsec-example-0123456789abcdef', wb, 't=1795939205,v1=' + '0'.repeat(64) + ',' + sig.split(',')[1], 1795939205), sig);
  check('webhook refused out of tolerance', !verifyWebhook('whsec-example-0123456789abcdef', wb, sig, 1795939205 + 301), sig);
}

let r = await call('POST', '/v1/messages', { json: { to: '13800138000', text: 'Hello from node' }, idem: 'n-' + rnd() });
check('send ascii, national number', r.status === 202 && r.json.count === 1, r.json);
const firstId = r.json?.messages?.[0]?.id;
r = await call('POST', '/v1/messages', { json: { to: num(), text: '你好，世界 😀', client_ref: 'ref-中文' }, idem: 'n-' + rnd() });
check('send chinese + emoji', r.status === 202 && r.json.messages[0].encoding === 'ucs2', r.json);
const batchTo = [num(), num(), num()];
r = await call('POST', '/v1/messages', { json: { to: batchTo, text: 'batch' }, idem: 'b-' + rnd() });
check('batch of 3', r.status === 202 && r.json.count === 3, r.json);

{
  const idem = 'idem-' + rnd();
  const body = { to: num(), text: 'idempotent' };
  const a = await call('POST', '/v1/messages', { json: body, idem });
  const b = await call('POST', '/v1/messages', { json: body, idem });
  check('retry with Idempotency-Key replays the 202', a.status === 202 && b.status === 202 && a.text === b.text, [a.text, b.text]);
  const c = await call('POST', '/v1/messages', { json: { ...body, text: 'other' }, idem });
  check('same key, other body -> 422', c.status === 422 && code(c) === 'IDEMPOTENCY_KEY_REUSED', c.json);
  const d = await call('POST', '/v1/messages', { json: body });
  check('no key -> 400', d.status === 400 && code(d) === 'IDEMPOTENCY_KEY_REQUIRED', d.json);
}

r = await call('GET', '/v1/messages/' + firstId);
check('GET status (empty body)', r.status === 200 && r.json.id === firstId, r.json);
const today = new Date().toISOString().slice(0, 10);
r = await call('GET', `/v1/messages?to=${encodeURIComponent(batchTo[0])}&date=${today}&limit=5`);
check('list: to=%2B.., date, limit', r.status === 200 && r.json.messages.length === 1, r.json);
r = await call('GET', `/v1/messages?limit=5&to=${batchTo[1]}`);
check('list: bare + read as plus', r.status === 200 && r.json.messages.length === 1, r.json);
r = await call('GET', `/v1/messages?to=%2b${batchTo[2].slice(1)}&&limit=5&`);
check('list: lower-case escape, empty pairs', r.status === 200 && r.json.messages.length === 1, r.json);
r = await call('GET', '/v1/messages?limit=1&limit=2');
check('list: parameter twice -> 400', r.status === 400 && code(r) === 'INVALID_FIELD', r.json);
r = await call('GET', '/v1/messages?foo=bar');
check('list: unknown parameter -> 400', r.status === 400 && code(r) === 'UNKNOWN_FIELD', r.json);
r = await call('GET', '/v1/account?z=1&%C3%A9=2&A=3&q=100%25&e=%E4&p=a+b');
check('query sorted on the encoded form, odd escapes', r.status === 200, r.json);
r = await call('GET', '/v1/signs/' + encodeURIComponent('阿里 云'));
check('non-ASCII path segment', r.status === 404 && code(r) === 'NOT_FOUND', r.json);

r = await call('GET', '/v1/account', { date: isoNow(-1000) });
check('clock skew -> REQUEST_EXPIRED', r.status === 401 && code(r) === 'REQUEST_EXPIRED', r.json);
r = await call('GET', '/v1/account', { date: new Date().toISOString() });
check('date with milliseconds refused', r.status === 401 && code(r) === 'SIGNATURE_MISMATCH', r.json);
{
  const nonce = newNonce();
  const a = await call('GET', '/v1/account', { nonce, secret: 'wrong' });
  const b = await call('GET', '/v1/account', { nonce });
  const c = await call('GET', '/v1/account', { nonce });
  check('wrong secret, then nonce still usable, then reused', code(a) === 'SIGNATURE_MISMATCH' && b.status === 200 && code(c) === 'NONCE_REUSED', [a.json, b.status, c.json]);
}
r = await call('POST', '/v1/messages', { json: { to: num(), text: 'charset' }, idem: 'cs-' + rnd(), headers: { 'Content-Type': 'application/json; charset=utf-8' } });
check('Content-Type with charset=utf-8', r.status === 202, r.json);
r = await call('POST', '/v1/messages', { json: { to: num(), text: 'chunked 分块' }, idem: 'ch-' + rnd(), chunked: true });
check('chunked request body', r.status === 202, r.json);
{
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const s = [];
  s.push((await call('POST', '/v1/messages', { agent, json: { to: num(), text: 'ka' }, idem: 'ka-' + rnd() })).status);
  s.push((await call('GET', '/v1/account', { agent, secret: 'bad' })).status);
  s.push((await call('POST', '/v1/messages', { agent, body: Buffer.from('x'.repeat(5000)), headers: { 'Content-Type': 'text/plain' }, idem: 'ka-' + rnd() })).status);
  s.push((await call('GET', '/v1/account', { agent })).status);
  check('keep-alive through refusals', s.join() === '202,401,415,200', s);
  agent.destroy();
}
{
  const b = Buffer.from(JSON.stringify({ to: num(), text: 'case' }));
  for (const f of [(k) => k.toLowerCase(), (k) => k.toUpperCase()]) {
    const h = sign({ method: 'POST', url: BASE + '/v1/messages', headers: { 'content-type': 'application/json', 'IDEMPOTENCY-KEY': 'hc-' + rnd() }, body: b });
    const x = await send({ method: 'POST', path: '/v1/messages', headers: Object.fromEntries(Object.entries(h).map(([k, v]) => [f(k), v])), body: b });
    check(`header names ${f('Ab')}`, x.status === 202, x.json);
  }
}
{
  const b = Buffer.from(JSON.stringify({ to: num(), text: 'via fetch ✓' }));
  const h = sign({ method: 'POST', url: BASE + '/v1/messages', headers: { 'Content-Type': 'application/json', 'Idempotency-Key': 'f-' + rnd() }, body: b });
  const x = await fetch(BASE + '/v1/messages', { method: 'POST', headers: h, body: b });
  check('fetch()', x.status === 202, await x.text());
}
process.exitCode = failed ? 1 : 0;
