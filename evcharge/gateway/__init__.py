"""`evcharge gateway`: OCPP 1.6 and 2.0.1 chargers over WebSocket, each a charging point at central.

The gateway plays, for every connected charger, the two roles an evcharge CP
has: its monitor (the WebSocket link and StatusNotification are its health, told
to central over the monitor protocol) and its engine (transactions and meter
values become the same Kafka events, applied once, answered after Kafka has them).

    wire          OCPP-J frames in and out, schema validation, CallError codes (pure)
    transactions  a transaction message -> evcharge events and the answer (pure)
    health        StatusNotifications -> the health central's status matrix needs (pure)
    auth          security profile 1: Basic credentials, join token, per-charger password (pure)
    dialects      what 1.6 and 2.0.1 spell differently in the calls the gateway makes (pure)
    store         the durable record: credentials, transactions, applied messages, outbox
    writer        group commit: the writes of many chargers share one transaction (one fsync)
    recorder      apply a transaction message once, answer after Kafka acknowledged
    authorisation whose start is it: a pending remote start, or central asked over HTTP
    central_link  one charger's monitor link to central (register, heartbeats)
    connection    one WebSocket as OCPP-J calls, with deadlines and owned handler tasks
    charger       one connected charger: its calls answered, central's asks carried out
    commands      central's commands (Kafka) for the gateway's chargers
    registry      one live connection per charger id; reconnects replace
    tasks         background work with one owner (cancelled and awaited on close)
    server        the WebSocket endpoint: path, subprotocol, authentication, TLS
    metrics       Prometheus metrics on their own port
    app           the role: wiring, start-up and the shutdown order
    sim           OCPP charge points (the `ocpp` library's) for tests and measurements
"""
