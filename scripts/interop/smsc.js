#!/usr/bin/env node
// An SMSC written with node-smpp (https://github.com/farhadi/node-smpp), an SMPP 3.4
// implementation independent of ours, for tests/e2e/test_interop_node_smpp.py.
//
// Why: the bridge's codec and its simulator (bridge/sim/) come from one reading of SMPP 3.4, so a
// misreading both share would never show in our own tests. This SMSC parses what the daemon
// sends with node-smpp's code and builds what it answers with it.
//
//   node smsc.js --port P --log FILE [--system-id S --password W ...]
//
// It writes one JSON object per line to FILE for every PDU it decoded or sent ({"dir": "in" |
// "out", "session": n, "command": ..., fields as node-smpp parsed them; buffers as hex}) and for
// its own events ({"event": ...}). Commands come as JSON lines on stdin:
//   {"cmd": "mo", "source": "+86...", "dest": "...", "text": "...", "coding": "gsm" | "ucs2" | "latin1",
//    "system_id": "...", "payload": false,         a deliver_sm (MO) on a receiving session; the
//    "udh": "050003...", "sar": [ref, total, seq], text in message_payload, or after a UDH
//    "pdu": "deliver_sm" | "data_sm"}              (hex, UDHL first), or with sar_* TLVs; or
//                                                  a data_sm (the text in message_payload)
//   {"cmd": "throttle", "count": n}                the next n submit_sm: ESME_RTHROTTLED
//   {"cmd": "syserr", "count": n}                  the next n submit_sm: ESME_RSYSERR
//   {"cmd": "nack", "count": n}                    the next n submit_sm: generic_nack (RSYSERR)
//   {"cmd": "outcome", "stat": "UNDELIV", "err": "001", "state": 5, "network_error": "030001"}
//                                                  the next receipt's stat, err, message_state
//                                                  and network_error_code (hex, optional)
//   {"cmd": "enquire_link"}                        an enquire_link on every bound session
//   {"cmd": "drop", "system_id": "..."}            close that system_id's sessions' sockets
//   {"cmd": "unbind", "system_id": "..."}          an unbind on that system_id's sessions
//   {"cmd": "unknown_command"}                     a PDU with an undefined command_id (0x00000100)
// Settings per system_id come from --accounts, a JSON object {system_id: {password,
// id_format: "hex" | "dec", receipt_text_id: "same" | "dec", receipts_as: "both" | "text" |
// "tlv", receipt_pdu: "deliver_sm" | "data_sm", receipt_dates: "minutes" | "seconds",
// answer_jitter_ms: n (each submit_sm_resp after a random 0..n ms: out of order)}}.
'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');

const smpp = require(process.env.NODE_SMPP_PATH ||
	path.join(__dirname, 'node_modules', 'smpp'));

// Keep each PDU's octets as they came (node-smpp keeps only its parse), for the log: a field
// node-smpp turns into a value (a time into a Date) can then be read as sent too.
smpp.PDU.fromStream = function(stream, commandLength) {
	const body = stream.read(commandLength - 4);
	if (!body) return false;
	const head = Buffer.alloc(4);
	head.writeUInt32BE(commandLength, 0);
	const raw = Buffer.concat([head, body]);
	const pdu = new smpp.PDU(raw);
	Object.defineProperty(pdu, 'raw', {value: raw, enumerable: false});
	return pdu;
};

function arg(name, fallback) {
	const i = process.argv.indexOf('--' + name);
	return i >= 0 ? process.argv[i + 1] : fallback;
}

const port = Number(arg('port', '2775'));
const logPath = arg('log', 'smsc.jsonl');
const accounts = JSON.parse(arg('accounts', '{}'));
const receiptDelayMs = Number(arg('receipt-delay-ms', '20'));
const log = fs.openSync(logPath, 'a');

function plain(value) {
	// JSON-friendly copy of a parsed field: buffers as hex, dates as ISO text.
	if (Buffer.isBuffer(value)) return {hex: value.toString('hex')};
	if (value instanceof Date) return {date: value.toISOString()};
	if (Array.isArray(value)) return value.map(plain);
	if (value && typeof value === 'object') {
		const out = {};
		for (const k of Object.keys(value)) out[k] = plain(value[k]);
		return out;
	}
	return value;
}

function write(record) {
	fs.writeSync(log, JSON.stringify(record) + '\n');
}

function logPdu(dir, session, pdu) {
	const record = {dir, session: session.n, system_id: session.system_id || null, t: Date.now()};
	for (const k of Object.keys(pdu)) {
		if (k === 'command_length') continue;
		record[k] = plain(pdu[k]);
	}
	if (pdu.raw) record.raw = pdu.raw.toString('hex');
	write(record);
}

let sessionCount = 0;
let nextId = 0x1000;
let throttleNext = 0;
let syserrNext = 0;
let nackNext = 0;
const outcomes = [];  // the next receipts' outcomes, oldest first: {stat, err, state}
const sessions = new Set();

function canReceive(session) {
	return session.mode === 'transceiver' || session.mode === 'receiver';
}

function receiverFor(systemId) {
	for (const s of sessions) {
		if (s.system_id === systemId && s.bound && canReceive(s)) return s;
	}
	return null;
}

function stamp(d, seconds) {
	// YYMMDDhhmm, as SMPP 3.4 Appendix B writes the receipt's dates; YYMMDDhhmmss as many SMSCs do.
	const p = (n) => String(n).padStart(2, '0');
	return p(d.getUTCFullYear() % 100) + p(d.getUTCMonth() + 1) + p(d.getUTCDate()) +
		p(d.getUTCHours()) + p(d.getUTCMinutes()) + (seconds ? p(d.getUTCSeconds()) : '');
}

function send(session, command, options) {
	const pdu = new smpp.PDU(command, options);
	session.send(pdu);
	logPdu('out', session, pdu);
	return pdu;
}

function respond(session, pdu, options) {
	const resp = pdu.response(options || {});
	session.send(resp);
	logPdu('out', session, resp);
}

function receipt(systemId, messageId, textId, submitted, sm, outcome) {
	const session = receiverFor(systemId);
	if (!session) {
		write({event: 'no_receiver', system_id: systemId, message_id: messageId});
		return;
	}
	const settings = accounts[systemId] || {};
	const as = settings.receipts_as || 'both';
	const text = typeof sm === 'string' ? sm : '';
	const seconds = settings.receipt_dates === 'seconds';
	const delivered = outcome.stat === 'DELIVRD' ? '001' : '000';
	const body = 'id:' + textId + ' sub:001 dlvrd:' + delivered + ' submit date:' +
		stamp(submitted, seconds) + ' done date:' + stamp(new Date(), seconds) + ' stat:' +
		outcome.stat + ' err:' + outcome.err + ' text:' +
		text.slice(0, 20).replace(/[^\x20-\x7e]/g, '.');
	const options = {
		source_addr_ton: 1, source_addr_npi: 1, source_addr: '',
		dest_addr_ton: 0, dest_addr_npi: 0, destination_addr: '',
		esm_class: smpp.ESM_CLASS.MC_DELIVERY_RECEIPT,
		data_coding: 0,
		short_message: as === 'tlv' ? '' : body,
	};
	if (settings.receipt_pdu === 'data_sm') {
		// data_sm carries no short_message: the receipt is its TLVs alone.
		delete options.short_message;
		delete options.protocol_id;
		options.receipted_message_id = messageId;
		options.message_state = outcome.state;
		if (outcome.network_error) options.network_error_code = Buffer.from(outcome.network_error, 'hex');
		send(session, 'data_sm', options);
		return;
	}
	if (as !== 'text') {
		options.receipted_message_id = messageId;
		options.message_state = outcome.state;
		if (outcome.network_error) options.network_error_code = Buffer.from(outcome.network_error, 'hex');
	}
	send(session, 'deliver_sm', options);
}

function onSubmit(session, pdu) {
	if (throttleNext > 0) {
		throttleNext--;
		respond(session, pdu, {command_status: smpp.ESME_RTHROTTLED});
		return;
	}
	if (nackNext > 0) {
		// A generic_nack in place of the submit_sm_resp (SMPP 3.4 4.3: same sequence number).
		nackNext--;
		send(session, 'generic_nack', {command_status: smpp.ESME_RSYSERR,
			sequence_number: pdu.sequence_number});
		return;
	}
	if (syserrNext > 0) {
		syserrNext--;
		respond(session, pdu, {command_status: smpp.ESME_RSYSERR});
		return;
	}
	const settings = accounts[session.system_id] || {};
	const n = nextId++;
	const messageId = settings.id_format === 'dec' ? String(n) : n.toString(16);
	const textId = settings.receipt_text_id === 'dec' ? String(n) : messageId;
	if (settings.answer_jitter_ms) {
		// Answers out of order: each after its own random delay.
		setTimeout(() => respond(session, pdu, {message_id: messageId}),
			Math.random() * settings.answer_jitter_ms);
	} else {
		respond(session, pdu, {message_id: messageId});
	}
	const sm = pdu.short_message && pdu.short_message.message;
	if (pdu.registered_delivery & 0x03) {
		const submitted = new Date();
		const outcome = outcomes.shift() ||
			{stat: 'DELIVRD', err: '000', state: smpp.MESSAGE_STATE.DELIVERED};
		setTimeout(() => receipt(session.system_id, messageId, textId, submitted, sm, outcome),
			receiptDelayMs);
	}
}

function onBind(session, pdu, mode) {
	const settings = accounts[pdu.system_id];
	if (!settings || (settings.password !== undefined && settings.password !== pdu.password)) {
		respond(session, pdu, {command_status: smpp.ESME_RBINDFAIL});
		return;
	}
	session.system_id = pdu.system_id;
	session.mode = mode;
	session.bound = true;
	respond(session, pdu, {system_id: 'node-smsc', sc_interface_version: 0x34});
	write({event: 'bound', session: session.n, system_id: pdu.system_id, mode});
}

const server = smpp.createServer((session) => {
	session.n = ++sessionCount;
	sessions.add(session);
	write({event: 'connect', session: session.n});
	session.on('pdu', (pdu) => logPdu('in', session, pdu));
	session.on('bind_transceiver', (pdu) => onBind(session, pdu, 'transceiver'));
	session.on('bind_transmitter', (pdu) => onBind(session, pdu, 'transmitter'));
	session.on('bind_receiver', (pdu) => onBind(session, pdu, 'receiver'));
	session.on('submit_sm', (pdu) => {
		if (!session.bound || session.mode === 'receiver') {
			respond(session, pdu, {command_status: smpp.ESME_RINVBNDSTS});
			return;
		}
		onSubmit(session, pdu);
	});
	session.on('enquire_link', (pdu) => respond(session, pdu));
	session.on('unbind', (pdu) => {
		session.bound = false;
		respond(session, pdu);
		setTimeout(() => session.close(), 50);
	});
	session.on('unknown', (pdu) => respond(session, pdu));
	session.on('close', () => {
		sessions.delete(session);
		write({event: 'close', session: session.n, system_id: session.system_id || null});
	});
	session.on('error', (e) => write({event: 'error', session: session.n, error: String(e)}));
});

function onCommand(line) {
	let c;
	try {
		c = JSON.parse(line);
	} catch (e) {
		write({event: 'bad_command', line});
		return;
	}
	write({event: 'command', command: c});
	if (c.cmd === 'throttle') throttleNext += c.count || 1;
	else if (c.cmd === 'syserr') syserrNext += c.count || 1;
	else if (c.cmd === 'nack') nackNext += c.count || 1;
	else if (c.cmd === 'outcome') outcomes.push(c);
	else if (c.cmd === 'mo') {
		const session = receiverFor(c.system_id);
		if (!session) {
			write({event: 'no_receiver', system_id: c.system_id});
			return;
		}
		const options = {
			source_addr_ton: 1, source_addr_npi: 1, source_addr: c.source.replace(/^\+/, ''),
			dest_addr_ton: 0, dest_addr_npi: 0, destination_addr: c.dest,
			esm_class: 0,
			data_coding: {ucs2: smpp.ENCODING.UCS2, latin1: smpp.ENCODING.LATIN1}[c.coding] ||
				smpp.ENCODING.SMSC_DEFAULT,
		};
		if (c.pdu === 'data_sm') {
			options.message_payload = c.text;
			send(session, 'data_sm', options);
			return;
		}
		if (c.payload) {
			options.short_message = '';
			options.message_payload = c.text;
		} else if (c.udh) {
			// node-smpp puts the UDH (UDHL first) before the encoded text and sets UDHI.
			options.short_message = {udh: Buffer.from(c.udh, 'hex'), message: c.text};
		} else {
			options.short_message = c.text;
		}
		if (c.sar) {
			[options.sar_msg_ref_num, options.sar_total_segments, options.sar_segment_seqnum] =
				c.sar;
		}
		send(session, 'deliver_sm', options);
	} else if (c.cmd === 'enquire_link') {
		for (const s of sessions) if (s.bound) send(s, 'enquire_link', {});
	} else if (c.cmd === 'drop') {
		for (const s of sessions) if (s.system_id === c.system_id) s.destroy();
	} else if (c.cmd === 'unbind') {
		for (const s of sessions) if (s.system_id === c.system_id && s.bound) send(s, 'unbind', {});
	} else if (c.cmd === 'unknown_command') {
		for (const s of sessions) {
			if (!s.bound) continue;
			const raw = Buffer.alloc(16);
			raw.writeUInt32BE(16, 0);
			raw.writeUInt32BE(0x00000100, 4);
			raw.writeUInt32BE(0, 8);
			raw.writeUInt32BE(0x7000 + s.n, 12);
			s.socket.write(raw);
			write({dir: 'out', session: s.n, system_id: s.system_id, command: 'unknown',
				command_id: 0x100, sequence_number: 0x7000 + s.n, t: Date.now()});
		}
	} else {
		write({event: 'bad_command', line});
	}
}

readline.createInterface({input: process.stdin}).on('line', onCommand);
process.stdin.on('end', () => {
	server.close();
	for (const s of sessions) s.destroy();
	setTimeout(() => process.exit(0), 100);
});

server.listen(port, '127.0.0.1', () => {
	write({event: 'listening', port});
	process.stdout.write('listening ' + port + '\n');
});
