// A smpp-bridge client for Node.js 18+, standard library only (node:crypto, node:http, fetch).
// Written from the README's "HTTP API" section and docs/signing-example.md alone, as a
// customer's developer would: copy this file into your project. tour.mjs shows every call.
import crypto from 'node:crypto';
import http from 'node:http';

const ALGORITHM = 'BRIDGE-HMAC-SHA256';
const sha256hex = (data) => crypto.createHash('sha256').update(data).digest('hex');
// The HMAC key is the secret's UTF-8 bytes as printed: it looks like base64 but is not decoded.
const hmacHex = (secret, data) =>
  crypto.createHmac('sha256', Buffer.from(secret, 'utf8')).update(data).digest('hex');

/** RFC 3986 encoding of raw bytes: only A-Z a-z 0-9 - _ . ~ stay bare, upper-case hex. */
function encodeBytes(bytes) {
  let out = '';
  for (const b of bytes) {
    const bare = (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) ||
      b === 0x2d || b === 0x5f || b === 0x2e || b === 0x7e;
    out += bare ? String.fromCharCode(b) : '%' + b.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

/** Percent-decode once to bytes: `+` stays a plus; a `%` without two hex digits stays `%`. */
function decodeOnce(text) {
  const src = Buffer.from(text, 'utf8');
  const out = [];
  for (let i = 0; i < src.length; i++) {
    const hex = i + 2 < src.length ? String.fromCharCode(src[i + 1], src[i + 2]) : '';
    if (src[i] === 0x25 && /^[0-9A-Fa-f]{2}$/.test(hex)) {
      out.push(parseInt(hex, 16));
      i += 2;
    } else {
      out.push(src[i]);
    }
  }
  return Buffer.from(out);
}

export function canonicalUri(path) {
  if (!path) return '/';
  return path.split('/').map((segment) => encodeBytes(decodeOnce(segment))).join('/');
}

/** From the raw query string (never a parsed view: that has turned `+` into a space). */
export function canonicalQuery(rawQuery) {
  if (!rawQuery) return '';
  const pairs = [];
  for (const part of rawQuery.split('&')) {
    if (part === '') continue; // a=1&&b=2, a trailing &
    const eq = part.indexOf('=');
    const name = eq < 0 ? part : part.slice(0, eq);
    const value = eq < 0 ? '' : part.slice(eq + 1);
    pairs.push([encodeBytes(decodeOnce(name)), encodeBytes(decodeOnce(value))]);
  }
  // Byte order of the encoded (ASCII) strings: plain < and > on JS strings is that order here.
  pairs.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
  return pairs.map(([n, v]) => `${n}=${v}`).join('&');
}

/** X-Bridge-Date: UTC, whole seconds, `Z` (toISOString has milliseconds: refused). */
export const bridgeDate = (ms = Date.now()) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
/** 16-64 characters of A-Z a-z 0-9 _ -, new for every request (a retry too). */
export const newNonce = () => crypto.randomBytes(24).toString('base64url');

/**
 * The headers to add to a request. `headers` are those the request will carry: Content-Type and
 * Idempotency-Key among them are signed (they must be when sent), as are host and the three
 * X-Bridge-* headers. `host` is the Host header as it will be sent (URL.host: port included,
 * default ports left out, as fetch and node:http send it).
 */
export function signRequest({ method, url, headers = {}, body = Buffer.alloc(0), appKey, appSecret,
  date = bridgeDate(), nonce = newNonce() }) {
  const u = new URL(url);
  const bodyHash = sha256hex(body);
  const added = { 'X-Bridge-Date': date, 'X-Bridge-Nonce': nonce, 'X-Bridge-Content-SHA256': bodyHash };
  const signed = { host: u.host };
  for (const [name, value] of Object.entries({ ...headers, ...added })) {
    const lower = name.toLowerCase();
    if (lower === 'content-type' || lower === 'idempotency-key' || lower.startsWith('x-bridge-')) {
      signed[lower] = String(value).trim();
    }
  }
  const names = Object.keys(signed).sort();
  const canonical = [
    method.toUpperCase(),
    canonicalUri(u.pathname),
    canonicalQuery(u.search.slice(1)),
    names.map((n) => `${n}:${signed[n]}\n`).join(''),
    names.join(';'),
    bodyHash,
  ].join('\n');
  const toSign = [ALGORITHM, date, sha256hex(Buffer.from(canonical, 'utf8'))].join('\n');
  const signature = hmacHex(appSecret, toSign);
  return {
    ...added,
    Authorization: `${ALGORITHM} Credential=${appKey},SignedHeaders=${names.join(';')},Signature=${signature}`,
  };
}

/** A refusal: the error body's code, message and request id, and the HTTP status. */
export class BridgeError extends Error {
  constructor(status, code, message, requestId, details) {
    super(`${status} ${code}: ${message}`);
    Object.assign(this, { status, code, requestId, details });
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const RETRIED_STATUSES = new Set([429, 502, 503, 504]);

export class BridgeClient {
  constructor(baseUrl, appKey, appSecret, { maxRetries = 3, maxRetryDelayS = 10 } = {}) {
    Object.assign(this, { baseUrl: baseUrl.replace(/\/$/, ''), appKey, appSecret, maxRetries, maxRetryDelayS });
  }

  /**
   * One signed call; `path` may carry a query, signed as sent (escape `+` as `%2B` yourself, or
   * build it with `query()`). Returns {status, headers, body (Buffer), json}; throws BridgeError on
   * 4xx/5xx unless `raw`. Retries, each time with a fresh date, nonce and signature, only what
   * cannot act twice: a GET, or a write carrying an Idempotency-Key.
   */
  async request(method, path, { json, body, headers = {}, idempotencyKey, raw = false } = {}) {
    const url = this.baseUrl + path;
    const payload = body ?? (json === undefined ? Buffer.alloc(0) : Buffer.from(JSON.stringify(json), 'utf8'));
    const sent = { ...headers };
    // Always name the type of a body: fetch adds `text/plain;charset=UTF-8` to a string body,
    // unsigned (401). A Buffer body gets none from fetch.
    if (json !== undefined) sent['Content-Type'] = 'application/json';
    if (idempotencyKey !== undefined) sent['Idempotency-Key'] = idempotencyKey;
    const retryable = method === 'GET' || idempotencyKey !== undefined;
    for (let attempt = 0; ; attempt++) {
      const signedHeaders = signRequest({ method, url, headers: sent, body: payload, appKey: this.appKey, appSecret: this.appSecret });
      let res;
      try {
        res = await fetch(url, { method, headers: { ...sent, ...signedHeaders }, body: payload.length ? payload : undefined, redirect: 'manual' });
      } catch (err) {
        if (retryable && attempt < this.maxRetries) { await sleep(200 * 2 ** attempt); continue; }
        throw err;
      }
      const buf = Buffer.from(await res.arrayBuffer());
      const after = Number(res.headers.get('retry-after') ?? '1');
      // 409 IDEMPOTENCY_IN_PROGRESS (with Retry-After): the first request with the key still runs.
      const again = RETRIED_STATUSES.has(res.status) || (res.status === 409 && idempotencyKey !== undefined && res.headers.has('retry-after'));
      if (retryable && attempt < this.maxRetries && again && after <= this.maxRetryDelayS) {
        await sleep(after * 1000);
        continue;
      }
      let parsed = null;
      if ((res.headers.get('content-type') ?? '').startsWith('application/json')) parsed = JSON.parse(buf.toString('utf8'));
      const out = { status: res.status, headers: res.headers, body: buf, json: parsed };
      if (res.status >= 400 && !raw) {
        const e = parsed?.error;
        throw new BridgeError(res.status, e?.code ?? `HTTP_${res.status}`, e?.message ?? buf.toString('utf8').slice(0, 200), e?.request_id ?? res.headers.get('x-request-id'), e?.details ?? null);
      }
      return out;
    }
  }

  /** `{to, text}` or `{to, sign_name, template, params}`; the key makes a retry safe. */
  async send(message, idempotencyKey = crypto.randomUUID()) {
    return (await this.request('POST', '/v1/messages', { json: message, idempotencyKey })).json;
  }
  async message(id) { return (await this.request('GET', `/v1/messages/${encodeURIComponent(id)}`)).json; }
  async messages(filters = {}) { return (await this.request('GET', '/v1/messages' + query(filters))).json; }
  async balance() { return (await this.request('GET', '/v1/balance')).json; }
  async ledger(filters = {}) { return (await this.request('GET', '/v1/ledger' + query(filters))).json; }
  /** The month's CDRs as CSV text. */
  async cdrs(month) { return (await this.request('GET', '/v1/cdrs' + query({ month }))).body.toString('utf8'); }
}

/** `?a=1&b=2` from an object, RFC 3986 escapes (`+` as `%2B`, a space as `%20`, never `+`). */
export function query(params) {
  const parts = Object.entries(params).filter(([, v]) => v !== undefined && v !== null)
    .map(([k, v]) => `${encodeBytes(Buffer.from(k, 'utf8'))}=${encodeBytes(Buffer.from(String(v), 'utf8'))}`);
  return parts.length ? '?' + parts.join('&') : '';
}

/**
 * Verify X-Bridge-Signature: `t=<unix s>,v1=<hex>[,v1=<hex>]` (two v1 during a secret rotation),
 * v1 = hex HMAC-SHA256(webhook secret's UTF-8 bytes, `${t}.` + raw body bytes).
 */
export function verifyWebhookSignature(secret, rawBody, header, nowS = Math.floor(Date.now() / 1000), toleranceS = 300) {
  if (!header) return false;
  let t = null;
  const candidates = [];
  for (const part of header.split(',')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    const key = part.slice(0, eq).trim();
    const value = part.slice(eq + 1).trim();
    if (key === 't') t = value;
    else if (key === 'v1') candidates.push(value);
  }
  if (t === null || !/^\d+$/.test(t) || Math.abs(nowS - Number(t)) > toleranceS) return false;
  const expected = Buffer.from(hmacHex(secret, Buffer.concat([Buffer.from(`${t}.`, 'ascii'), rawBody])), 'ascii');
  let matched = false;
  for (const candidate of candidates) {
    const got = Buffer.from(candidate, 'utf8');
    matched = (got.length === expected.length && crypto.timingSafeEqual(got, expected)) || matched;
  }
  return matched;
}

/**
 * A webhook receiver: verifies each POST's signature on the raw body, answers 401 when it does
 * not verify (the gateway dead-letters a 4xx other than 408 and 429), and hands each report
 * to `onReport` once, de-duplicated on its `webhook_id` (a retry or a regrouped POST repeats it).
 * Keep `seen` in your database in production; here it is memory.
 */
export function webhookReceiver({ secret, onReport, seen = new Set() }) {
  return http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', async () => {
      const raw = Buffer.concat(chunks);
      if (req.method !== 'POST' || !verifyWebhookSignature(secret, raw, req.headers['x-bridge-signature'])) {
        res.writeHead(401).end();
        return;
      }
      try {
        for (const report of JSON.parse(raw.toString('utf8'))) {
          if (seen.has(report.webhook_id)) continue;
          await onReport(report, req.headers);
          seen.add(report.webhook_id); // only once handled: a failure before this is retried
        }
        res.writeHead(204).end();
      } catch (err) {
        res.writeHead(500).end(); // retried by the gateway (1 min, 5 min, ...)
      }
    });
  });
}
