import type pg from 'pg';

/**
 * The migrated schema as readable SQL, in a stable order: tables with their columns, constraints,
 * indexes, column options and triggers, then every function. `db/schema.sql` is this text,
 * committed, so that every change of SQL shows as one diff; a test fails when it is stale. It is
 * built from the catalogs (not pg_dump, which the embedded PostgreSQL does not ship), and leaves
 * out the bookkeeping tables of the migrator.
 */
const bookkeepingTables = ['tally_migrations', 'tally_function_files'];

const tablesQuery = `
  select c.relname as name,
    (select string_agg(format('  %I %s%s%s', a.attname, format_type(a.atttypid, a.atttypmod),
        case when a.attnotnull then ' not null' else '' end,
        coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')), E',\\n' order by a.attnum)
       from pg_attribute a left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
      where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped) as columns,
    (select string_agg(format('alter table %I add constraint %I %s;', c.relname, k.conname, pg_get_constraintdef(k.oid)), E'\\n'
       order by k.contype, k.conname) from pg_constraint k where k.conrelid = c.oid and k.contype <> 'n') as constraints,
    (select string_agg(pg_get_indexdef(i.indexrelid) || ';', E'\\n' order by ic.relname)
       from pg_index i join pg_class ic on ic.oid = i.indexrelid
      where i.indrelid = c.oid and not exists (select 1 from pg_constraint k where k.conindid = i.indexrelid)) as indexes,
    (select string_agg(format('alter table %I alter column %I set (%s);', c.relname, a.attname, array_to_string(a.attoptions, ', ')), E'\\n'
       order by a.attnum) from (select a.attnum, a.attname, array(select o from unnest(a.attoptions) o where o not like 'pg\\_%') as attoptions
             from pg_attribute a where a.attrelid = c.oid and a.attoptions is not null) a
      where cardinality(a.attoptions) > 0) as column_options,
    (select string_agg(pg_get_triggerdef(t.oid) || ';', E'\\n' order by t.tgname)
       from pg_trigger t where t.tgrelid = c.oid and not t.tgisinternal) as triggers
  from pg_class c join pg_namespace n on n.oid = c.relnamespace
  where n.nspname = 'public' and c.relkind in ('r', 'p') and c.relname <> all($1)
  order by c.relname`;

const functionsQuery = `
  select pg_get_functiondef(p.oid) as definition
  from pg_proc p join pg_namespace n on n.oid = p.pronamespace
  where n.nspname = 'public'
  order by p.proname, pg_get_function_identity_arguments(p.oid)`;

interface TableRow {
  name: string;
  columns: string;
  constraints: string | null;
  indexes: string | null;
  column_options: string | null;
  triggers: string | null;
}

export async function dumpSchema(client: Pick<pg.Client, 'query'>): Promise<string> {
  const tables = (await client.query<TableRow>(tablesQuery, [bookkeepingTables])).rows;
  const functions = (await client.query<{ definition: string }>(functionsQuery)).rows;
  const parts = [
    '-- The migrated schema, dumped by `npm run schema` (src/db/schema-dump.ts). Do not edit: change a\n-- migration or a file of db/functions/, then dump again; a test fails while this file is stale.\n',
  ];
  for (const table of tables) {
    const extras = [table.constraints, table.indexes, table.column_options, table.triggers].filter((part) => part !== null);
    parts.push([`create table ${table.name} (\n${table.columns}\n);`, ...extras].join('\n'));
  }
  for (const fn of functions) parts.push(`${fn.definition.trimEnd()};`);
  return `${parts.join('\n\n')}\n`;
}
