// The protocol soak's node-postgres clients: a seeded random mix of simple and parameterized
// statements, transactions with and without errors, errors outside transactions, large
// results, cancels (query_timeout) and disconnects until the time is up. Every request has a
// deadline; one not answered in time, or ending unexpectedly, is printed as `FAIL …`.
// Usage: node soak_node.js URL SECONDS SEED CLIENTS DEADLINE
'use strict';
const { Client } = require('pg');

const [url, seconds, seed, clients, deadline] = process.argv.slice(2);
const END = Date.now() + Number(seconds) * 1000;
const DEADLINE_MS = Number(deadline) * 1000;
let requests = 0;
let failed = false;

// mulberry32: a small seeded generator, so a run can be repeated.
function rng(s) {
  let a = s >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function withDeadline(p, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer in ${DEADLINE_MS} ms: ${what}`)), DEADLINE_MS);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

async function expectCode(p, code, what) {
  try {
    await p;
  } catch (e) {
    if (e.code === code) return;
    throw new Error(`${what}: ${e.message} (${e.code}), expected ${code}`);
  }
  throw new Error(`${what}: succeeded, expected ${code}`);
}

const OPS = ['simple', 'params', 'write', 'read', 'tx', 'tx-error', 'error', 'large', 'cancel', 'disconnect'];
const WEIGHTS = [10, 10, 10, 10, 8, 6, 6, 2, 2, 2];

function pick(r) {
  const total = WEIGHTS.reduce((a, b) => a + b, 0);
  let n = Math.floor(r() * total);
  for (let i = 0; i < OPS.length; i++) {
    if (n < WEIGHTS[i]) return OPS[i];
    n -= WEIGHTS[i];
  }
  return 'simple';
}

async function op(c, name, key) {
  switch (name) {
    case 'simple':
      await c.query('select 1; select 2');
      break;
    case 'params': {
      const r = await c.query('select $1::int8 as v, $2::text as t', [key, 'x']);
      if (String(r.rows[0].v) !== String(key)) throw new Error('params: wrong value');
      break;
    }
    case 'write':
      await c.query(
        'insert into users (user_id, name) values ($1, $2) on conflict (user_id) do update set name = excluded.name',
        [key, 'node']);
      break;
    case 'read':
      await c.query('select name from users where user_id = $1', [key]);
      break;
    case 'tx':
      await c.query('begin');
      await c.query('select name from users where user_id = $1', [key]);
      await c.query('commit');
      break;
    case 'tx-error':
      await c.query('begin');
      await expectCode(c.query('select 1/0'), '22012', 'error in transaction');
      await expectCode(c.query('select 1'), '25P02', 'statement in failed transaction');
      await c.query('rollback');
      break;
    case 'error':
      await expectCode(c.query('select $1::int / 0', [key]), '22012', 'error outside transaction');
      await c.query('select 1');
      break;
    case 'large': {
      const r = await c.query('select g, md5(g::text) from generate_series(1, 10000) g');
      if (r.rows.length !== 10000) throw new Error('large: wrong row count');
      break;
    }
    default:
      throw new Error(`unknown op ${name}`);
  }
}

async function client(n) {
  const r = rng(Number(seed) * 4000 + n);
  let c = null;
  while (Date.now() < END && !failed) {
    if (c === null) {
      c = new Client({ connectionString: url });
      c.on('error', () => {});
      await withDeadline(c.connect(), 'connect');
    }
    const name = pick(r);
    const key = 1 + Math.floor(r() * 2000);
    try {
      if (name === 'disconnect') {
        c.query('select pg_sleep(1)').catch(() => {});
        await new Promise((res) => setTimeout(res, 50));
        c.connection.stream.destroy();
        c = null;
      } else if (name === 'cancel') {
        // query_timeout makes node-postgres give up on the statement and end the connection.
        const q = c.query({ text: 'select pg_sleep(3)', query_timeout: 100 });
        await expectCode(q.catch((e) => { if (/timeout/i.test(e.message)) { e.code = 'TIMEOUT'; } throw e; }), 'TIMEOUT', 'query_timeout');
        c.end().catch(() => {});
        c = null;
      } else {
        await withDeadline(op(c, name, key), name);
      }
      requests++;
    } catch (e) {
      console.log(`FAIL node-postgres ${name}: ${e.message}`);
      failed = true;
      return;
    }
  }
  if (c !== null) await c.end();
}

(async () => {
  const all = [];
  for (let i = 0; i < Number(clients); i++) all.push(client(i));
  await Promise.all(all);
  console.log(`REQUESTS node-postgres ${requests}`);
  process.exit(failed ? 1 : 0);
})().catch((e) => {
  console.log(`FAIL node-postgres: ${e.message}`);
  process.exit(1);
});
