-- Who this store is: centrals on one Kafka must share one store, and compare this to know.
CREATE TABLE store_identity (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    store_id TEXT NOT NULL
);
INSERT INTO store_identity VALUES (1, lower(hex(randomblob(16))));
