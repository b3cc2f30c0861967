-- Drops the functions that nothing calls any more: the copies that earlier migrations kept under
-- `*_before_*` names (so that a rollback could rename them back) and a retired batch entry point
-- (tally_batch_flush). From this migration on, every
-- live function is defined in db/functions/, applied after the migrations.
--
-- Rollback: the previous release never calls these functions, so deploying it needs nothing;
-- to roll the schema back past 0019 (0018's note renames one of these copies back), run the
-- statements in rollback/0019-drop-dead-functions.sql, which re-create them as they were.

drop function tally_batch_flush(text[], bigint[], bigint[], bigint[], jsonb[], jsonb[], timestamp with time zone);
drop function tally_clawback_before_0010(text, bigint, text, bigint, jsonb, timestamp with time zone);
drop function tally_expire_due_before_0008(text, timestamp with time zone);
drop function tally_expire_grant_before_0008(bigint, timestamp with time zone);
drop function tally_hold_before_0015(text, bigint, integer, text, text, text, timestamp with time zone);
drop function tally_open_before_0013(text, text, text, text, timestamp with time zone);
drop function tally_open_spend_before_0015(text, bigint, text, text, text, timestamp with time zone);
drop function tally_release_before_0008(holds, bigint, text, text, timestamp with time zone);
drop function tally_replay_before_0013(request_keys, text, text, text);
drop function tally_take_before_0010(text, bigint, timestamp with time zone, bigint);
drop function tally_usage_batch_before_0008(jsonb, timestamp with time zone);
drop function tally_usage_batch_before_0013(jsonb, timestamp with time zone);
drop function tally_usage_batch_before_0015(text[], bigint[], text[], text[], jsonb[], text[], timestamp with time zone);
drop function tally_usage_batch_before_0018(text[], bigint[], text[], text[], jsonb[], text[], timestamp with time zone);
drop function tally_usage_before_0013(text, bigint, text, text, text, jsonb, timestamp with time zone);
