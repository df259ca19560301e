-- Central's registry, sessions, request outcomes and outbox (PostgreSQL).
CREATE TABLE outbox (
    row_id BIGSERIAL PRIMARY KEY,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    payload BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE cps (
    cp_id TEXT PRIMARY KEY,
    location TEXT NOT NULL,
    price BIGINT NOT NULL,
    max_w BIGINT NOT NULL,
    stopped BOOLEAN NOT NULL,
    registered_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE cp_credentials (
    cp_id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL
);
CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    cp_id TEXT NOT NULL,
    driver_id TEXT NOT NULL,
    price BIGINT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    state TEXT NOT NULL,
    started_at DOUBLE PRECISION,
    ended_at DOUBLE PRECISION,
    last_seq BIGINT NOT NULL,
    power_w BIGINT NOT NULL,
    wh BIGINT NOT NULL,
    micro_eur BIGINT NOT NULL,
    end_reason TEXT,
    closed_by_central BOOLEAN NOT NULL,
    meter_final BOOLEAN NOT NULL,
    ticket_revision BIGINT NOT NULL,
    ticket_id TEXT,
    billed_wh BIGINT NOT NULL,
    billed_micro_eur BIGINT NOT NULL
);
CREATE INDEX sessions_by_driver ON sessions(driver_id, created_at);
CREATE INDEX sessions_by_cp ON sessions(cp_id, created_at);
CREATE INDEX sessions_by_time ON sessions(created_at);
CREATE INDEX sessions_active ON sessions(state) WHERE state != 'ended';
CREATE TABLE requests (
    request_id TEXT PRIMARY KEY,
    driver_id TEXT NOT NULL,
    cp_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    session_id TEXT,
    code TEXT,
    reason TEXT,
    decided_at DOUBLE PRECISION NOT NULL
);
