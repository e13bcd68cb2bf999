-- A psql session run both directly and through the proxy; the outputs must match.
select 1 as one, 'two' as two;
create temporary table t (id int primary key, v text);
insert into t values (1, 'a'), (2, 'b');
copy t from stdin;
3	c
4	d
\.
select * from t order by id;
copy t to stdout;
\copy t to stdout with csv
begin;
insert into t values (1, 'dup');
select 1 as after_error;
rollback;
begin;
insert into t values (5, 'e');
commit;
prepare q(int) as select v from t where id = $1;
execute q(5);
do $$ begin raise notice 'hello from plpgsql'; end $$;
listen ch;
notify ch, 'payload';
select length(repeat('x', 1000000)) as big, md5(repeat('y', 200000)) as digest;
select count(*) from generate_series(1, 100000);
set datestyle = 'German';
select '2024-01-02'::date as d;
select 1/0;
select 'still here' as status;
\echo done
