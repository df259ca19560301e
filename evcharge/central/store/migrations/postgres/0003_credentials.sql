-- What proves an engine's events (the key issued to its CP at join) and a driver's requests
-- (the key of the token it was enrolled with).
CREATE TABLE engine_keys (
    cp_id TEXT PRIMARY KEY,
    key TEXT NOT NULL
);
CREATE TABLE driver_credentials (
    driver_id TEXT PRIMARY KEY,
    proof_key TEXT NOT NULL,
    enrolled_at DOUBLE PRECISION NOT NULL
);
