-- sweeper's tables, views and functions in a schema of their own (`--schema`, `sweeper` by
-- default), so that they sit beside a chat service's own `conversations` and `messages`.
-- `sweeper migrate` runs the migrations with that schema first in search_path and names it in
-- `sweeper.schema`. An install migrated before this one has its tables in `public`, where
-- `sweeper migrate` then runs the migrations: this one moves them there, sqlx's table of applied
-- migrations included, and points search_path at the schema for the migrations after it.
-- ALTER ... SET SCHEMA keeps every row, grant and owner; indexes, constraints, triggers and the
-- identity sequences move with their tables. LangGraph's tables stay in `public`, where a
-- LangGraph app reads them.
DO $$
DECLARE
    target text := current_setting('sweeper.schema', true);
    here   text := current_schema();
    t      text;
    f      regprocedure;
BEGIN
    IF coalesce(target, '') = '' OR target = here THEN
        RETURN;
    END IF;
    FOREACH t IN ARRAY ARRAY['_sqlx_migrations', 'sweep_runs', 'conversations', 'message_rows',
                             'messages', 'sweep_rejects', 'sweep_leases'] LOOP
        -- ALTER TABLE moves a view too.
        EXECUTE format('ALTER TABLE %I.%I SET SCHEMA %I', here, t, target);
    END LOOP;
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
             WHERE p.pronamespace = here::regnamespace
               AND p.proname IN ('sweeper_replaces', 'sweeper_message_key', 'sweeper_keep_message_text')
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET SCHEMA %I', f, target);
    END LOOP;
    PERFORM set_config('search_path', format('%I, public', target), true);
END
$$;

-- The trigger's function names message_rows unqualified: pinned to this search_path, it finds
-- it whoever updates a conversation (psql with the default search_path, another tool).
ALTER FUNCTION sweeper_keep_message_text() SET search_path FROM CURRENT;
