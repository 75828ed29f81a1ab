-- Leader fencing: every state-writing transaction of the active dispatcher checks, under a
-- share lock, that the epoch it was elected with is still the current one; a new leader
-- increments it (waiting for the old leader's open transactions), so a deposed leader's
-- writes are refused instead of interleaving with its successor's.
CREATE TABLE leaders (
    name            text        PRIMARY KEY,
    epoch           bigint      NOT NULL,
    holder          text        NOT NULL DEFAULT '',
    elected_at      double precision NOT NULL
);

-- Multi-snap jobs: the raw URI and exposure id of every snap, indexed by snap number (NULL
-- where a snap has not arrived), so a restart rebuilds exactly what the payload receives.
ALTER TABLE jobs
    ADD COLUMN snap_uris    text[] NOT NULL DEFAULT '{}',
    ADD COLUMN snap_obs_ids text[] NOT NULL DEFAULT '{}';
