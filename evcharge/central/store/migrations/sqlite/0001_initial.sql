-- Central's registry, sessions, request outcomes and outbox (SQLite).
CREATE TABLE outbox (
    row_id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE cps (
    cp_id TEXT PRIMARY KEY,
    location TEXT NOT NULL,
    price INTEGER NOT NULL,
    max_w INTEGER NOT NULL,
    stopped INTEGER NOT NULL,
    registered_at REAL NOT NULL
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
    price INTEGER NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL,
    started_at REAL,
    ended_at REAL,
    last_seq INTEGER NOT NULL,
    power_w INTEGER NOT NULL,
    wh INTEGER NOT NULL,
    micro_eur INTEGER NOT NULL,
    end_reason TEXT,
    closed_by_central INTEGER NOT NULL,
    meter_final INTEGER NOT NULL,
    ticket_revision INTEGER NOT NULL,
    ticket_id TEXT,
    billed_wh INTEGER NOT NULL,
    billed_micro_eur INTEGER NOT NULL
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
    decided_at REAL NOT NULL
);
