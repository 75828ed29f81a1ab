-- prompt state: dormant task templates, visits, one job per visit x detector, pilots, held
-- image arrivals, the completion outbox, and Kafka offsets stored in the same transactions as
-- the state they produced. Times are UTC unix seconds (double precision), as in the events.

CREATE TABLE tasks (
    id              bigserial PRIMARY KEY,
    name            text        NOT NULL,
    version         integer     NOT NULL,
    instrument      text        NOT NULL,
    -- {"surveys": [...], "filters": [...]}: empty or missing list = any.
    selectors       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    detectors       integer[]   NOT NULL,
    payload         jsonb       NOT NULL,
    requirements    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    job_timeout_s   double precision NOT NULL,
    deadline_s      double precision NOT NULL,
    image_timeout_s double precision NOT NULL,
    max_attempts    integer     NOT NULL CHECK (max_attempts >= 1),
    priority        integer     NOT NULL DEFAULT 0,
    position        integer     NOT NULL DEFAULT 0,
    spec            jsonb       NOT NULL,
    spec_sha256     text        NOT NULL,
    active          boolean     NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (name, version)
);
CREATE UNIQUE INDEX tasks_one_active_version ON tasks (name) WHERE active;

CREATE TABLE visits (
    id              bigserial PRIMARY KEY,
    instrument      text        NOT NULL,
    group_id        text        NOT NULL,
    task_id         bigint      REFERENCES tasks (id),
    status          text        NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'ignored', 'canceled', 'done')),
    ignore_reason   text,
    survey          text        NOT NULL DEFAULT '',
    filters         text        NOT NULL DEFAULT '',
    ra_deg          double precision,
    dec_deg         double precision,
    start_time      double precision,
    duration_s      double precision,
    nimages         integer     NOT NULL DEFAULT 0,
    expires_at      double precision,
    next_visit      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    received_at     double precision NOT NULL,
    resurrected_at  double precision,
    UNIQUE (instrument, group_id)
);
CREATE INDEX visits_open ON visits (expires_at) WHERE status = 'active';

CREATE TABLE pilots (
    id              text        PRIMARY KEY,
    host            text        NOT NULL DEFAULT '',
    slots           integer     NOT NULL CHECK (slots >= 1),
    state           text        NOT NULL DEFAULT 'connected'
                    CHECK (state IN ('connected', 'draining', 'lost', 'gone')),
    cache_summary   jsonb       NOT NULL DEFAULT '[]'::jsonb,
    registered_at   double precision NOT NULL,
    last_seen       double precision NOT NULL
);

CREATE TABLE jobs (
    id              bigserial PRIMARY KEY,
    visit_id        bigint      NOT NULL REFERENCES visits (id) ON DELETE CASCADE,
    detector        integer     NOT NULL,
    state           text        NOT NULL DEFAULT 'defined'
                    CHECK (state IN ('defined', 'assigned', 'preloading', 'ready', 'sent',
                                     'running', 'finished', 'failed', 'late', 'expired',
                                     'canceled')),
    attempt         integer     NOT NULL DEFAULT 0,
    max_attempts    integer     NOT NULL,
    pilot_id        text,
    image_uri       text,
    snaps_mask      integer     NOT NULL DEFAULT 0,
    cache_hit       boolean,
    error           text,
    deadline        double precision,
    image_arrived_at  double precision,
    image_consumed_at double precision,
    dispatched_at   double precision,
    started_at      double precision,
    finished_at     double precision,
    completed_at    double precision,
    result          jsonb,
    UNIQUE (visit_id, detector)
);
CREATE INDEX jobs_open ON jobs (visit_id) WHERE state NOT IN ('finished', 'failed', 'late',
                                                              'expired', 'canceled');

-- Image arrivals consumed before their next-visit: matched when the visit is resurrected.
CREATE TABLE held_images (
    instrument      text        NOT NULL,
    group_id        text        NOT NULL,
    detector        integer     NOT NULL,
    snap            integer     NOT NULL,
    uri             text        NOT NULL,
    event_time      double precision NOT NULL,
    consumed_at     double precision NOT NULL,
    PRIMARY KEY (instrument, group_id, detector, snap)
);

-- Completion events written in the transaction that ends the job, published after commit and
-- deleted once the broker has them: no outcome is lost, none is published twice.
CREATE TABLE completion_outbox (
    job_id          bigint      PRIMARY KEY,
    value           bytea       NOT NULL,
    created_at      double precision NOT NULL
);

-- The next offset to read per consumer/topic/partition, written in the same transaction as the
-- state that consuming up to it produced: restart resumes exactly there.
CREATE TABLE consumer_offsets (
    consumer        text        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    next_offset     bigint      NOT NULL,
    PRIMARY KEY (consumer, topic, partition)
);
