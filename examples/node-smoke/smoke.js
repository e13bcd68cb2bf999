// node-postgres smoke test through the pgsidecar proxy: simple and extended queries, a named
// prepared statement, a transaction, an error with its SQLSTATE, LISTEN/NOTIFY and a small pool.
// DATABASE_URL points at the proxy. Prints one JSON line with the number of queries run.
'use strict';
const { Client, Pool } = require('pg');

async function main() {
  const url = process.env.DATABASE_URL;
  if (!url) throw new Error('DATABASE_URL is not set');
  let queries = 0;
  const q = async (c, ...args) => { queries++; return c.query(...args); };
  const expect = (cond, what) => { if (!cond) throw new Error('check failed: ' + what); };

  const c = new Client({ connectionString: url });
  await c.connect();
  expect((await q(c, 'select 1 as one')).rows[0].one === 1, 'simple query');
  expect((await q(c, 'select $1::int + 1 as n', [41])).rows[0].n === 42, 'extended query');
  for (let i = 0; i < 2; i++) {
    const r = await q(c, { name: 'by_id', text: 'select $1::text as v', values: ['v' + i] });
    expect(r.rows[0].v === 'v' + i, 'named prepared statement');
  }
  await q(c, 'create temporary table smoke (id int primary key)');
  await q(c, 'begin');
  await q(c, 'insert into smoke values ($1)', [1]);
  await q(c, 'commit');
  let code = '';
  try { await q(c, 'select 1/0'); } catch (e) { code = e.code; }
  expect(code === '22012', 'division by zero gives 22012, got ' + code);
  expect((await q(c, 'select count(*)::int as n from smoke')).rows[0].n === 1, 'committed row');

  const got = new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('no notification')), 10000);
    c.on('notification', (m) => { clearTimeout(t); resolve(m); });
  });
  await q(c, 'listen smoke_chan');
  await q(c, "select pg_notify('smoke_chan', 'hi')");
  const m = await got;
  expect(m.channel === 'smoke_chan' && m.payload === 'hi', 'notification');
  await c.end();

  const pool = new Pool({ connectionString: url, max: 3 });
  const rs = await Promise.all([1, 2, 3, 4, 5, 6].map((i) => q(pool, 'select $1::int as i', [i])));
  expect(rs.every((r, k) => r.rows[0].i === k + 1), 'pool queries');
  await pool.end();
  console.log(JSON.stringify({ ok: true, queries }));
}

main().catch((e) => { console.error(e.message); process.exit(1); });
