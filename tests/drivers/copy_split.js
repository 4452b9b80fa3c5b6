// COPY into a sharded table through shardgate with node-postgres and pg-copy-streams
// (CSV, streamed in small chunks), then COPY TO of every shard's rows back.
//
// Usage: node copy_split.js POSTGRES_URL   (with `pg` and `pg-copy-streams` resolvable)
'use strict';

const assert = require('assert');
const { Readable } = require('stream');
const { pipeline } = require('stream/promises');
const { Client } = require('pg');
const { from: copyFrom, to: copyTo } = require('pg-copy-streams');

const N = 3000;

async function main() {
  const client = new Client({ connectionString: process.argv[2] });
  await client.connect();
  const lines = [];
  for (let i = 0; i < N; i++) {
    lines.push(`${4000000 + i},${i % 313},"node, ""csv"" ${i}"\n`);
  }
  const ingest = client.query(copyFrom('COPY orders (order_id, user_id, note) FROM STDIN (FORMAT csv)'));
  await pipeline(Readable.from(lines), ingest);
  assert.strictEqual(ingest.rowCount, N, `rows copied: ${ingest.rowCount}`);

  const res = await client.query('select count(*)::int as n from orders where order_id >= 4000000 and order_id < 5000000');
  assert.strictEqual(res.rows[0].n, N);

  let out = '';
  const stream = client.query(copyTo('COPY (select order_id from orders where order_id >= 4000000 and order_id < 5000000) TO STDOUT'));
  for await (const chunk of stream) {
    out += chunk.toString();
  }
  assert.strictEqual(out.split('\n').filter((l) => l.length > 0).length, N);
  await client.end();
  console.log('OK copy-split-node');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
