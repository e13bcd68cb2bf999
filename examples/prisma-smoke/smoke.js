// Prisma ORM smoke test through the pgsidecar proxy, the way a point-of-sale app uses it: creates
// its tables (schema prisma_smoke, dropped first), then create, findMany with a filter, $queryRaw
// and sales as interactive transactions: one commits, one throws (out of stock) and rolls back,
// one reuses a receipt number and fails with P2002 (SQLSTATE 23505); then a duplicate product
// outside a transaction fails with P2002 too.
// DATABASE_URL points at the proxy; run `npm run generate` first. Prints one JSON line: the
// statements node-postgres sent (what the proxy should have measured), their BEGIN, COMMIT and
// ROLLBACK counts, and how many statements Prisma's query log showed.
'use strict';
const { Pool } = require('pg');
const { PrismaPg } = require('@prisma/adapter-pg');
const { PrismaClient, Prisma } = require('./generated/client');

const SCHEMA = 'prisma_smoke';

async function main() {
  const url = process.env.DATABASE_URL;
  if (!url) throw new Error('DATABASE_URL is not set');
  const expect = (cond, what) => { if (!cond) throw new Error('check failed: ' + what); };

  // Count what goes on the wire: every query node-postgres sends, including the transaction
  // statements that Prisma's query log leaves out.
  const wire = { queries: 0, begin: 0, commit: 0, rollback: 0 };
  const pool = new Pool({ connectionString: url, max: 3 });
  pool.on('connect', (client) => {
    const query = client.query;
    client.query = function (q, ...rest) {
      wire.queries++;
      const verb = String(typeof q === 'string' ? q : (q && q.text) || '').trim().split(/\s+/)[0].toLowerCase();
      if (verb in wire) wire[verb]++;
      return query.call(this, q, ...rest);
    };
  });
  const prisma = new PrismaClient({
    adapter: new PrismaPg(pool, { schema: SCHEMA }),
    log: [{ emit: 'event', level: 'query' }],
  });
  let logged = 0;
  prisma.$on('query', () => { logged++; });

  for (const sql of [
    `drop schema if exists ${SCHEMA} cascade`,
    `create schema ${SCHEMA}`,
    `create table ${SCHEMA}.products (id serial primary key, sku text not null unique, name text not null,
       price_cents int not null, stock int not null default 0)`,
    `create table ${SCHEMA}.sales (id serial primary key, receipt text not null unique,
       product_id int not null references ${SCHEMA}.products (id), qty int not null, total_cents int not null,
       sold_at timestamp(3) not null default now())`,
  ]) {
    await prisma.$executeRawUnsafe(sql);
  }

  // create
  const coffee = await prisma.product.create({ data: { sku: 'COF-1', name: 'Coffee', priceCents: 250, stock: 10 } });
  await prisma.product.create({ data: { sku: 'BAG-1', name: 'Bagel', priceCents: 180, stock: 5 } });
  await prisma.product.create({ data: { sku: 'CAK-1', name: 'Cake', priceCents: 420, stock: 2 } });
  expect(coffee.id > 0 && coffee.priceCents === 250, 'created product');

  // findMany with a filter
  const cheap = await prisma.product.findMany({ where: { priceCents: { lt: 300 } }, orderBy: { sku: 'asc' } });
  expect(cheap.map((p) => p.sku).join() === 'BAG-1,COF-1', 'findMany filter: ' + cheap.map((p) => p.sku));

  // A sale takes stock and records the sale in one interactive transaction.
  const sell = (receipt, sku, qty) => prisma.$transaction(async (tx) => {
    const p = await tx.product.update({ where: { sku }, data: { stock: { decrement: qty } } });
    const sale = await tx.sale.create({ data: { receipt, productId: p.id, qty, totalCents: qty * p.priceCents } });
    if (p.stock < 0) throw new Error(`out of stock: ${sku}`);
    return sale;
  });
  const sale = await sell('R-1001', 'COF-1', 3);
  expect(sale.totalCents === 750, 'committed sale total');
  // Too little stock: the callback throws and Prisma rolls back.
  let thrown = '';
  try { await sell('R-1002', 'CAK-1', 5); } catch (e) { thrown = e.message; }
  expect(thrown === 'out of stock: CAK-1', 'rolled back sale threw: ' + thrown);
  // A receipt number used twice: P2002 (SQLSTATE 23505) fails the transaction.
  let code = '';
  try {
    await sell('R-1001', 'BAG-1', 1);
  } catch (e) {
    if (!(e instanceof Prisma.PrismaClientKnownRequestError)) throw e;
    code = e.code;
  }
  expect(code === 'P2002', 'duplicate receipt gives P2002, got ' + code);
  // The same outside a transaction: pg-pool then ends the connection right after the error,
  // before the ReadyForQuery has been read (the proxy must still measure the query).
  code = '';
  try {
    await prisma.product.create({ data: { sku: 'COF-1', name: 'Coffee again', priceCents: 250 } });
  } catch (e) {
    if (!(e instanceof Prisma.PrismaClientKnownRequestError)) throw e;
    code = e.code;
  }
  expect(code === 'P2002', 'duplicate sku gives P2002, got ' + code);
  const stock = Object.fromEntries((await prisma.product.findMany()).map((p) => [p.sku, p.stock]));
  expect(stock['COF-1'] === 7 && stock['CAK-1'] === 2 && stock['BAG-1'] === 5,
    'stock after one commit and two rollbacks: ' + JSON.stringify(stock));
  expect((await prisma.sale.count()) === 1, 'one sale recorded');

  // $queryRaw with a parameter
  const minQty = 1;
  const revenue = await prisma.$queryRaw`
    select p.sku, sum(s.total_cents)::int as cents
      from prisma_smoke.sales s join prisma_smoke.products p on p.id = s.product_id
     where s.qty >= ${minQty} group by p.sku`;
  expect(revenue.length === 1 && revenue[0].sku === 'COF-1' && revenue[0].cents === 750,
    'queryRaw revenue: ' + JSON.stringify(revenue));

  await prisma.$disconnect();
  await pool.end();
  console.log(JSON.stringify({ ok: true, queries: wire.queries, begin: wire.begin, commit: wire.commit,
    rollback: wire.rollback, logged }));
}

main().catch((e) => { console.error(e.stack || e.message); process.exit(1); });
