-- Who this store is: centrals on one Kafka must share one store, and compare this to know.
CREATE TABLE store_identity (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    store_id TEXT NOT NULL
);
INSERT INTO store_identity VALUES (1, md5(random()::text || clock_timestamp()::text));
-- The lead among the centrals sharing this store: a lease judged by this server's clock,
-- and an epoch that every take bumps and every commit checks.
CREATE TABLE central_leader (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    epoch BIGINT NOT NULL,
    instance TEXT NOT NULL,
    tcp TEXT NOT NULL,
    http TEXT NOT NULL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
-- The epoch under which each request was decided: proof of who decided it.
ALTER TABLE requests ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
