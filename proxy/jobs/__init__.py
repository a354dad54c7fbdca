"""Jobs: work accepted at once, run when its model is resident, kept until it expires.

`state` holds the task and batch states and their one transition table each; `records`
the typed records (job, event, file, batch) and the views clients get. `store` keeps
jobs, their events and results durably (huey's storage layer: a SQLite
file by default, a Redis server for several proxies); `order` is the pure choice of
which model's jobs run next; `dispatcher` runs them through the proxy's own
forwarding path (`runner`); `rpc`, `stream` and `batches` are the HTTP surfaces
(JSON-RPC 2.0, Server-Sent Events, the OpenAI Batch API). See docs/jobs.md.
"""
