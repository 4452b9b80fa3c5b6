// node-postgres (pg) through shardgate (transaction mode, small pool).
//
// Usage: node node_pg_test.js POSTGRES_URL   (with `pg` resolvable, e.g. NODE_PATH)
// Exits non-zero with a message on the first failure; prints `OK node-postgres` at the end.
// node-postgres has no built-in COPY (that is the separate pg-copy-streams package): no COPY here.
'use strict';

const assert = require('assert');
const { Client, Pool } = require('pg');

const URL = process.argv[2];
const TABLE = 'node_items';

function step(name) {
  console.log(`-- ${name}`);
}

async function connect() {
  const c = new Client({ connectionString: URL });
  await c.connect();
  return c;
}

async function expectError(promise, code, what) {
  try {
    await promise;
  } catch (e) {
    assert.strictEqual(e.code, code, `${what}: SQLSTATE ${e.code} (${e.message}), want ${code}`);
    return;
  }
  assert.fail(`${what}: no error, want SQLSTATE ${code}`);
}

// Whether the server connection running this transaction holds a protocol-level prepared
// statement whose text contains `marker` (the proxy renames statements; look at the text).
async function serverHasStatement(c, marker) {
  const r = await c.query(
    'select count(*)::int as n from pg_prepared_statements where statement like $1 and not from_sql',
    [`%${marker}%`],
  );
  return r.rows[0].n > 0;
}

async function typesRoundTrip(c) {
  step('parameterized queries with types');
  const u = '1b4e28ba-2d7b-4b5e-9a3f-0b7c2d9e8f10';
  const ts = new Date('2024-05-06T07:08:09.123Z');
  const doc = { a: 1, b: [true, null, 'x'], c: { d: 1.5 } };
  const r = await c.query(
    'select $1::int as i, $2::text as t, $3::bytea as b, $4::numeric as n, $5::timestamptz as ts,' +
      ' $6::uuid as u, $7::json as j, $8::jsonb as jb, $9::int as nul, $10::int[] as ia,' +
      ' $11::text[] as ta, $12::int8 as big',
    [42, "héllo 'quoted' \"x\"", Buffer.from([0, 1, 255, 98]), '12345678901234567890.123456789',
      ts, u, JSON.stringify(doc), doc, null, [1, 2, null, 4], ['a', 'b c', null], '1099511627776'],
  );
  const row = r.rows[0];
  assert.strictEqual(row.i, 42);
  assert.strictEqual(row.t, "héllo 'quoted' \"x\"");
  assert.deepStrictEqual(row.b, Buffer.from([0, 1, 255, 98]));
  assert.strictEqual(row.n, '12345678901234567890.123456789');
  assert.strictEqual(row.ts.getTime(), ts.getTime());
  assert.strictEqual(row.u, u);
  assert.deepStrictEqual(row.j, doc);
  assert.deepStrictEqual(row.jb, doc);
  assert.strictEqual(row.nul, null);
  assert.deepStrictEqual(row.ia, [1, 2, null, 4]);
  assert.deepStrictEqual(row.ta, ['a', 'b c', null]);
  assert.strictEqual(row.big, '1099511627776');
  // Simple protocol (no parameters) with several statements in one query string.
  const multi = await c.query('select 1 as a; select 2 as b');
  assert.strictEqual(multi.length, 2);
  assert.strictEqual(multi[1].rows[0].b, 2);
}

async function repeatedStatement(c) {
  step('named statement repeated 20 times');
  const text = 'select $1::int * 2 as node_rep, $2::text as t';
  for (let i = 0; i < 20; i++) {
    const r = await c.query({ name: 'q1', text, values: [i, `v${i}`] });
    assert.deepStrictEqual(r.rows[0], { node_rep: i * 2, t: `v${i}` }, `repeat ${i}`);
  }
  await c.query('begin');
  const r = await c.query({ name: 'q1', text, values: [21, 'x'] });
  assert.strictEqual(r.rows[0].node_rep, 42);
  assert.ok(await serverHasStatement(c, 'node_rep'), 'q1 is not prepared on the server connection');
  await c.query('commit');
  step('plain parameterized query repeated 20 times');
  for (let i = 0; i < 20; i++) {
    const p = await c.query('select $1::text || $2::text as s', ['a', String(i)]);
    assert.strictEqual(p.rows[0].s, `a${i}`);
  }
  // Binary results for a named statement.
  const b = await c.query({ name: 'qbin', text: 'select $1::int4 + 1 as v', values: [1], binary: true });
  assert.strictEqual(b.rows[0].v, 2);
  // Row mode arrays.
  const a = await c.query({ name: 'qarr', text: 'select 1 as x, 2 as y', rowMode: 'array' });
  assert.deepStrictEqual(a.rows, [[1, 2]]);
}

async function tableSetup(c) {
  step('create table');
  await c.query(`drop table if exists ${TABLE}`);
  await c.query(
    `create table ${TABLE} (id int primary key, name text, amount numeric, at timestamptz)`,
  );
}

async function transactions(c) {
  step('transaction commit and rollback');
  const ins = { name: 'ins', text: `insert into ${TABLE} (id, name) values ($1, $2)` };
  await c.query('begin');
  await c.query({ ...ins, values: [1, 'committed'] });
  await c.query({ ...ins, values: [2, 'committed'] });
  await c.query('commit');
  await c.query('begin');
  await c.query({ ...ins, values: [3, 'rolled back'] });
  await c.query('rollback');
  const r = await c.query(`select id from ${TABLE} order by id`);
  assert.deepStrictEqual(r.rows.map((x) => x.id), [1, 2]);
}

async function errors(c) {
  step('error then recovery');
  await expectError(c.query('select 1/0'), '22012', 'division by zero (simple)');
  assert.strictEqual((await c.query('select $1::int + 1 as v', [1])).rows[0].v, 2);
  await expectError(c.query('select * from no_such_table_xyz where id = $1', [1]), '42P01',
    'unknown table (extended)');
  await expectError(c.query({ name: 'bad', text: 'select * from no_such_table_xyz' }), '42P01',
    'unknown table (named)');
  assert.strictEqual((await c.query({ name: 'q1', text: 'select $1::int * 2 as node_rep, $2::text as t', values: [2, 'y'] })).rows[0].node_rep, 4);
  await expectError(c.query('select $1::int', ['not an int']), '22P02', 'bad parameter');
  assert.strictEqual((await c.query('select $1::int as v', [5])).rows[0].v, 5);

  step('error inside a transaction, rollback, continue');
  const ins = { name: 'ins', text: `insert into ${TABLE} (id, name) values ($1, $2)` };
  await c.query('begin');
  await c.query({ ...ins, values: [10, 'in tx'] });
  await expectError(c.query({ ...ins, values: [10, 'duplicate'] }), '23505', 'duplicate key');
  await expectError(c.query('select 1'), '25P02', 'statement in an aborted transaction');
  await c.query('rollback');
  const n = await c.query(`select count(*)::int as n from ${TABLE} where id = 10`);
  assert.strictEqual(n.rows[0].n, 0, 'rolled back row');
  await c.query('begin');
  await c.query({ ...ins, values: [11, 'outer'] });
  await c.query('savepoint sp');
  await expectError(c.query({ ...ins, values: [11, 'dup'] }), '23505', 'duplicate in savepoint');
  await c.query('rollback to savepoint sp');
  await c.query('commit');
  const s = await c.query(`select name from ${TABLE} where id = 11`);
  assert.strictEqual(s.rows[0].name, 'outer', 'savepoint');
}

async function concurrency() {
  step('20 concurrent clients (Promise.all)');
  const worker = async (n) => {
    const c = await connect();
    try {
      for (let j = 0; j < 5; j++) {
        // The same statement name in every client, for a different text in each.
        const own = await c.query({ name: 'mine', text: `select $1::int + ${n} as v`, values: [j] });
        assert.strictEqual(own.rows[0].v, j + n, 'per-client statement');
        const key = 1000 + n * 100 + j;
        await c.query('begin');
        await c.query({
          name: 'wins',
          text: `insert into ${TABLE} (id, name, amount, at) values ($1, $2, $3, now())`,
          values: [key, `w${n}`, j],
        });
        const r = await c.query({ name: 'wsel', text: `select name from ${TABLE} where id = $1`, values: [key] });
        assert.strictEqual(r.rows[0].name, `w${n}`, 'read own write');
        const m = await c.query('select $1::int * 3 as v', [n]);
        assert.strictEqual(m.rows[0].v, n * 3);
        await c.query('commit');
      }
    } finally {
      await c.end();
    }
  };
  const results = await Promise.allSettled(Array.from({ length: 20 }, (_, n) => worker(n)));
  const failed = results
    .map((r, n) => (r.status === 'rejected' ? `worker ${n}: ${r.reason && r.reason.stack}` : null))
    .filter(Boolean);
  if (failed.length) throw new Error(`concurrent workers failed:\n${failed.join('\n')}`);

  step('pg.Pool of 10, 40 queries');
  const pool = new Pool({ connectionString: URL, max: 10 });
  try {
    const got = await Promise.all(
      Array.from({ length: 40 }, (_, n) =>
        pool.query({ name: 'poolq', text: 'select $1::int as v', values: [n] }).then((r) => r.rows[0].v),
      ),
    );
    assert.deepStrictEqual(got, Array.from({ length: 40 }, (_, n) => n));
  } finally {
    await pool.end();
  }
  const c = await connect();
  try {
    const r = await c.query(`select count(*)::int as n from ${TABLE} where id >= 1000`);
    assert.strictEqual(r.rows[0].n, 100, 'rows from concurrent workers');
  } finally {
    await c.end();
  }
}

async function main() {
  if (!URL) {
    console.error('usage: node node_pg_test.js POSTGRES_URL');
    process.exit(2);
  }
  console.log(`pg ${require('pg/package.json').version}`);
  const c = await connect();
  try {
    step('connect');
    assert.strictEqual((await c.query('select 1 as one')).rows[0].one, 1);
    await typesRoundTrip(c);
    await repeatedStatement(c);
    await tableSetup(c);
    await transactions(c);
    await errors(c);
  } finally {
    await c.end();
  }
  await concurrency();
  console.log('OK node-postgres');
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  console.log('FAILED node-postgres');
  process.exit(1);
});
